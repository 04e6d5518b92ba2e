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

import numpy as np
from huggingface_hub import snapshot_download
from safetensors.numpy import save_file

from siamjax.encoder import hf_names
from siamjax.encoder.verify import load_safetensors
from siamjax.encoder.bert import BertConfig
from siamjax.encoder.model import DenseConfig, EncoderSpec
from siamjax.encoder.pooling import PoolingConfig

log = logging.getLogger(__name__)

# model_type -> (architecture written on save, position ids counted RoBERTa-style)
ARCHITECTURES = {
    "bert": ("BertModel", False),
    "roberta": ("RobertaModel", True),
    "xlm-roberta": ("XLMRobertaModel", True),
    "camembert": ("CamembertModel", True),
}
_ST_MODULES = ("Transformer", "Pooling", "Dense", "Normalize")
_HUB_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model", "merges.txt", "*/config.json",
                 "*/model.safetensors", "README.md"]


@dataclasses.dataclass
class LoadedFolder:
    """What a model folder holds, ready to build an encoder from."""

    spec: EncoderSpec
    tensors: dict[str, np.ndarray]          # transformer weights, HF names
    dense_tensors: dict[str, np.ndarray]    # 2_Dense weights (empty without Dense)
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


def _read_json(path: pathlib.Path) -> dict:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: invalid JSON ({err})") from err


def bert_config_from_hf(config: dict, source: str) -> BertConfig:
    """Our `BertConfig` from a Hugging Face `config.json` dict; unknown families are errors."""
    model_type = config.get("model_type")
    if model_type not in ARCHITECTURES:
        raise ValueError(f"{source}: unknown architecture model_type={model_type!r}; siamjax supports "
                         f"{', '.join(sorted(ARCHITECTURES))}")
    if config.get("position_embedding_type", "absolute") != "absolute":
        raise ValueError(f"{source}: position_embedding_type={config['position_embedding_type']!r} is not "
                         "supported (only 'absolute')")
    fields = {f.name for f in dataclasses.fields(BertConfig)} - {"position_offset", "model_type"}
    kwargs = {k: config[k] for k in fields if k in config}
    pad = config.get("pad_token_id", 1 if ARCHITECTURES[model_type][1] else 0)
    kwargs["pad_token_id"] = pad
    try:
        return BertConfig(**kwargs, model_type=model_type,
                          position_offset=pad + 1 if ARCHITECTURES[model_type][1] else 0)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{source}: {err}") from err


def _weights(folder: pathlib.Path, what: str) -> dict[str, np.ndarray]:
    single, index = folder / "model.safetensors", folder / "model.safetensors.index.json"
    if single.is_file():
        return load_safetensors(single)
    if index.is_file():
        shards = sorted(set(_read_json(index)["weight_map"].values()))
        tensors = {}
        for shard in shards:
            tensors.update(load_safetensors(folder / shard))
        return tensors
    pickles = sorted(p.name for p in folder.glob("*.bin")) + sorted(p.name for p in folder.glob("*.pt"))
    if pickles:
        raise ValueError(
            f"{folder}: only pickle weights ({', '.join(pickles)}) for the {what}; siamjax loads safetensors "
            "only, because unpickling can run arbitrary code. Convert once in a trusted environment, e.g. "
            "`transformers.AutoModel.from_pretrained(folder).save_pretrained(folder, safe_serialization=True)`.")
    raise FileNotFoundError(f"{folder}: no weights for the {what} (expected model.safetensors)")


def _st_modules(folder: pathlib.Path) -> list[tuple[str, pathlib.Path]]:
    entries = _read_json(folder / "modules.json")
    modules = []
    for i, entry in enumerate(entries):
        kind = str(entry.get("type", "")).rsplit(".", 1)[-1]
        if kind not in _ST_MODULES:
            raise ValueError(f"{folder / 'modules.json'}: module {i} has type {entry.get('type')!r}; "
                             f"siamjax supports {', '.join(_ST_MODULES)}")
        modules.append((kind, folder / entry.get("path", "")))
    kinds = [k for k, _ in modules]
    order = ["Transformer", "Pooling"] + [k for k in ("Dense", "Normalize") if k in kinds]
    if kinds != order:
        raise ValueError(f"{folder / 'modules.json'}: module order {kinds} is not supported; "
                         "expected Transformer, Pooling, then optional Dense and Normalize")
    return modules


def read_folder(folder: pathlib.Path) -> LoadedFolder:
    """Parse a sentence-transformers or plain Hugging Face folder (no model is built here)."""
    dense_cfg, dense_tensors, normalize = None, {}, False
    if (folder / "modules.json").is_file():
        modules = dict(_st_modules(folder))
        transformer_dir = modules["Transformer"]
        pooling = PoolingConfig.from_st_config(_read_json(modules["Pooling"] / "config.json"),
                                               str(modules["Pooling"] / "config.json"))
        if "Dense" in modules:
            raw = _read_json(modules["Dense"] / "config.json")
            try:
                dense_cfg = DenseConfig(**{k: raw[k] for k in ("in_features", "out_features")},
                                        bias=raw.get("bias", True),
                                        activation_function=raw.get("activation_function",
                                                                    "torch.nn.modules.activation.Tanh"))
            except (KeyError, ValueError) as err:
                raise ValueError(f"{modules['Dense'] / 'config.json'}: {err}") from err
            dense_tensors = _weights(modules["Dense"], "Dense layer")
        normalize = "Normalize" in modules
        st_config_path = transformer_dir / "sentence_bert_config.json"
        st_config = _read_json(st_config_path) if st_config_path.is_file() else {}
    else:
        transformer_dir, pooling, st_config = folder, PoolingConfig(("mean",)), {}
    if not (transformer_dir / "config.json").is_file():
        raise FileNotFoundError(f"{transformer_dir}: no config.json; not a Hugging Face or "
                                "sentence-transformers model folder")
    hf_config = _read_json(transformer_dir / "config.json")
    bert = bert_config_from_hf(hf_config, str(transformer_dir / "config.json"))
    tensors = _weights(transformer_dir, "transformer")
    max_len = int(st_config.get("max_seq_length") or bert.max_tokens)
    if max_len > bert.max_tokens:
        raise ValueError(f"{transformer_dir / 'sentence_bert_config.json'}: max_seq_length {max_len} exceeds "
                         f"the {bert.max_tokens} positions the model has")
    spec = EncoderSpec(bert=bert, pooling=pooling, dense=dense_cfg, normalize=normalize)
    return LoadedFolder(spec, tensors, dense_tensors, hf_config, max_len, transformer_dir)


def hf_config_for(bert: BertConfig, base: dict | None) -> dict:
    """The `config.json` to write: the loaded one (if any) updated with our values."""
    config = dict(base or {})
    config.update({f.name: getattr(bert, f.name) for f in dataclasses.fields(BertConfig)
                   if f.name != "position_offset"})
    config["architectures"] = [ARCHITECTURES[bert.model_type][0]]
    return config


def write_folder(directory: pathlib.Path, *, spec: EncoderSpec, params: dict, tokenizer, hf_config: dict,
                 max_seq_length: int, extras: dict[str, np.ndarray]) -> None:
    """Write a complete sentence-transformers folder (loads in PyTorch and in siamjax)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(hf_config_for(spec.bert, hf_config), indent=2))
    tensors = hf_names.export_tensors(params, hf_names.transformer_names(spec.bert))
    tensors.update({k: np.ascontiguousarray(v) for k, v in extras.items()})
    save_file(tensors, directory / "model.safetensors", metadata={"format": "pt"})
    tokenizer.save_pretrained(str(directory))
    (directory / "sentence_bert_config.json").write_text(
        json.dumps({"max_seq_length": int(max_seq_length), "do_lower_case": False}, indent=2))
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
    (directory / "1_Pooling").mkdir(exist_ok=True)
    (directory / "1_Pooling" / "config.json").write_text(
        json.dumps(spec.pooling.to_st_config(spec.bert.hidden_size), indent=2))
    if spec.dense is not None:
        dense_dir = directory / "2_Dense"
        dense_dir.mkdir(exist_ok=True)
        (dense_dir / "config.json").write_text(json.dumps(dataclasses.asdict(spec.dense), indent=2))
        save_file(hf_names.export_tensors(params, hf_names.dense_names(spec.dense.bias)),
                  dense_dir / "model.safetensors", metadata={"format": "pt"})
        modules.append({"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"})
    if spec.normalize:
        n = len(modules)
        modules.append({"idx": n, "name": str(n), "path": f"{n}_Normalize",
                        "type": "sentence_transformers.models.Normalize"})
        (directory / f"{n}_Normalize").mkdir(exist_ok=True)
    (directory / "modules.json").write_text(json.dumps(modules, indent=2))
    (directory / "config_sentence_transformers.json").write_text(json.dumps(
        {"__version__": {"siamjax": _version()}, "prompts": {}, "default_prompt_name": None,
         "similarity_fn_name": "cosine"}, indent=2))
    (directory / "README.md").write_text(_model_card(spec, max_seq_length))


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("siamjax")
    except PackageNotFoundError:
        return "unknown"


def _model_card(spec: EncoderSpec, max_seq_length: int) -> str:
    dim = spec.embedding_dim
    return f"""---
library_name: sentence-transformers
tags: [sentence-transformers, sentence-similarity, feature-extraction, siamjax]
pipeline_tag: sentence-similarity
---
# Sentence embedding model (trained with siamjax)

A {spec.bert.model_type} encoder ({spec.bert.num_hidden_layers} layers, hidden size {spec.bert.hidden_size})
mapping text to {dim}-dimensional vectors: {'+'.join(spec.pooling.modes)} pooling
{'+ Dense ' if spec.dense else ''}{'+ L2 normalisation ' if spec.normalize else ''}over at most {max_seq_length} tokens.

```python
from sentence_transformers import SentenceTransformer   # PyTorch
model = SentenceTransformer("path/to/this/folder")

import siamjax                                            # JAX
model = siamjax.SentenceEncoder.from_pretrained("path/to/this/folder")
embeddings = model.encode(["A sentence.", "Another one."])
```
"""
