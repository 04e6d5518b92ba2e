"""Explicit mapping between Hugging Face names (tensors, config.json fields) and siamjax's.

Each family (`bert.py`, `mpnet.py`, ...) lists its names with the helpers here; loading and
saving both read that one list. Every tensor is accounted for: a checkpoint tensor that maps
nowhere is an error naming it (except the family's known extras, buffers and task heads), a
parameter that no tensor fills is an error naming it, and a shape mismatch names both shapes.
PyTorch `nn.Linear` stores `[out, in]`; Flax kernels are `[in, out]`, hence the transposes.
"""
from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

Path = tuple[str, ...]
Name = tuple[str, Path, bool]  # (HF tensor name, our param path, transpose)


@dataclasses.dataclass(frozen=True)
class TensorNames:
    """How one family's checkpoint names map onto our params, and which other tensors it may hold.

    `prefixes`: what task-specific HF classes put in front of the base model's names
    (`bert.`, `mpnet.`, ...), stripped on load and never written. `kept`: tensors we do not use
    but keep and write back (BERT's pooler). `buffers`: recomputed tensors (position ids,
    rotary frequencies), matched by suffix and dropped. `task_heads`: other HF tasks' heads,
    dropped with a warning. Anything else unmapped is an error naming it.
    """

    names: tuple[Name, ...]
    prefixes: tuple[str, ...] = ()
    kept: tuple[str, ...] = ()
    buffers: tuple[str, ...] = ()
    task_heads: tuple[str, ...] = ()


def linear(hf: str, ours: Path, bias: bool = True) -> list[Name]:
    """A PyTorch `nn.Linear` (`[out, in]`, transposed into our `[in, out]` kernel)."""
    return [(f"{hf}.weight", ours + ("kernel",), True)] + ([(f"{hf}.bias", ours + ("bias",), False)] if bias else [])


def norm(hf: str, ours: Path, bias: bool = True) -> list[Name]:
    """A PyTorch `nn.LayerNorm` (weight -> scale)."""
    return [(f"{hf}.weight", ours + ("scale",), False)] + ([(f"{hf}.bias", ours + ("bias",), False)] if bias else [])


def embedding(hf: str, ours: Path) -> list[Name]:
    """A PyTorch `nn.Embedding`."""
    return [(f"{hf}.weight", ours + ("embedding",), False)]


def config_fields(cls, config: dict, source: str, *, exclude: tuple[str, ...] = ("model_type",), **fixed):
    """A family config dataclass from the `config.json` keys named like its fields (others are
    ignored, `exclude`d ones and `fixed` values set by the caller); errors name `source`."""
    names = {f.name for f in dataclasses.fields(cls)} - set(exclude) - fixed.keys()
    try:
        return cls(**{k: config[k] for k in names if k in config}, **fixed)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{source}: {err}") from err


def dense_names(bias: bool, index: int = 0) -> TensorNames:
    """Names inside the `index`-th Dense module's `model.safetensors` (`2_Dense`, `3_Dense`, ...)."""
    return TensorNames(tuple(linear("linear", ("dense", str(index)), bias)))


def _canonical(name: str, prefixes: tuple[str, ...]) -> str:
    for prefix in prefixes:
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


def fill_params(abstract: dict, tensors: Mapping[str, Any], scheme: TensorNames, source: str, *,
                place: Callable[[str, np.ndarray], Any] = lambda name, value: value):
    """Fill a copy of the abstract param tree from `tensors`; returns `(params, extras)`.

    `tensors` may be lazy (a Mapping that reads each tensor from disk when it is looked up, e.g.
    `folder.SafetensorsFiles`): tensors are read one at a time, transposed and cast to the
    parameter's dtype, and handed to `place(name, value)` (e.g. a check and a device put) before the next
    is read, so a checkpoint is never held twice in memory. `extras` holds the kept, unused
    tensors (`scheme.kept`, e.g. BERT's pooler) to write back on save.
    """
    by_name = {_canonical(k, scheme.prefixes): k for k in tensors.keys()}
    params = _copy_tree(abstract)
    expected = {hf for hf, _, _ in scheme.names}
    missing = sorted(expected - by_name.keys())
    if missing:
        raise ValueError(f"{source}: missing weight(s) {missing[:5]}"
                         f"{' and %d more' % (len(missing) - 5) if len(missing) > 5 else ''}; "
                         "the checkpoint does not match its config.json")
    extras, dropped, unexpected = {}, [], []
    for name in sorted(by_name.keys() - expected):
        if name in scheme.kept:
            extras[name] = np.asarray(tensors[by_name[name]])
        elif scheme.buffers and name.endswith(scheme.buffers):
            continue
        elif scheme.task_heads and name.startswith(scheme.task_heads):
            dropped.append(name)
        else:
            unexpected.append(name)
    if unexpected:
        raise ValueError(f"{source}: unexpected weight(s) {unexpected[:5]} that siamjax cannot map; "
                         "is config.json's model_type right for these weights?")
    if dropped:
        log.warning("%s: ignoring %d task-head tensor(s) not used for embeddings: %s",
                    source, len(dropped), ", ".join(dropped[:4]) + (" ..." if len(dropped) > 4 else ""))
    for hf, path, transpose in scheme.names:
        raw = tensors[by_name[hf]]
        target = _get(abstract, path)
        want = tuple(target.shape)[::-1] if transpose else tuple(target.shape)
        if tuple(raw.shape) != want:
            raise ValueError(f"{source}: weight {hf!r} has shape {tuple(raw.shape)}, expected {want} from config.json")
        value = np.ascontiguousarray(raw.T if transpose else raw).astype(target.dtype, copy=False)
        del raw
        _set(params, path, place(hf, value))
    return params, extras


def export_tensors(params: dict, scheme: TensorNames) -> dict[str, np.ndarray]:
    """HF-named float arrays (PyTorch layout) from our params."""
    out = {}
    for hf, path, transpose in scheme.names:
        value = np.asarray(_get(params, path))
        out[hf] = np.ascontiguousarray(value.T if transpose else value)
    return out


def _copy_tree(tree):
    return {k: _copy_tree(v) for k, v in tree.items()} if isinstance(tree, dict) else tree
