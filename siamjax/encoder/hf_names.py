"""Explicit mapping between Hugging Face tensor names and siamjax parameter paths.

Every tensor is accounted for: a checkpoint tensor that maps nowhere is an error naming it
(except the few known extras listed below, which are kept and written back on save), a
parameter that no tensor fills is an error naming it, and a shape mismatch names both shapes.
PyTorch `nn.Linear` stores `[out, in]`; Flax kernels are `[in, out]`, hence the transposes.
"""
from __future__ import annotations

import logging
from typing import Iterator

import numpy as np

from siamjax.encoder.bert import BertConfig

log = logging.getLogger(__name__)

# Prefixes that task-specific HF classes put in front of the base model's names.
_PREFIXES = ("bert.", "roberta.", "xlm_roberta.", "model.")
# Tensors kept verbatim and re-saved (the pooler is unused by sentence embeddings but belongs
# to the checkpoint); buffers that are recomputed and need not be stored.
_KEPT_EXTRAS = ("pooler.dense.weight", "pooler.dense.bias")
_BUFFERS = ("embeddings.position_ids", "embeddings.token_type_ids")
# Heads of other HF tasks: dropped with a warning that lists them.
_TASK_HEADS = ("cls.", "lm_head.", "classifier.", "qa_outputs.")

Path = tuple[str, ...]


def _linear(hf: str, ours: Path) -> Iterator[tuple[str, Path, bool]]:
    yield f"{hf}.weight", ours + ("kernel",), True
    yield f"{hf}.bias", ours + ("bias",), False


def _norm(hf: str, ours: Path) -> Iterator[tuple[str, Path, bool]]:
    yield f"{hf}.weight", ours + ("scale",), False
    yield f"{hf}.bias", ours + ("bias",), False


def transformer_names(cfg: BertConfig) -> list[tuple[str, Path, bool]]:
    """`(hf_name, our_path, transpose)` for every transformer weight of `cfg`."""
    e = ("encoder",)
    names = [
        ("embeddings.word_embeddings.weight", e + ("word_embeddings", "embedding"), False),
        ("embeddings.position_embeddings.weight", e + ("position_embeddings", "embedding"), False),
        ("embeddings.token_type_embeddings.weight", e + ("token_type_embeddings", "embedding"), False),
        *_norm("embeddings.LayerNorm", e + ("embed_norm",)),
    ]
    for i in range(cfg.num_hidden_layers):
        hf, ours = f"encoder.layer.{i}", e + ("layers", str(i))
        names += [
            *_linear(f"{hf}.attention.self.query", ours + ("query",)),
            *_linear(f"{hf}.attention.self.key", ours + ("key",)),
            *_linear(f"{hf}.attention.self.value", ours + ("value",)),
            *_linear(f"{hf}.attention.output.dense", ours + ("attn_out",)),
            *_norm(f"{hf}.attention.output.LayerNorm", ours + ("attn_norm",)),
            *_linear(f"{hf}.intermediate.dense", ours + ("intermediate",)),
            *_linear(f"{hf}.output.dense", ours + ("output",)),
            *_norm(f"{hf}.output.LayerNorm", ours + ("out_norm",)),
        ]
    return names


def dense_names(bias: bool) -> list[tuple[str, Path, bool]]:
    """Names inside `2_Dense/model.safetensors`."""
    names = [("linear.weight", ("dense", "kernel"), True)]
    return names + ([("linear.bias", ("dense", "bias"), False)] if bias else [])


def _canonical(name: str) -> str:
    for prefix in _PREFIXES:
        if name.startswith(prefix):
            name = name[len(prefix):]
            break
    # TF-era BERT checkpoints name LayerNorm parameters gamma/beta.
    return name.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias")


def _set(tree: dict, path: Path, value) -> None:
    for key in path[:-1]:
        tree = tree[key]
    tree[path[-1]] = value


def _get(tree: dict, path: Path):
    for key in path:
        tree = tree[key]
    return tree


def fill_params(abstract: dict, tensors: dict[str, np.ndarray], names, source: str):
    """Fill a copy of the abstract param tree from `tensors`; returns `(params, extras)`.

    `extras` holds the kept, unused tensors (pooler) to write back on save.
    """
    tensors = {_canonical(k): v for k, v in tensors.items()}
    params = _copy_tree(abstract)
    expected = {hf for hf, _, _ in names}
    missing = sorted(expected - tensors.keys())
    if missing:
        raise ValueError(f"{source}: missing weight(s) {missing[:5]}"
                         f"{' and %d more' % (len(missing) - 5) if len(missing) > 5 else ''}; "
                         "the checkpoint does not match its config.json")
    extras, dropped, unexpected = {}, [], []
    for name in sorted(tensors.keys() - expected):
        if name in _KEPT_EXTRAS:
            extras[name] = tensors[name]
        elif name in _BUFFERS:
            continue
        elif name.startswith(_TASK_HEADS):
            dropped.append(name)
        else:
            unexpected.append(name)
    if unexpected:
        raise ValueError(f"{source}: unexpected weight(s) {unexpected[:5]} that siamjax cannot map; "
                         "is config.json's model_type right for these weights?")
    if dropped:
        log.warning("%s: ignoring %d task-head tensor(s) not used for embeddings: %s",
                    source, len(dropped), ", ".join(dropped[:4]) + (" ..." if len(dropped) > 4 else ""))
    for hf, path, transpose in names:
        value = tensors[hf].T if transpose else tensors[hf]
        target = _get(abstract, path)
        if tuple(value.shape) != tuple(target.shape):
            shown = tuple(tensors[hf].shape)
            want = tuple(target.shape)[::-1] if transpose else tuple(target.shape)
            raise ValueError(f"{source}: weight {hf!r} has shape {shown}, expected {want} from config.json")
        _set(params, path, np.ascontiguousarray(value).astype(target.dtype))
    return params, extras


def export_tensors(params: dict, names) -> dict[str, np.ndarray]:
    """HF-named float arrays (PyTorch layout) from our params."""
    out = {}
    for hf, path, transpose in names:
        value = np.asarray(_get(params, path))
        out[hf] = np.ascontiguousarray(value.T if transpose else value)
    return out


def _copy_tree(tree):
    return {k: _copy_tree(v) for k, v in tree.items()} if isinstance(tree, dict) else tree
