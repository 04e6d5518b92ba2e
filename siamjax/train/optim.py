"""Optimizer for fine-tuning sentence encoders: AdamW, warmup + decay, decay mask, clipping.

This reproduces the sentence-transformers / HF Trainer recipe (AdamW, linear warmup then
linear decay to zero, no weight decay on biases and LayerNorm, global-norm clipping at 1.0)
so that hyper-parameters from published ST recipes carry over unchanged.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

SCHEDULES = ("linear", "cosine", "constant")


def make_schedule(
    peak_lr: float,
    total_steps: int,
    warmup_steps: int,
    decay: str = "linear",
    end_lr: float = 0.0,
) -> optax.Schedule:
    """Linear warmup from 0 to `peak_lr` over `warmup_steps`, then `decay` down to `end_lr`.

    `decay` is "linear" (ST's WarmupLinear), "cosine", or "constant" (hold the peak).
    """
    if decay not in SCHEDULES:
        raise ValueError(f"unknown schedule {decay!r}; choose one of {SCHEDULES}")
    if total_steps <= 0:
        raise ValueError(f"total_steps must be positive, got {total_steps}")
    warmup_steps = max(0, min(int(warmup_steps), int(total_steps)))
    decay_steps = max(1, int(total_steps) - warmup_steps)
    warmup = optax.linear_schedule(0.0, peak_lr, max(warmup_steps, 1))
    if decay == "linear":
        main = optax.linear_schedule(peak_lr, end_lr, decay_steps)
    elif decay == "cosine":
        alpha = end_lr / peak_lr if peak_lr else 0.0
        main = optax.cosine_decay_schedule(peak_lr, decay_steps, alpha=alpha)
    else:
        main = optax.constant_schedule(peak_lr)
    if warmup_steps == 0:
        return main
    return optax.join_schedules([warmup, main], boundaries=[warmup_steps])


def _path_names(path) -> list[str]:
    """The string parts of a pytree key path (dict keys and attribute names; indices dropped)."""
    names = []
    for key in path:
        name = getattr(key, "key", getattr(key, "name", None))
        if isinstance(name, str):
            names.append(name)
    return names


def _decays(path, leaf) -> bool:
    """True if this parameter gets weight decay: a matrix that is neither a bias nor a norm."""
    names = [n for n in _path_names(path) if n != "value"]
    if not names or len(getattr(leaf, "shape", ())) < 2:
        return False
    if names[-1] == "bias":
        return False
    lowered = [n.lower() for n in names]
    return not any(n == "ln" or "norm" in n for n in lowered)


def weight_decay_mask(params: Any) -> Any:
    """A pytree of bools matching `params`: True where AdamW applies weight decay.

    Excludes biases and LayerNorm parameters (any path component named "ln" or containing
    "norm", and every vector), like ST/HF's `no_decay = ["bias", "LayerNorm.weight"]`.
    """
    return jax.tree_util.tree_map_with_path(_decays, params)


def make_optimizer(
    schedule: optax.Schedule | float,
    *,
    weight_decay: float = 0.01,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-6,
    clip_norm: float | None = 1.0,
    mask: Any = None,
    float32_moments: bool = True,
) -> optax.GradientTransformation:
    """AdamW with optional global-norm clipping first; `mask` limits weight decay (see above).

    `mask` may be a pytree of bools or a callable params -> mask (default: weight_decay_mask).
    `float32_moments`: the whole chain runs on float32 copies of gradients and parameters (see
    `in_float32`); a no-op for float32 parameters.
    """
    adamw = optax.adamw(
        schedule,
        b1=b1,
        b2=b2,
        eps=eps,
        weight_decay=weight_decay,
        mask=weight_decay_mask if mask is None else mask,
    )
    chain = adamw if clip_norm is None or clip_norm <= 0 else optax.chain(optax.clip_by_global_norm(clip_norm), adamw)
    return in_float32(chain) if float32_moments else chain


def _to_float32(tree):
    return jax.tree.map(lambda x: x.astype(jnp.float32) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)


def in_float32(inner: optax.GradientTransformation) -> optax.GradientTransformation:
    """`inner` applied to float32 copies of the gradients and parameters.

    Why: with bfloat16 weights (`model.param_dtype`), Adam's second moment and the step
    computed in bf16 lose most small gradients. Here the moments are float32 and the update
    comes back float32; `optax.apply_updates` adds it to the bf16 weights in float32 and rounds
    once. (No float32 master copy is kept: updates smaller than half a bf16 ulp of a weight are
    still lost, the price of halving parameter memory.)
    """

    def init(params):
        return inner.init(_to_float32(params))

    def update(grads, state, params=None):
        return inner.update(_to_float32(grads), state, None if params is None else _to_float32(params))

    return optax.GradientTransformation(init, update)
