"""LoRA (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models") for the encoder's
projections: `y = x W + b + (alpha / r) * dropout(x) A B`, with W frozen and only A `[in, r]`
and B `[r, out]` trained (B starts at zero, so training starts from the pretrained model).

Why a wrapper module that keeps the projection's own `kernel`/`bias`: the wrapped projection's
parameters keep their paths (`.../q_proj/kernel`), so a family's HF tensor names, the FSDP rule
and checkpoint loading see the same tree as without LoRA; the adapters are two extra leaves
(`.../q_proj/lora_a`, `lora_b`). Training splits the tree once (`split_trainable`): the adapters
(and, if asked, the Dense heads) are the trained params, everything else a frozen base that
the step joins back in (`join`) and never differentiates, so no gradient or optimizer moment is
ever allocated for it. Exporting folds the adapters into W (`merge`), giving a plain model.

Targets use one vocabulary for every family (`q k v o gate up down`); `TARGETS` maps each to the
attribute names of the decoder block (`decoder.DecoderLayer`, the `*_proj` of HF's Llama/Qwen3/
Gemma) and of the post-norm block (`layers.PostNormBlock`: BERT/RoBERTa, MPNet, DistilBERT).
ModernBERT (fused `Wqkv`, gated `Wi`) has no separate q/k/v and is refused.
"""
from __future__ import annotations

import dataclasses
import math
import zlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from siamjax.encoder import layers

# canonical target -> attribute name of the projection, per block kind
_DECODER = {"q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "o_proj", "gate": "gate_proj", "up": "up_proj",
            "down": "down_proj"}
_POST_NORM = {"q": "query", "k": "key", "v": "value", "o": "attn_out", "up": "intermediate", "down": "output"}
TARGETS: dict[str, dict[str, str]] = {
    **{t: _DECODER for t in ("gemma3_text", "llama", "mistral", "qwen3")},
    **{t: _POST_NORM for t in ("bert", "roberta", "xlm-roberta", "camembert", "mpnet", "distilbert")},
}
TARGET_NAMES = tuple(_DECODER)  # every canonical name (the post-norm block has no `gate`)
ADAPTER_LEAVES = ("lora_a", "lora_b")
BASE_DTYPES = ("", "float32", "bfloat16")


@dataclasses.dataclass(frozen=True)
class LoRAConfig:
    """Which projections get adapters and how they are trained (`model.lora` in the config).

    `base_dtype`: dtype the frozen base is stored in while training ("" = the model's
    param_dtype); "bfloat16" halves the memory of a float32 base. Adapters are always float32.
    """

    rank: int
    alpha: float = 16.0
    dropout: float = 0.0
    targets: tuple[str, ...] = ("q", "k", "v", "o", "gate", "up", "down")
    train_heads: bool = False  # also train the Dense heads after pooling (2_Dense, ...)
    base_dtype: str = ""

    def __post_init__(self):
        object.__setattr__(self, "targets", tuple(self.targets))
        if not isinstance(self.rank, int) or self.rank < 1:
            raise ValueError(f"rank={self.rank!r}: must be a positive int")
        if not self.alpha > 0:
            raise ValueError(f"alpha={self.alpha!r}: must be > 0")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout={self.dropout!r}: must be in [0, 1)")
        unknown = sorted(set(self.targets) - set(TARGET_NAMES))
        if not self.targets or unknown:
            raise ValueError(f"targets={list(self.targets)}: choose from {', '.join(TARGET_NAMES)}")
        if self.base_dtype not in BASE_DTYPES:
            raise ValueError(f"base_dtype={self.base_dtype!r}: use one of {BASE_DTYPES}")

    @property
    def scale(self) -> float:
        """alpha / r, PEFT's `scaling` (without rsLoRA)."""
        return self.alpha / self.rank


def attribute_names(model_type: str, targets: tuple[str, ...]) -> tuple[str, ...]:
    """The projection attribute names of `targets` in `model_type`'s blocks (errors name the
    family and what it supports)."""
    if model_type not in TARGETS:
        raise ValueError(f"LoRA is not available for model_type={model_type!r}; it supports "
                         f"{', '.join(sorted(TARGETS))}")
    mapping = TARGETS[model_type]
    missing = [t for t in targets if t not in mapping]
    if missing:
        raise ValueError(f"LoRA targets {missing} do not exist in {model_type!r} blocks; choose from "
                         f"{', '.join(mapping)}")
    return tuple(mapping[t] for t in targets)


class LoRALinear(nnx.Module):
    """A frozen `nnx.Linear` (its own `kernel`/`bias` Variables, same paths) plus a trained
    low-rank update; computes in the projection's dtype like `nnx.Linear`."""

    def __init__(self, base: nnx.Linear, config: LoRAConfig, *, rngs: nnx.Rngs):
        self.kernel, self.bias, self.dtype = base.kernel, base.bias, base.dtype
        d_in, d_out = base.kernel.shape
        # PEFT's init: A ~ kaiming_uniform(a=sqrt(5)) = U(-1/sqrt(in), 1/sqrt(in)), B = 0
        bound = 1.0 / math.sqrt(d_in)
        self.lora_a = nnx.Param(jax.random.uniform(rngs.params(), (d_in, config.rank), jnp.float32, -bound, bound))
        self.lora_b = nnx.Param(jnp.zeros((config.rank, d_out), jnp.float32))
        self.scale, self.rate = config.scale, config.dropout

    def __call__(self, x_BxLxI, rng=None):
        dtype = self.dtype or jnp.result_type(x_BxLxI.dtype, self.kernel.dtype)
        y_BxLxO = x_BxLxI.astype(dtype) @ self.kernel[...].astype(dtype)
        if self.bias is not None:
            y_BxLxO = y_BxLxO + self.bias[...].astype(dtype)
        h_BxLxI = layers.dropout(x_BxLxI, self.rate, rng).astype(dtype)
        d_BxLxO = (h_BxLxI @ self.lora_a[...].astype(dtype)) @ self.lora_b[...].astype(dtype)
        return y_BxLxO + (self.scale * d_BxLxO).astype(dtype)


def wrap(encoder: nnx.Module, model_type: str, config: LoRAConfig, rngs: nnx.Rngs) -> None:
    """Replace every targeted `nnx.Linear` inside `encoder` (the transformer) by a `LoRALinear`."""
    names = attribute_names(model_type, config.targets)
    found = 0
    for _, module in list(nnx.iter_modules(encoder)):
        for name in names:
            child = getattr(module, name, None)
            if isinstance(child, nnx.Linear):
                setattr(module, name, LoRALinear(child, config, rngs=rngs))
                found += 1
    if not found:
        raise ValueError(f"no projection named {list(names)} found in the {model_type!r} encoder")


def init_adapters(params: dict, abstract: dict, seed: int) -> dict:
    """`params` (base weights, no adapters) completed with fresh host adapters where `abstract`
    (the LoRA model's ShapeDtypeStruct tree) has them: A uniform as PEFT draws it (one numpy
    stream per projection, keyed by its path), B zero. Only the adapters are created, so adding
    LoRA to an 8B base allocates nothing base-sized, and no JAX op is compiled per shape."""

    def fill(base, shapes, path):
        out = dict(base)
        for name, leaf in shapes.items():
            if isinstance(leaf, dict):
                out[name] = fill(base.get(name, {}), leaf, path + (name,))
            elif name in ADAPTER_LEAVES and isinstance(base.get("kernel"), jax.ShapeDtypeStruct):
                out[name] = jax.ShapeDtypeStruct(leaf.shape, leaf.dtype)  # a shape-only base (`siamjax plan`)
            elif name == "lora_a":
                bound = 1.0 / math.sqrt(leaf.shape[0])
                stream = np.random.default_rng([seed, zlib.crc32("/".join(path).encode())])
                out[name] = stream.uniform(-bound, bound, leaf.shape).astype(leaf.dtype)
            elif name == "lora_b":
                out[name] = np.zeros(leaf.shape, leaf.dtype)
        return out

    return fill(params, abstract, ())


def is_trainable(path: tuple[str, ...], train_heads: bool) -> bool:
    """An adapter leaf, or (with `train_heads`) a Dense head's weight."""
    return path[-1] in ADAPTER_LEAVES or (train_heads and path[0] == "dense")


def split_trainable(params: dict, train_heads: bool, base_dtype: Any = None) -> tuple[dict, dict]:
    """(trained, frozen) nested dicts with disjoint leaves; `join` undoes it. Frozen floating
    leaves are cast to `base_dtype` when given (bf16 storage of the base)."""

    def split(tree, path):
        trained, frozen = {}, {}
        for name, leaf in tree.items():
            if isinstance(leaf, dict):
                t, f = split(leaf, path + (name,))
                trained.update({name: t} if t else {})
                frozen.update({name: f} if f else {})
            elif is_trainable(path + (name,), train_heads):
                trained[name] = leaf
            else:
                cast = base_dtype is not None and jnp.issubdtype(leaf.dtype, jnp.floating)
                frozen[name] = _cast(leaf, base_dtype) if cast else leaf
        return trained, frozen

    return split(params, ())


def _cast(leaf, dtype):
    """`leaf` in `dtype`; a ShapeDtypeStruct (a shape-only model) stays one."""
    if isinstance(leaf, jax.ShapeDtypeStruct):
        return jax.ShapeDtypeStruct(leaf.shape, dtype, sharding=leaf.sharding)
    return leaf.astype(dtype)


def join(trained: dict, frozen: dict | None) -> dict:
    """The full param tree from `split_trainable`'s halves (frozen None or {}: `trained` as is)."""
    if not frozen:
        return trained
    out = dict(frozen)
    for name, leaf in trained.items():
        out[name] = join(leaf, frozen.get(name)) if isinstance(leaf, dict) else leaf
    return out


def with_base(encode_fn, base: dict | None):
    """`encode_fn` over the trained params alone: the frozen base is joined in at every call
    (as a traced argument, never a constant), so gradients reach only the trained leaves."""
    if not base:
        return encode_fn

    def encode(params, batch, *, rng=None):
        return encode_fn(join(params, base), batch, rng=rng)

    return encode


def merge(params: dict, config: LoRAConfig, param_dtype: Any) -> dict:
    """The plain model's params (host numpy): every `kernel` with adapters beside it becomes
    `W + scale * A B` (summed in float32), the adapters dropped, and every floating weight stored
    in `param_dtype` (a bf16-stored base comes back in the model's dtype)."""

    def leaf(x):
        x = np.asarray(x)
        return x.astype(param_dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x

    def walk(tree):
        if "lora_a" in tree:
            a, b = np.asarray(tree["lora_a"], np.float32), np.asarray(tree["lora_b"], np.float32)
            kernel = np.asarray(tree["kernel"], np.float32) + np.float32(config.scale) * (a @ b)
            rest = {k: leaf(v) for k, v in tree.items() if k not in ADAPTER_LEAVES + ("kernel",)}
            return {**rest, "kernel": kernel.astype(param_dtype)}
        return {k: walk(v) if isinstance(v, dict) else leaf(v) for k, v in tree.items()}

    return walk(params)


def adapter_paths(params: dict) -> list[tuple[str, ...]]:
    """Paths of the wrapped projections (the parents of `lora_a`), in tree order."""
    found = []

    def walk(tree, path):
        if "lora_a" in tree:
            found.append(path)
        for name, leaf in tree.items():
            if isinstance(leaf, dict):
                walk(leaf, path + (name,))

    walk(params, ())
    return found
