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
from tqdm.auto import tqdm
from transformers import AutoTokenizer

from siamjax import similarity as sim
from siamjax.encoder import folder, hf_names, lora, peft_folder, router, rows, verify
from siamjax.encoder.families import TransformerConfig
from siamjax.encoder.layers import ATTENTION_IMPLEMENTATIONS, select_attention
from siamjax.encoder.model import (DenseConfig, EncoderSpec, abstract_params, init_params,
                                   make_encode_fn)
from siamjax.encoder.pooling import PoolingConfig
from siamjax.encoder.router import RouterSpec
from siamjax.quantization import quantize_embeddings

_MIN_BUCKET = 16
_MIN_PACK_ROW = 64
# Encoding packs `batch_size * _TOKENS_PER_TEXT` tokens per call (a typical sentence is 10-20
# tokens): with short texts a call holds more than batch_size of them, with long ones fewer, and
# the memory per call stays bounded.
_TOKENS_PER_TEXT = 16
# On CPU a call of more than ~2k tokens no longer fits the caches: measured with MiniLM on 2
# cores, 8.0-8.6k tokens/s at 1-2k tokens per call but 6.8k at 4k. Accelerators want big calls.
_CPU_MAX_TOKENS_PER_CALL = 2048


def bucket_length(longest: int, max_seq_length: int) -> int:
    """Smallest of {16, 32, 64, ...} that fits `longest`, capped at `max_seq_length`."""
    return rows.pick_bucket(min(longest, max_seq_length), rows.bucket_lengths(max_seq_length, _MIN_BUCKET))


def packing_row_length(longest: int, max_seq_length: int) -> int:
    """Row length for packed inference: the text's bucket, but at least `_MIN_PACK_ROW` tokens.

    Why a floor: rows of 64 hold three or four typical sentences, so short texts pack densely;
    longer rows would grow the (quadratic) attention cost for no packing gain.
    """
    return min(max(bucket_length(longest, max_seq_length), _MIN_PACK_ROW), max_seq_length)


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
                 extras: dict[str, np.ndarray] | None = None):
        attention = select_attention(attention, jax.default_backend(), _dtype(dtype))
        check_attention(attention, dtype)
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
        self.encode_fn = self.sides_encode_fn(()) if self.is_router else make_encode_fn(self.graphdef)
        self._jit_encode = jax.jit(self.encode_fn)
        self._jit_routes: dict[str, Any] = {}

    # ----------------------------------------------------------------- construction
    @classmethod
    def from_pretrained(cls, path_or_name: str | os.PathLike, *, dtype: Any = "float32",
                        param_dtype: Any = "float32", remat: bool = False, attention: str = "xla",
                        max_seq_length: int | None = None, verify_weights: bool = True) -> "SentenceEncoder":
        """Load a sentence-transformers folder, a plain HF folder (mean pooling) or a hub name.

        The family (BERT/RoBERTa, MPNet, DistilBERT, ModernBERT) comes from `config.json`'s
        `model_type`. `dtype` is the compute dtype ("bfloat16" for mixed precision); `remat`
        recomputes each layer's activations in the backward pass to save memory when training;
        `attention` is "xla" (everywhere) or "cudnn" (GPU, bf16). The folder is verified
        (`siamjax.encoder.verify`: safetensors sizes, tokenizer vs embeddings, and, unless
        `verify_weights=False`, every weight finite), so a damaged folder is an error, not garbage.
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
        return cls(loaded.spec, params, tokenizer, limit, dtype=dtype, param_dtype=param_dtype, remat=remat,
                   attention=attention, hf_config=loaded.hf_config, extras=extras)

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
                    abstract: bool = False) -> "SentenceEncoder":
        """A randomly initialised encoder of any family (tests, pre-training from scratch);
        `dense_dim` adds one Tanh Dense layer of that width, or several (a sequence of widths).
        `abstract=True`: `jax.ShapeDtypeStruct` parameters instead (nothing allocated; planning)."""
        modes = (pooling,) if isinstance(pooling, str) else tuple(pooling)
        pooling_cfg = PoolingConfig(modes)
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
                               hf_config=self.hf_config, extras=self.extras)

    def with_params(self, params: dict) -> "SentenceEncoder":
        """The same encoder with other weights (e.g. after training)."""
        new = object.__new__(SentenceEncoder)
        new.__dict__.update(self.__dict__)
        new.params = params
        return new

    # ----------------------------------------------------------------- properties
    @property
    def embedding_dim(self) -> int:
        """Width of the embeddings `encode` returns."""
        return self.spec.embedding_dim

    @property
    def lora(self) -> lora.LoRAConfig | None:
        """The LoRA adapters' config (`with_lora`), or None (always for Router models)."""
        return None if self.is_router else self.spec.lora

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
        if isinstance(texts, str):
            raise TypeError("expected a list of strings, got a single string")
        bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
        if bad:
            raise TypeError(f"texts[{bad[0]}] is {type(texts[bad[0]]).__name__}, expected str")
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
    def plan_calls(self, ids: Sequence[Sequence[int]], batch_size: int) -> list[tuple[int, int, list[list[int]]]]:
        """How `encode` packs these id lists: `(row_length, rows, layout)` per encoder call.

        Each call carries about `batch_size * _TOKENS_PER_TEXT` tokens (rows of
        `packing_row_length` tokens), so `batch_size` keeps sentence-transformers' meaning,
        roughly sentences per call, for typical sentences, and bounds memory for long ones.
        On CPU calls are capped at `_CPU_MAX_TOKENS_PER_CALL` tokens (cache-sized).
        """
        tokens = batch_size * _TOKENS_PER_TEXT
        if jax.default_backend() == "cpu":
            tokens = min(tokens, _CPU_MAX_TOKENS_PER_CALL)
        return rows.plan_calls([len(x) for x in ids],
                                  lambda n: packing_row_length(n, self.max_seq_length),
                                  lambda row_length: max(1, tokens // row_length))

    def encode(self, sentences: Sequence[str] | str, batch_size: int = 64, normalize: bool | None = None,
               show_progress: bool = False, precision: str = "float32", calibration=None,
               route: str | None = None) -> np.ndarray:
        """Embeddings `[N, D]` (float32 numpy; quantised if `precision` is not float32).

        `normalize=True` L2-normalises even if the model has no Normalize module; otherwise the
        model's own configuration decides. A single string returns a `[D]` vector. `route`: the
        task of a Router model's input ("query", "document", ...), resolved to a route as
        sentence-transformers' `encode(task=)` does (None: the default route); a model without
        a Router has one path and ignores it.
        """
        encode_call = self._encode_call(route)
        single = isinstance(sentences, str)
        texts = [sentences] if single else list(sentences)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        ids = self.token_ids(texts)
        calls = self.plan_calls(ids, batch_size)
        out = np.zeros((len(texts), self.embedding_dim), np.float32)
        pending = None
        for row_length, n_rows, layout in tqdm(calls, desc="encode", unit="batch", disable=not show_progress):
            idx, batch = rows.call_batch(ids, layout, row_length=row_length, rows=n_rows,
                                         pad_id=self.tokenizer.pad_token_id or 0)
            emb = encode_call(self.params, batch)  # dispatch before fetching the previous one
            if pending is not None:
                out[pending[0]] = np.asarray(pending[1])[:len(pending[0])]
            pending = (idx, emb)
        if pending is not None:
            out[pending[0]] = np.asarray(pending[1])[:len(pending[0])]
        if normalize:
            out = sim.l2_normalize(out)
        if precision != "float32":
            out = quantize_embeddings(out, precision, calibration=calibration)
        return out[0] if single else out

    def _encode_call(self, route: str | None):
        """The jitted encoder of `route` (compiled once per route of a Router)."""
        if not self.is_router:
            return self._jit_encode
        name = self.spec.resolve(route)
        if name not in self._jit_routes:
            self._jit_routes[name] = jax.jit(router.make_route_encode_fn(self.graphdef, name))
        return self._jit_routes[name]

    def similarity(self, a, b) -> np.ndarray:
        """Cosine similarity matrix `[N, M]` between two sets of embeddings (or of sentences)."""
        a = self.encode(a) if _is_texts(a) else np.asarray(a, np.float32)
        b = self.encode(b) if _is_texts(b) else np.asarray(b, np.float32)
        return sim.similarity_matrix(np.atleast_2d(a), np.atleast_2d(b), "cosine")

    # ----------------------------------------------------------------- saving
    def save(self, directory: str | os.PathLike) -> pathlib.Path:
        """Write a sentence-transformers folder that `SentenceTransformer(directory)` loads (LoRA
        adapters merged into the weights: a plain model)."""
        if self.lora is not None:
            return self.merged().save(directory)
        directory = pathlib.Path(directory)
        params = jax.tree.map(lambda x: np.asarray(jax.device_get(x)), self.params)
        write = router.write_router_folder if self.is_router else folder.write_folder
        write(directory, spec=self.spec, params=params, tokenizer=self.tokenizer,
              hf_config=self.hf_config, max_seq_length=self.max_seq_length, extras=self.extras)
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


def check_attention(attention: str, dtype: Any) -> None:
    """"cudnn" only runs on a GPU and only in half precision: say so before anything compiles
    ("auto" is resolved first: `select_attention`)."""
    dtype = _dtype(dtype)
    attention = select_attention(attention, jax.default_backend(), dtype)
    if attention not in ATTENTION_IMPLEMENTATIONS:
        raise ValueError(f"attention={attention!r}: use one of {', '.join(ATTENTION_IMPLEMENTATIONS)}")
    if attention != "cudnn":
        return
    if jax.default_backend() != "gpu":
        raise ValueError(f"attention='cudnn' needs a GPU, but JAX's default backend is "
                         f"{jax.default_backend()!r}; use attention='xla'")
    if dtype not in (jnp.bfloat16, jnp.float16):
        raise ValueError(f"attention='cudnn' needs bfloat16 or float16 compute, got dtype={dtype}; "
                         "set dtype='bfloat16' or use attention='xla'")


def _is_texts(x) -> bool:
    return isinstance(x, str) or (isinstance(x, (list, tuple)) and len(x) > 0 and isinstance(x[0], str))


__all__ = ["SentenceEncoder", "bucket_length", "check_attention"]
