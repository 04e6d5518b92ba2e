"""Model folders: reading and writing sentence-transformers and plain Hugging Face folders, and
fetching hub names into the local cache.

Only safetensors weights are read: pickle `.bin` files can execute arbitrary code on load, so
a folder that has only those is refused with a message saying how to convert it. A folder we
write is a complete sentence-transformers folder that PyTorch users load unchanged.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import pathlib
from collections.abc import Iterator, Mapping
from importlib.metadata import PackageNotFoundError, version

import ml_dtypes
import numpy as np
from huggingface_hub import snapshot_download
from safetensors.numpy import save_file

from siamjax.encoder import families, hf_names, prompts, verify
from siamjax.encoder.model import DenseConfig, EncoderSpec
from siamjax.encoder.pooling import PoolingConfig

log = logging.getLogger(__name__)

_ST_MODULES = ("Transformer", "Pooling", "Dense", "Normalize")
_HUB_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model", "merges.txt", "*/config.json",
                 "*/model.safetensors", "README.md"]


@dataclasses.dataclass
class LoadedFolder:
    """What a model folder holds, ready to build an encoder from."""

    spec: EncoderSpec
    tensors: Mapping[str, np.ndarray]       # transformer weights, HF names (read on access)
    dense_tensors: list[Mapping[str, np.ndarray]]  # weights of each Dense module, in order
    dense_dirs: list[pathlib.Path]          # and their folders (2_Dense, 3_Dense, ...)
    hf_config: dict
    max_seq_length: int
    transformer_dir: pathlib.Path


def resolve(path_or_name: str | os.PathLike) -> pathlib.Path:
    """A local folder, or a hub name downloaded with `huggingface_hub` (offline: clear error)."""
    path = pathlib.Path(path_or_name).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise NotADirectoryError(f"{path} is a file; pass the model folder that contains config.json")
    name = str(path_or_name)
    looks_local = name.startswith(("/", ".", "~")) or name.count("/") > 1 or os.sep != "/" and os.sep in name
    if looks_local:
        raise FileNotFoundError(f"model folder {name} does not exist")
    try:
        return pathlib.Path(snapshot_download(repo_id=name, allow_patterns=_HUB_PATTERNS))
    except Exception as err:  # offline, unknown repo, gated repo, ...
        raise OSError(
            f"could not fetch model {name!r} from the Hugging Face hub ({type(err).__name__}: {err}). "
            f"No local folder named {name!r} exists either. If this machine is offline, download the "
            "model elsewhere and pass its local folder, e.g. SentenceEncoder.from_pretrained('/path/to/model')."
        ) from err


def read_json(path: pathlib.Path) -> dict:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: invalid JSON ({err})") from err


_SAFETENSORS_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
                       "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8,
                       "BOOL": np.bool_}


class SafetensorsFiles(Mapping):
    """The tensors of one or more safetensors files by name, each read from disk only when looked up.

    Why lazy, and why plain reads rather than a memory map: a 300M-parameter float32 checkpoint
    is 1.2 GB. Reading every tensor up front and then converting them holds it twice; a memory
    map keeps every page it touched resident (and counted in RSS) until the file is closed. Here
    `hf_names.fill_params` reads one tensor into its own buffer, converts and places it, and the
    buffer is freed before the next read.
    """

    def __init__(self, paths: list[pathlib.Path]):
        self._where: dict[str, tuple[pathlib.Path, dict, int]] = {}
        for path in paths:
            header, data_start = verify.safetensors_header(path)  # sizes checked: damage is one clear error
            for name, info in header.items():
                if name != "__metadata__":
                    self._where[name] = (path, info, data_start)

    def __getitem__(self, name: str) -> np.ndarray:
        path, info, start = self._where[name]
        if info["dtype"] not in _SAFETENSORS_DTYPES:
            raise verify.ModelFolderError(f"{path}: tensor {name!r} has dtype {info['dtype']}, which siamjax "
                                          "cannot read")
        out = np.empty(info["shape"], _SAFETENSORS_DTYPES[info["dtype"]])
        begin, _ = info["data_offsets"]
        with open(path, "rb") as f:
            f.seek(start + begin)
            if f.readinto(memoryview(out.reshape(-1).view(np.uint8))) != out.nbytes:
                raise verify.ModelFolderError(f"{path}: truncated file (tensor {name!r})")
        return out

    def __iter__(self) -> Iterator[str]:
        return iter(self._where)

    def __len__(self) -> int:
        return len(self._where)


def _weights(folder: pathlib.Path, what: str) -> SafetensorsFiles:
    single, index = folder / "model.safetensors", folder / "model.safetensors.index.json"
    if single.is_file():
        return SafetensorsFiles([single])
    if index.is_file():
        shards = sorted(set(read_json(index)["weight_map"].values()))
        return SafetensorsFiles([folder / shard for shard in shards])
    pickles = sorted(p.name for p in folder.glob("*.bin")) + sorted(p.name for p in folder.glob("*.pt"))
    if pickles:
        raise ValueError(
            f"{folder}: only pickle weights ({', '.join(pickles)}) for the {what}; siamjax loads safetensors "
            "only, because unpickling can run arbitrary code. Convert once in a trusted environment, e.g. "
            "`transformers.AutoModel.from_pretrained(folder).save_pretrained(folder, safe_serialization=True)`.")
    raise FileNotFoundError(f"{folder}: no weights for the {what} (expected model.safetensors)")


def _st_modules(folder: pathlib.Path) -> list[tuple[str, pathlib.Path]]:
    entries = read_json(folder / "modules.json")
    modules = []
    for i, entry in enumerate(entries):
        kind = str(entry.get("type", "")).rsplit(".", 1)[-1]
        if kind not in _ST_MODULES:
            raise ValueError(f"{folder / 'modules.json'}: module {i} has type {entry.get('type')!r}; "
                             f"siamjax supports {', '.join(_ST_MODULES)}")
        modules.append((kind, folder / entry.get("path", "")))
    kinds = [k for k, _ in modules]
    dense = [k for k in kinds if k == "Dense"]
    order = ["Transformer", "Pooling"] + dense + (["Normalize"] if "Normalize" in kinds else [])
    if kinds != order:
        raise ValueError(f"{folder / 'modules.json'}: module order {kinds} is not supported; "
                         "expected Transformer, Pooling, then any Dense modules and an optional Normalize")
    return modules


def _dense_config(path: pathlib.Path) -> DenseConfig:
    raw = read_json(path / "config.json")
    try:
        return DenseConfig(**{k: raw[k] for k in ("in_features", "out_features")}, bias=raw.get("bias", True),
                           activation_function=raw.get("activation_function", "torch.nn.modules.activation.Tanh"))
    except (KeyError, ValueError) as err:
        raise ValueError(f"{path / 'config.json'}: {err}") from err


def read_folder(folder: pathlib.Path, *, weights: bool = True) -> LoadedFolder:
    """Parse a sentence-transformers or plain Hugging Face folder (no model is built here).

    `weights=False` reads only the structure (config files): a folder with no safetensors, e.g.
    the shape of a model too big to download, is enough to plan a run (`siamjax plan`).
    """
    dense_cfgs, dense_dirs, normalize = [], [], False
    if (folder / "modules.json").is_file():
        modules = _st_modules(folder)
        transformer_dir, pooling_dir = modules[0][1], modules[1][1]
        pooling = read_pooling(pooling_dir)
        dense_dirs = [path for kind, path in modules if kind == "Dense"]
        dense_cfgs = [_dense_config(path) for path in dense_dirs]
        normalize = modules[-1][0] == "Normalize"
    else:
        transformer_dir, pooling = folder, PoolingConfig(("mean",))
    transformer, tensors, hf_config, max_len = read_transformer(transformer_dir, weights=weights)
    try:
        spec = EncoderSpec(transformer=transformer, pooling=pooling, dense=tuple(dense_cfgs), normalize=normalize)
    except ValueError as err:
        raise ValueError(f"{folder / 'modules.json'}: {err}") from err
    dense_tensors = [_weights(path, "Dense layer") for path in dense_dirs] if weights else []
    return LoadedFolder(spec, tensors, dense_tensors, dense_dirs, hf_config, max_len, transformer_dir)


def read_transformer(transformer_dir: pathlib.Path, *, weights: bool = True):
    """`(family config, lazy tensors, config.json dict, max_seq_length)` of a Transformer module
    folder (a sentence-transformers `Transformer` or a plain Hugging Face folder); with
    `weights=False` the tensors are `{}` (config files only)."""
    st_config_path = transformer_dir / "sentence_bert_config.json"
    st_config = read_json(st_config_path) if st_config_path.is_file() else {}
    if not (transformer_dir / "config.json").is_file():
        raise FileNotFoundError(f"{transformer_dir}: no config.json; not a Hugging Face or "
                                "sentence-transformers model folder")
    hf_config = read_json(transformer_dir / "config.json")
    transformer = families.config_from_hf(hf_config, str(transformer_dir / "config.json"))
    tensors = _weights(transformer_dir, "transformer") if weights else {}
    max_len = int(st_config.get("max_seq_length") or _tokenizer_max_length(transformer_dir, transformer.max_tokens))
    if max_len > transformer.max_tokens:
        raise ValueError(f"{transformer_dir / 'sentence_bert_config.json'}: max_seq_length {max_len} exceeds "
                         f"the {transformer.max_tokens} positions the model has")
    return transformer, tensors, hf_config, max_len


def read_pooling(pooling_dir: pathlib.Path) -> PoolingConfig:
    """A `Pooling` module folder's config."""
    return PoolingConfig.from_st_config(read_json(pooling_dir / "config.json"), str(pooling_dir / "config.json"))


def read_dense(dense_dir: pathlib.Path) -> tuple[DenseConfig, SafetensorsFiles]:
    """A `Dense` module folder's config and (lazy) weights."""
    return _dense_config(dense_dir), _weights(dense_dir, "Dense layer")


def _tokenizer_max_length(transformer_dir: pathlib.Path, max_tokens: int) -> int:
    """sentence-transformers 6 saves `max_seq_length` as the tokenizer's `model_max_length`, and
    reads it back capped by the model's positions; folders without either get the positions."""
    path = transformer_dir / "tokenizer_config.json"
    limit = read_json(path).get("model_max_length") if path.is_file() else None
    return min(int(limit), max_tokens) if isinstance(limit, (int, float)) and limit > 0 else max_tokens


def hf_config_for(transformer: families.TransformerConfig, base: dict | None) -> dict:
    """The `config.json` to write: the loaded one (if any; unknown keys are kept) updated with
    our values."""
    return transformer.to_hf(dict(base or {}))


def write_folder(directory: pathlib.Path, *, spec: EncoderSpec, params: dict, tokenizer, hf_config: dict,
                 max_seq_length: int, extras: dict[str, np.ndarray],
                 settings: prompts.ModelSettings | None = None, card: str | None = None) -> None:
    """Write a complete sentence-transformers folder (loads in PyTorch and in siamjax).

    `settings` go to `config_sentence_transformers.json` (prompts, similarity, ...); `card` is
    the README.md model card (default: a short description of the architecture)."""
    write_transformer(directory, transformer=spec.transformer, params=params, tokenizer=tokenizer,
                      hf_config=hf_config, max_seq_length=max_seq_length, extras=extras)
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
    write_pooling(directory / "1_Pooling", spec.pooling, spec.transformer.hidden_size)
    for i, dense in enumerate(spec.dense):
        n = len(modules)
        write_dense(directory / f"{n}_Dense", dense, params, i)
        modules.append({"idx": n, "name": str(n), "path": f"{n}_Dense", "type": "sentence_transformers.models.Dense"})
    if spec.normalize:
        n = len(modules)
        modules.append({"idx": n, "name": str(n), "path": f"{n}_Normalize",
                        "type": "sentence_transformers.models.Normalize"})
        (directory / f"{n}_Normalize").mkdir(exist_ok=True)
    (directory / "modules.json").write_text(json.dumps(modules, indent=2))
    write_model_config(directory, settings)
    (directory / "README.md").write_text(card if card is not None else _model_card(spec, max_seq_length))


def write_model_config(directory: pathlib.Path, settings: prompts.ModelSettings | None = None) -> None:
    """The folder's `config_sentence_transformers.json`: `settings` (prompts, similarity, ...)."""
    (directory / prompts.CONFIG_FILE).write_text(json.dumps(
        prompts.settings_json(settings or prompts.ModelSettings(), library_versions()), indent=2))


def write_transformer(directory: pathlib.Path, *, transformer: families.TransformerConfig, params: dict, tokenizer,
                      hf_config: dict, max_seq_length: int, extras: dict[str, np.ndarray]) -> None:
    """A `Transformer` module folder: config.json, HF-named weights, tokenizer, max_seq_length."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(hf_config_for(transformer, hf_config), indent=2))
    tensors = hf_names.export_tensors(params, transformer.tensor_names())
    tensors.update({k: np.ascontiguousarray(v) for k, v in extras.items()})
    save_file(tensors, directory / "model.safetensors", metadata={"format": "pt"})
    tokenizer.save_pretrained(str(directory))
    (directory / "sentence_bert_config.json").write_text(
        json.dumps({"max_seq_length": int(max_seq_length), "do_lower_case": False}, indent=2))


def write_pooling(directory: pathlib.Path, pooling: PoolingConfig, hidden_size: int) -> None:
    """A `Pooling` module folder."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(pooling.to_st_config(hidden_size), indent=2))


def write_dense(directory: pathlib.Path, dense: DenseConfig, params: dict, key: int | str) -> None:
    """A `Dense` module folder holding `params["dense"][key]`."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(dataclasses.asdict(dense), indent=2))
    save_file(hf_names.export_tensors(params, hf_names.dense_names(dense.bias, key)),
              directory / "model.safetensors", metadata={"format": "pt"})


def library_versions() -> dict[str, str]:
    """Versions of the libraries that made a folder (config `__version__`, model cards)."""
    out = {}
    for name in ("siamjax", "jax", "flax", "transformers"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "unknown"
    return out


def _model_card(spec: EncoderSpec, max_seq_length: int) -> str:
    dim, t = spec.embedding_dim, spec.transformer
    return f"""---
library_name: sentence-transformers
tags: [sentence-transformers, sentence-similarity, feature-extraction, siamjax]
pipeline_tag: sentence-similarity
---
# Sentence embedding model (trained with siamjax)

A {t.model_type} encoder ({t.num_hidden_layers} layers, hidden size {t.hidden_size})
mapping text to {dim}-dimensional vectors: {'+'.join(spec.pooling.modes)} pooling
{'+ Dense ' * len(spec.dense)}{'+ L2 normalisation ' if spec.normalize else ''}over at most {max_seq_length} tokens.

```python
from sentence_transformers import SentenceTransformer   # PyTorch
model = SentenceTransformer("path/to/this/folder")

import siamjax                                            # JAX
model = siamjax.SentenceEncoder.from_pretrained("path/to/this/folder")
embeddings = model.encode(["A sentence.", "Another one."])
```
"""
