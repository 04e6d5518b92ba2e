"""Input checks shared by every loss: shapes, dtypes, finiteness, batch divisibility.

Losses are called both eagerly (tests, notebooks) and inside `jax.jit`. Static facts (rank,
shape, dtype) are checked in both cases, because they are known at trace time. Values can only
be inspected when the arrays are concrete: then a NaN/Inf raises a ValueError naming the loss and
the field. Under `jax.jit` the arrays are tracers and no value check is possible without
`checkify`; there the registry's loss functions (`siamjax.losses.get_loss`) make the loss NaN
whenever any embedding is non-finite (see `nan_if_nonfinite`), so the training loop's stop-on-NaN
catches it instead of a selection-based loss silently skipping the bad rows.
"""
from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np


def is_concrete(x) -> bool:
    """True when `x` holds values we can read now (not a tracer inside jit/grad/shard_map)."""
    return not isinstance(x, jax.core.Tracer)


def check_float_array(where: str, field: str, x, ndim: int) -> jax.Array:
    """Returns `x` as an array of at least float32 after checking its rank and that it is floating point.

    Losses compute in float32 (bf16 embeddings are upcast, as sentence-transformers does for
    CoSENT), so a bf16 encoder still gets a float32 loss; float64 inputs (x64 parity tests)
    stay float64.
    """
    if not hasattr(x, "shape") or not hasattr(x, "dtype"):
        raise TypeError(f"{where}: {field} must be an array, got {type(x).__name__}")
    if x.ndim != ndim:
        raise ValueError(f"{where}: {field} must have rank {ndim}, got shape {tuple(x.shape)}")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"{where}: {field} must be a floating-point array, got dtype {x.dtype}")
    if any(d == 0 for d in x.shape):
        raise ValueError(f"{where}: {field} has an empty dimension: shape {tuple(x.shape)}")
    return jnp.asarray(x).astype(jnp.promote_types(x.dtype, jnp.float32))


def check_labels(where: str, labels, batch: int, kind: str) -> jax.Array:
    """Validates `labels [B]`: `kind` is "float" (scores), "int" (classes) or "binary" (0/1).

    Binary labels may be given as float, int or bool; scores as float or int (cast to float32);
    classes must be integer.
    """
    if labels is None:
        raise ValueError(f"{where}: labels [B] are required ({kind} labels), got None")
    if not hasattr(labels, "shape"):
        labels = np.asarray(labels)
    if labels.shape != (batch,):
        raise ValueError(f"{where}: labels must have shape ({batch},), got {tuple(labels.shape)}")
    dtype = labels.dtype
    if kind == "int":
        if not jnp.issubdtype(dtype, jnp.integer):
            raise TypeError(f"{where}: class labels must be integer, got dtype {dtype}")
        return jnp.asarray(labels).astype(jnp.int32)
    if not (jnp.issubdtype(dtype, jnp.number) or dtype == jnp.bool_):
        raise TypeError(f"{where}: labels must be numeric, got dtype {dtype}")
    if kind == "binary" and is_concrete(labels):
        bad = np.setdiff1d(np.unique(np.asarray(labels, np.float32)), [0.0, 1.0])
        if bad.size:
            raise ValueError(f"{where}: labels must be 0 or 1, found {bad[:5].tolist()}")
    check_finite(where, "labels", labels)
    return jnp.asarray(labels).astype(jnp.float32)


def check_same_shape(where: str, fields: Sequence[str], arrays: Sequence[jax.Array]) -> None:
    """All arrays must share one shape (e.g. anchors and positives both [B, D])."""
    shapes = [tuple(a.shape) for a in arrays]
    if len(set(shapes)) > 1:
        listing = ", ".join(f"{f}={s}" for f, s in zip(fields, shapes))
        raise ValueError(f"{where}: shapes must match, got {listing}")


def check_finite(where: str, field: str, x) -> None:
    """Raises ValueError if a concrete `x` holds NaN/Inf; does nothing for tracers (see module doc)."""
    if x is None or not is_concrete(x):
        return
    # numpy, not jnp: inside a jit trace even ops on concrete constants are staged out.
    finite = np.isfinite(np.asarray(x))
    if not finite.all():
        n_bad = int(np.sum(~finite))
        raise ValueError(f"{where}: {field} contains {n_bad} NaN/Inf value(s)")


def check_divisible(where: str, field: str, size: int, by: int, what: str) -> None:
    """`size` must be a multiple of `by`; the message says which knob to change."""
    if by <= 0 or size % by:
        raise ValueError(
            f"{where}: {field}={size} is not divisible by {what}={by}; "
            f"use a multiple of {by}"
        )


def nan_if_nonfinite(loss: jax.Array, *arrays) -> jax.Array:
    """`loss`, or NaN when any input holds NaN/Inf: non-finite inputs never vanish silently.

    Masking/mining losses select entries with comparisons, and a comparison with NaN is False, so
    a NaN embedding could otherwise drop out of the loss unnoticed under jit. The extra cost is one
    reduction over the inputs; gradients are unchanged when everything is finite.
    """
    ok = jnp.array(True)
    for a in arrays:
        if a is not None:
            ok = ok & jnp.all(jnp.isfinite(a))
    return jnp.where(ok, loss, jnp.nan)
