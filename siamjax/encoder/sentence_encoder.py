"""`SentenceEncoder`: the user-facing model object (load, encode, compare, save).

It owns one `(graphdef, params)` pair. `encode_fn` is the pure function the trainer jits and
vmaps; `encode()` is the convenient host API: it tokenises once, sorts by length, packs each
batch of texts into rows (`siamjax.encoder.rows`: several texts per row, so the encoder
computes on text rather than padding, with the same embeddings as one padded text per row),
rounds rows and row lengths to a few sizes (so XLA compiles a handful of shapes, not one per
batch) and returns float32 numpy.
"""
from __future__ import annotations

import dataclasses
import functools
import os
import pathlib
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from tqdm.auto import tqdm
from transformers import AutoTokenizer

from siamjax import similarity as sim
from siamjax.encoder import encode_calls, folder, hf_names, lora, peft_folder, router, rows, verify
from siamjax.encoder.prompts import (CONFIG_FILE, DOCUMENT_PROMPT_NAMES, QUERY_PROMPT_NAMES, ModelSettings,
                                     prompt_length, read_settings)
from siamjax.encoder.families import TransformerConfig
from siamjax.encoder.encode_calls import bucket_length
from siamjax.encoder.layers import check_attention, select_attention
from siamjax.encoder.model import (DenseConfig, EncoderSpec, abstract_params, init_params,
                                   make_encode_fn)
from siamjax.encoder.pooling import PoolingConfig
from siamjax.encoder.router import RouterSpec
from siamjax.parallel import replicated
from siamjax.quantization import quantize_embeddings

def _to_device(name: str, value: np.ndarray, *, source: str | None) -> jax.Array:
    """One loaded tensor, checked (`verify.check_weights`, unless `source` is None) and put on the
    default device, its host buffer released before the next tensor is read.

    Why not `jnp.asarray`: on CPU it made two transient copies; and `jax.device_put` is
    asynchronous, so without waiting every host buffer stayed alive until the end of the load.
    """
    if source is not None:
        verify.check_weights({name: value}, source)
    return jax.device_put(value).block_until_ready()


def _dtype(name: Any):
    return jnp.dtype(name) if name is not None else jnp.float32


class SentenceEncoder:
    """A sentence-embedding model: transformer + pooling (+ Dense) (+ normalisation), or a
    sentence-transformers Router (`spec` a `RouterSpec`: one trunk, a head per route)."""

    def __init__(self, spec: EncoderSpec | RouterSpec, params: dict, tokenizer, max_seq_length: int, *,
                 dtype: Any = jnp.float32, param_dtype: Any = jnp.float32, remat: bool = False,
                 attention: str = "xla", hf_config: dict | None = None,
                 extras: dict[str, np.ndarray] | None = None, settings: ModelSettings | None = None):
        attention = select_attention(attention, jax.default_backend(), _dtype(dtype),
                                     score_bias=spec.transformer.SCORE_BIAS)
        check_attention(attention, dtype, score_bias=spec.transformer.SCORE_BIAS)
        self.spec = spec
        abstract = router.abstract_params if isinstance(spec, RouterSpec) else abstract_params
        self.graphdef, _ = abstract(spec, dtype=_dtype(dtype), param_dtype=_dtype(param_dtype), remat=remat,
                                    attention=attention)
        self.params = params
        self.tokenizer = tokenizer
        self.max_seq_length = int(max_seq_length)
        self.dtype, self.param_dtype, self.remat, self.attention = _dtype(dtype), _dtype(param_dtype), remat, attention
        self.hf_config = hf_config or {}
        self.extras = extras or {}
        self.settings = settings or ModelSettings()
        if self.settings.truncate_dim is not None:
            _check_truncate_dim(self.settings.truncate_dim, spec.embedding_dim)
        self.encode_fn = self.sides_encode_fn(()) if self.is_router else make_encode_fn(self.graphdef)
        self._on_mesh: dict = {}  # (mesh, route) -> (its jitted encode fn, params replicated on the mesh)

    # ----------------------------------------------------------------- construction
    @classmethod
    def from_pretrained(cls, path_or_name: str | os.PathLike, *, dtype: Any = "float32",
                        param_dtype: Any = "float32", remat: bool = False, attention: str = "xla",
                        max_seq_length: int | None = None, verify_weights: bool = True,
                        truncate_dim: int | None = None) -> "SentenceEncoder":
        """Load a sentence-transformers folder, a plain HF folder (mean pooling) or a hub name.

        The family (BERT/RoBERTa, MPNet, DistilBERT, ModernBERT) comes from `config.json`'s
        `model_type`. `dtype` is the compute dtype ("bfloat16" for mixed precision); `remat`
        recomputes each layer's activations in the backward pass to save memory when training;
        `attention` is "xla" (everywhere), "cudnn" (GPU, bf16), "splash" (TPU; not MPNet) or
        "auto" (`layers.select_attention`). The folder is verified
        (`siamjax.encoder.verify`: safetensors sizes, tokenizer vs embeddings, and, unless
        `verify_weights=False`, every weight finite), so a damaged folder is an error, not garbage.
        `config_sentence_transformers.json` gives the prompts, default prompt, similarity and
        `truncate_dim` (Matryoshka models), which `truncate_dim` here overrides.
        """
        path = folder.resolve(path_or_name)
        is_router = router.is_router_folder(path)
        loaded = router.read_router_folder(path) if is_router else folder.read_folder(path)
        _, abstract = (router.abstract_params if is_router else abstract_params)(loaded.spec,
                                                                                   param_dtype=_dtype(param_dtype))
        # Tensors are read, checked, cast and put on the device one at a time: never two copies of the model.
        place = lambda source: functools.partial(_to_device, source=source if verify_weights else None)
        if is_router:
            params, extras = router.fill_router_params(loaded, abstract, place)
        else:
            params, extras = hf_names.fill_params(abstract, loaded.tensors, loaded.spec.transformer.tensor_names(),
                                                  str(loaded.transformer_dir), place=place(str(loaded.transformer_dir)))
            for i, (dense, tensors, where) in enumerate(zip(loaded.spec.dense, loaded.dense_tensors,
                                                            loaded.dense_dirs)):
                dense_params, _ = hf_names.fill_params(abstract, tensors, hf_names.dense_names(dense.bias, i),
                                                       str(where), place=place(str(where)))
                params["dense"][str(i)] = dense_params["dense"][str(i)]
        if verify_weights:
            verify.check_weights(extras, str(loaded.transformer_dir))
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(loaded.transformer_dir))
        except Exception as err:
            raise ValueError(f"{loaded.transformer_dir}: could not load the tokenizer ({err})") from err
        verify.check_tokenizer(loaded.transformer_dir, tokenizer, loaded.spec.transformer.vocab_size)
        limit = loaded.max_seq_length if max_seq_length is None else int(max_seq_length)
        if limit > loaded.spec.transformer.max_tokens:
            raise ValueError(f"max_seq_length {limit} exceeds the model's {loaded.spec.transformer.max_tokens} "
                             "positions")
        settings = read_settings(path / CONFIG_FILE)
        if truncate_dim is not None:
            settings = dataclasses.replace(settings, truncate_dim=truncate_dim)
        return cls(loaded.spec, params, tokenizer, limit, dtype=dtype, param_dtype=param_dtype, remat=remat,
                   attention=attention, hf_config=loaded.hf_config, extras=extras, settings=settings)

    @classmethod
    def shape_only(cls, path_or_name: str | os.PathLike, *, dtype: Any = "float32", param_dtype: Any = "float32",
                   remat: bool = False, attention: str = "xla",
                   max_seq_length: int | None = None) -> "SentenceEncoder":
        """The encoder a folder describes with `jax.ShapeDtypeStruct` parameters and no tokenizer:
        nothing is allocated and no weights need exist (config files suffice). Why: planning a
        run (`siamjax plan`) of an 8B model needs its structure, never its weights."""
        loaded = folder.read_folder(folder.resolve(path_or_name), weights=False)
        _, params = abstract_params(loaded.spec, param_dtype=_dtype(param_dtype))
        limit = loaded.max_seq_length if max_seq_length is None else int(max_seq_length)
        return cls(loaded.spec, params, None, limit, dtype=dtype, param_dtype=param_dtype, remat=remat,
                   attention=attention, hf_config=loaded.hf_config)

    @classmethod
    def from_config(cls, config: TransformerConfig, tokenizer, *, pooling: str | Sequence[str] = "mean",
                    normalize: bool = False, dense_dim: int | Sequence[int] | None = None, seed: int = 0,
                    max_seq_length: int | None = None, dtype: Any = "float32",
                    param_dtype: Any = "float32", remat: bool = False, attention: str = "xla",
                    abstract: bool = False, include_prompt: bool = True) -> "SentenceEncoder":
        """A randomly initialised encoder of any family (tests, pre-training from scratch);
        `dense_dim` adds one Tanh Dense layer of that width, or several (a sequence of widths);
        `include_prompt=False` pools without the prompt's tokens.
        `abstract=True`: `jax.ShapeDtypeStruct` parameters instead (nothing allocated; planning)."""
        modes = (pooling,) if isinstance(pooling, str) else tuple(pooling)
        pooling_cfg = PoolingConfig(modes, include_prompt=include_prompt)
        widths = [] if dense_dim is None else [dense_dim] if isinstance(dense_dim, int) else list(dense_dim)
        ins = [pooling_cfg.output_dim(config.hidden_size)] + widths[:-1]
        dense = tuple(DenseConfig(i, o) for i, o in zip(ins, widths))
        spec = EncoderSpec(transformer=config, pooling=pooling_cfg, dense=dense, normalize=normalize)
        if abstract:
            _, params = abstract_params(spec, param_dtype=_dtype(param_dtype))
        else:
            _, params = init_params(spec, seed=seed, param_dtype=_dtype(param_dtype))
        return cls(spec, params, tokenizer, max_seq_length or min(config.max_tokens, 512),
                   dtype=dtype, param_dtype=param_dtype, remat=remat, attention=attention)

    def with_lora(self, config: lora.LoRAConfig, seed: int = 0) -> "SentenceEncoder":
        """This encoder with LoRA adapters on `config.targets` (fresh ones: B = 0, so it still
        encodes as before); only the adapters are allocated, the base params are shared."""
        if self.is_router:
            raise ValueError("LoRA adapters on a sentence-transformers Router model are not supported yet")
        if self.lora is not None:
            raise ValueError("this encoder already has LoRA adapters")
        spec = dataclasses.replace(self.spec, lora=config)
        _, abstract = abstract_params(spec, dtype=self.dtype, param_dtype=self.param_dtype, remat=self.remat,
                                      attention=self.attention)
        return self._rebuilt(spec, lora.init_adapters(self.params, abstract, seed))

    def merged(self) -> "SentenceEncoder":
        """The plain encoder with the LoRA adapters folded into its weights (what `save` writes);
        itself when it has none."""
        if self.lora is None:
            return self
        params = lora.merge(jax.device_get(self.params), self.spec.lora, self.param_dtype)
        return self._rebuilt(dataclasses.replace(self.spec, lora=None), params)

    def _rebuilt(self, spec: EncoderSpec, params: dict) -> "SentenceEncoder":
        return SentenceEncoder(spec, params, self.tokenizer, self.max_seq_length, dtype=self.dtype,
                               param_dtype=self.param_dtype, remat=self.remat, attention=self.attention,
                               hf_config=self.hf_config, extras=self.extras, settings=self.settings)

    def with_params(self, params: dict) -> "SentenceEncoder":
        """The same encoder with other weights (e.g. after training)."""
        new = object.__new__(SentenceEncoder)
        new.__dict__.update(self.__dict__)
        new.params, new._on_mesh = params, {}
        return new

    def with_settings(self, **changes) -> "SentenceEncoder":
        """The same encoder with other `ModelSettings` fields (prompts, default_prompt_name,
        similarity_fn_name, truncate_dim), e.g. the prompts a model was trained with."""
        settings = dataclasses.replace(self.settings, **changes)
        if settings.truncate_dim is not None:
            _check_truncate_dim(settings.truncate_dim, self.embedding_dim)
        new = self.with_params(self.params)
        new.settings = settings
        return new

    # ----------------------------------------------------------------- properties
    @property
    def embedding_dim(self) -> int:
        """Width of the model's embeddings (`encode` returns `truncate_dim` of them when set)."""
        return self.spec.embedding_dim

    @property
    def lora(self) -> lora.LoRAConfig | None:
        """The LoRA adapters' config (`with_lora`), or None (always for Router models)."""
        return None if self.is_router else self.spec.lora

    @property
    def prompts(self) -> dict[str, str]:
        """Prompt name -> text prepended to the input (`config_sentence_transformers.json`)."""
        return dict(self.settings.prompts)

    @property
    def default_prompt_name(self) -> str | None:
        return self.settings.default_prompt_name

    @property
    def similarity_fn_name(self) -> str:
        """"cosine", "dot", "euclidean" or "manhattan": what `similarity` and the evaluators score with."""
        return self.settings.similarity_fn_name

    @property
    def truncate_dim(self) -> int | None:
        return self.settings.truncate_dim

    @property
    def pools_without_prompt(self) -> bool:
        """Whether pooling leaves the prompt's tokens out (Pooling `include_prompt: false`; a Router's
        routes pool with their prompts)."""
        return not self.is_router and not self.spec.pooling.include_prompt

    @property
    def is_router(self) -> bool:
        """Whether this is a sentence-transformers Router model (asymmetric routes)."""
        return isinstance(self.spec, RouterSpec)

    def sides_encode_fn(self, side_tasks: Sequence[str | None]):
        """The encode function the train step vmaps over a batch's sides: the model's own for a
        plain model (every side shares it); for a Router, side s goes through the route that
        task `side_tasks[s]` resolves to (None: the default route), after one shared trunk call."""
        if not self.is_router:
            return self.encode_fn
        default = self.spec.default_route
        return router.SideRoutedEncode(self.graphdef, tuple(self.spec.resolve(t) for t in side_tasks), default)

    # ----------------------------------------------------------------- tokenisation
    def token_ids(self, texts: Sequence[str], max_length: int | None = None) -> list[list[int]]:
        """Unpadded token ids, truncated at `max_length` (default: `max_seq_length`)."""
        _check_texts(texts)
        return rows.token_ids(self.tokenizer, texts, self.max_seq_length if max_length is None else max_length)

    def pad(self, ids: Sequence[Sequence[int]], length: int | None = None) -> dict:
        """Right-pad id lists into int32 arrays `[len(ids), length]` (default: a bucket length)."""
        length = length or bucket_length(max((len(x) for x in ids), default=1), self.max_seq_length)
        return rows.pad_rows(ids, length, self.tokenizer.pad_token_id or 0)

    def tokenize(self, texts: Sequence[str], max_length: int | None = None) -> dict:
        """Token batch `[B, L]` (int32 numpy) padded to a bucket length."""
        ids = self.token_ids(texts, max_length)
        limit = self.max_seq_length if max_length is None else max_length
        return self.pad(ids, bucket_length(max((len(x) for x in ids), default=1), limit))

    # ----------------------------------------------------------------- encoding
    def plan_calls(self, ids: Sequence[Sequence[int]], batch_size: int,
                   num_devices: int = 1) -> list[tuple[int, int, list[list[int]]]]:
        """How `encode` packs these id lists: `(row_length, rows, layout)` per encoder call
        (`encode_calls.plan_calls`)."""
        return encode_calls.plan_calls([len(x) for x in ids], batch_size, self.max_seq_length, num_devices)

    def encode(self, sentences: Sequence[str] | str, batch_size: int = 64, normalize: bool | None = None,
               show_progress: bool = False, precision: str = "float32", calibration=None, *,
               prompt_name: str | None = None, prompt: str | None = None, truncate_dim: int | None = None,
               route: str | None = None, mesh: Mesh | None = None) -> np.ndarray:
        """Embeddings `[N, D]` (float32 numpy; quantised if `precision` is not float32).

        As sentence-transformers' `encode`: `prompt` (or the model's prompt `prompt_name`, else
        its `default_prompt_name`'s) is prepended to every text, and with the Pooling module's
        `include_prompt: false` its tokens are left out of pooling; the embeddings are cut to
        `truncate_dim` (default: the model's) and only then L2-normalised if `normalize=True`
        (otherwise the model's own Normalize module decides). A single string returns `[D]`.
        `route`: the task of a Router model's input ("query", "document", ...), resolved to a
        route as sentence-transformers' `encode(task=)` does (None: the default route); a model
        without a Router has one path and ignores it. Rows are split over the devices of `mesh`
        (default: all of this process's accelerators), so N devices encode a corpus N times as fast.
        """
        single = isinstance(sentences, str)
        texts = [sentences] if single else list(sentences)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        dim = self.truncate_dim if truncate_dim is None else _check_truncate_dim(truncate_dim, self.embedding_dim)
        text_prompt = self.settings.resolve_prompt(prompt, prompt_name)
        _check_texts(texts)
        ids = self.token_ids([text_prompt + t for t in texts] if text_prompt else texts)
        skip = prompt_length(self.tokenizer, text_prompt, self.max_seq_length) \
            if text_prompt and self.pools_without_prompt else None
        out = self._encode_ids(ids, batch_size, mesh or encode_calls.local_mesh(), skip, show_progress, route)
        if dim is not None:
            out = out[:, :dim]
        if normalize:
            out = sim.l2_normalize(out)
        if precision != "float32":
            out = quantize_embeddings(out, precision, calibration=calibration)
        return out[0] if single else out

    def encode_query(self, sentences: Sequence[str] | str, **kwargs) -> np.ndarray:
        """`encode` for search queries: without `prompt`/`prompt_name`, the model's "query" prompt
        (sentence-transformers' `encode_query`; every model has one, "" unless its folder sets it)."""
        name = self.settings.task_prompt_name(QUERY_PROMPT_NAMES, kwargs.get("prompt"), kwargs.get("prompt_name"))
        return self.encode(sentences, **{"route": "query", **kwargs, "prompt_name": name})

    def encode_document(self, sentences: Sequence[str] | str, **kwargs) -> np.ndarray:
        """`encode` for documents: without `prompt`/`prompt_name`, the model's first prompt of
        "document", "passage", "corpus" (sentence-transformers' `encode_document`)."""
        name = self.settings.task_prompt_name(DOCUMENT_PROMPT_NAMES, kwargs.get("prompt"), kwargs.get("prompt_name"))
        return self.encode(sentences, **{"route": "document", **kwargs, "prompt_name": name})

    def _encode_ids(self, ids, batch_size: int, mesh: Mesh, skip: int | None, show_progress: bool,
                    route: str | None = None) -> np.ndarray:
        """float32 `[N, D]` of tokenised texts, each call's rows split over `mesh`'s devices."""
        n = mesh.devices.size
        out = np.zeros((len(ids), self.embedding_dim), np.float32)
        pending = None
        for row_length, n_rows, layout in tqdm(self.plan_calls(ids, batch_size, n), desc="encode", unit="batch",
                                               disable=not show_progress):
            order, batch = rows.call_batch(ids, layout, row_length=row_length, rows=n_rows, num_shards=n,
                                           pad_id=self.tokenizer.pad_token_id or 0, prompt_length=skip)
            emb = self.encode_call(batch, mesh, route)  # dispatch before fetching the previous one
            if pending is not None:
                encode_calls.scatter(out, *pending)
            pending = (order, emb)
        if pending is not None:
            encode_calls.scatter(out, *pending)
        return out

    def place_call(self, batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
        """One call's arrays on `mesh`, rows (and `text_index`'s shards) split over all its axes
        (('data', 'fsdp') for the training mesh)."""
        rows_sharding = encode_calls.rows_sharding(mesh)
        return {key: jax.device_put(value, rows_sharding) for key, value in batch.items()}

    def encode_call(self, batch: dict[str, np.ndarray], mesh: Mesh, route: str | None = None) -> jax.Array:
        """Embeddings of one `rows.call_batch` batch, computed on `mesh` (asynchronous), through
        `route` (a Router model's task; compiled once per route and mesh). The call runs under
        `mesh` as the context mesh: an evaluation inside training (`jax.set_mesh(train_mesh)`)
        encodes on its own mesh, not the trainer's."""
        name = self.spec.resolve(route) if self.is_router else None
        on = encode_calls.rows_sharding(mesh)
        if (mesh, name) not in self._on_mesh:
            fn = router.make_route_encode_fn(self.graphdef, name) if self.is_router else self.encode_fn
            self._on_mesh[mesh, name] = (jax.jit(fn, out_shardings=on), jax.device_put(self.params, replicated(on.mesh)))
        fn, params = self._on_mesh[mesh, name]
        with jax.set_mesh(on.mesh):
            return fn(params, self.place_call(batch, mesh))

    def similarity(self, a, b) -> np.ndarray:
        """`[N, M]` scores between two sets of embeddings (or of sentences) with the model's
        `similarity_fn_name` (cosine unless its folder says otherwise; distances negated)."""
        a = self.encode(a) if _is_texts(a) else np.asarray(a, np.float32)
        b = self.encode(b) if _is_texts(b) else np.asarray(b, np.float32)
        return sim.similarity_matrix(np.atleast_2d(a), np.atleast_2d(b), self.similarity_fn_name)

    # ----------------------------------------------------------------- saving
    def save(self, directory: str | os.PathLike, card: str | None = None) -> pathlib.Path:
        """Write a sentence-transformers folder that `SentenceTransformer(directory)` loads, with
        the model's settings (prompts, similarity, ...) and `card` as its README.md model card
        (LoRA adapters merged into the weights: a plain model)."""
        if self.lora is not None:
            return self.merged().save(directory, card=card)
        directory = pathlib.Path(directory)
        params = jax.tree.map(lambda x: np.asarray(jax.device_get(x)), self.params)
        write = router.write_router_folder if self.is_router else folder.write_folder
        write(directory, spec=self.spec, params=params, tokenizer=self.tokenizer, hf_config=self.hf_config,
              max_seq_length=self.max_seq_length, extras=self.extras, settings=self.settings, card=card)
        return directory

    def save_adapter(self, directory: str | os.PathLike, base_model_name_or_path: str = "") -> pathlib.Path:
        """Write the LoRA adapters as a PEFT folder (`adapter_config.json` + `adapter_model.safetensors`,
        PEFT's key names) that `peft.PeftModel.from_pretrained(base, directory)` and
        sentence-transformers' `load_adapter` read onto the base transformer."""
        if self.lora is None:
            raise ValueError("this encoder has no LoRA adapters to save")
        return peft_folder.write_adapter(pathlib.Path(directory), spec=self.spec, params=jax.device_get(self.params),
                                         base_model_name_or_path=base_model_name_or_path)

    def __repr__(self) -> str:
        b = self.spec.transformer
        if self.is_router:
            return (f"SentenceEncoder({b.model_type}, layers={b.num_hidden_layers}, hidden={b.hidden_size}, "
                    f"router={self.spec.route_names}, default_route={self.spec.default_route!r}, "
                    f"max_seq_length={self.max_seq_length}, dim={self.embedding_dim})")
        return (f"SentenceEncoder({b.model_type}, layers={b.num_hidden_layers}, hidden={b.hidden_size}, "
                f"pooling={'+'.join(self.spec.pooling.modes)}, dense={len(self.spec.dense)}, "
                f"normalize={self.spec.normalize}, max_seq_length={self.max_seq_length}, dim={self.embedding_dim})")


def _check_truncate_dim(truncate_dim: int, dim: int) -> int:
    if isinstance(truncate_dim, bool) or not isinstance(truncate_dim, int) or not 1 <= truncate_dim <= dim:
        raise ValueError(f"truncate_dim must be an integer in [1, {dim}] (the embedding width), got {truncate_dim!r}")
    return truncate_dim


def _check_texts(texts) -> None:
    if isinstance(texts, str):
        raise TypeError("expected a list of strings, got a single string")
    bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
    if bad:
        raise TypeError(f"texts[{bad[0]}] is {type(texts[bad[0]]).__name__}, expected str")


def _is_texts(x) -> bool:
    return isinstance(x, str) or (isinstance(x, (list, tuple)) and len(x) > 0 and isinstance(x[0], str))


__all__ = ["SentenceEncoder", "bucket_length", "check_attention"]
