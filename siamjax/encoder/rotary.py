"""Rotary position embeddings (RoPE), as `transformers` computes them.

Why positions per segment: RoPE rotates each query/key by its position id, and attention then
depends only on relative positions within a text. A packed row passes
`rows.segment_positions` (restarting at 0 per text), so each packed text is rotated exactly as
it would be alone in a padded row.

The rotation uses the "rotate half" layout of HF checkpoints (the first and second halves of
each head are the pairs), computed in float32 whatever the compute dtype.
"""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np


def inverse_frequencies(head_dim: int, theta: float) -> np.ndarray:
    """`[H/2]` float32: theta ** (-2i / H), the default RoPE frequencies (float32 like torch)."""
    exponents = np.arange(0, head_dim, 2, dtype=np.float32) / np.float32(head_dim)
    return (np.float32(1.0) / (np.float32(theta) ** exponents)).astype(np.float32)


def cos_sin(positions_BxL, head_dim: int, theta: float):
    """`(cos, sin)`, each `[B, L, H]` float32, for integer position ids `[B, L]`."""
    freqs_BxLxK = positions_BxL.astype(jnp.float32)[..., None] * jnp.asarray(inverse_frequencies(head_dim, theta))
    angles_BxLxH = jnp.concatenate([freqs_BxLxK, freqs_BxLxK], axis=-1)
    return jnp.cos(angles_BxLxH), jnp.sin(angles_BxLxH)


def apply(x_BxLxNxH, cos_BxLxH, sin_BxLxH):
    """Rotate queries or keys `[B, L, N, H]` by their positions; returns the input dtype."""
    x = x_BxLxNxH.astype(jnp.float32)
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    out = x * cos_BxLxH[:, :, None, :] + rotated * sin_BxLxH[:, :, None, :]
    return out.astype(x_BxLxNxH.dtype)
