"""Rotary position embeddings (RoPE), as `transformers` computes them.

Why positions per segment: RoPE rotates each query/key by its position id, and attention then
depends only on relative positions within a text. A packed row passes
`rows.segment_positions` (restarting at 0 per text), so each packed text is rotated exactly as
it would be alone in a padded row.

The rotation uses the "rotate half" layout of HF checkpoints (the first and second halves of
each head are the pairs), computed in float32 whatever the compute dtype.

`Rope` holds one rotary embedding's `config.json` parameters: its base and the frequency
scalings released checkpoints use (`linear`, e.g. Gemma 3's global layers; `llama3`, Llama 3.1+).
Other scalings (dynamic NTK, YaRN, LongRoPE) are refused by name when a config is read.
"""
from __future__ import annotations

import dataclasses
import math

import jax.numpy as jnp
import numpy as np

ROPE_TYPES = ("default", "linear", "llama3")


@dataclasses.dataclass(frozen=True)
class Rope:
    """One rotary embedding: base `theta` and an optional frequency scaling (`kind`)."""

    theta: float
    kind: str = "default"
    factor: float = 1.0
    low_freq_factor: float = 1.0          # llama3 only
    high_freq_factor: float = 4.0         # llama3 only
    original_max_position_embeddings: int = 8192  # llama3 only

    @classmethod
    def from_hf(cls, theta: float, scaling: dict | None, source: str) -> "Rope":
        """From a base and an HF `rope_scaling` / `rope_parameters` dict (None: no scaling)."""
        scaling = dict(scaling or {})
        kind = scaling.get("rope_type", scaling.get("type", "default"))
        if kind not in ROPE_TYPES:
            raise ValueError(f"{source}: RoPE scaling rope_type={kind!r} is not supported; siamjax supports "
                             f"{', '.join(ROPE_TYPES)}")
        if scaling.get("partial_rotary_factor", 1.0) != 1.0:
            raise ValueError(f"{source}: partial_rotary_factor={scaling['partial_rotary_factor']} is not supported")
        if kind == "default":
            return cls(float(theta))
        fields = {k: scaling[k] for k in ("factor", "low_freq_factor", "high_freq_factor",
                                          "original_max_position_embeddings") if k in scaling}
        if "factor" not in fields:
            raise ValueError(f"{source}: RoPE scaling {scaling} has no factor")
        return cls(float(theta), kind, **fields)

    def to_hf(self) -> dict:
        """The `rope_parameters` dict transformers 5 writes (rope_type, rope_theta, scaling fields)."""
        out = {"rope_type": self.kind, "rope_theta": self.theta}
        if self.kind != "default":
            out["factor"] = self.factor
        if self.kind == "llama3":
            out.update(low_freq_factor=self.low_freq_factor, high_freq_factor=self.high_freq_factor,
                       original_max_position_embeddings=self.original_max_position_embeddings)
        return out

    def inverse_frequencies(self, head_dim: int) -> np.ndarray:
        """`[H/2]` float32 frequencies after scaling, as transformers' `ROPE_INIT_FUNCTIONS` compute them."""
        inv = inverse_frequencies(head_dim, self.theta)
        if self.kind == "linear":
            return (inv / np.float32(self.factor)).astype(np.float32)
        if self.kind == "llama3":
            wavelen = 2 * math.pi / inv
            low, high = (self.original_max_position_embeddings / self.low_freq_factor,
                         self.original_max_position_embeddings / self.high_freq_factor)
            scaled = np.where(wavelen > low, inv / self.factor, inv)
            smooth = (self.original_max_position_embeddings / wavelen - self.low_freq_factor) / (
                self.high_freq_factor - self.low_freq_factor)
            smoothed = (1 - smooth) * scaled / self.factor + smooth * scaled
            medium = ~(wavelen < high) & ~(wavelen > low)
            return np.where(medium, smoothed, scaled).astype(np.float32)
        return inv


def inverse_frequencies(head_dim: int, theta: float) -> np.ndarray:
    """`[H/2]` float32: theta ** (-2i / H), the default RoPE frequencies (float32 like torch)."""
    exponents = np.arange(0, head_dim, 2, dtype=np.float32) / np.float32(head_dim)
    return (np.float32(1.0) / (np.float32(theta) ** exponents)).astype(np.float32)


def cos_sin(positions_BxL, head_dim: int, theta: "float | Rope"):
    """`(cos, sin)`, each `[B, L, H]` float32, for integer position ids `[B, L]` (`theta`: a base, or a `Rope`)."""
    inv = theta.inverse_frequencies(head_dim) if isinstance(theta, Rope) else inverse_frequencies(head_dim, theta)
    freqs_BxLxK = positions_BxL.astype(jnp.float32)[..., None] * jnp.asarray(inv)
    angles_BxLxH = jnp.concatenate([freqs_BxLxK, freqs_BxLxK], axis=-1)
    return jnp.cos(angles_BxLxH), jnp.sin(angles_BxLxH)


def apply(x_BxLxNxH, cos_BxLxH, sin_BxLxH):
    """Rotate queries or keys `[B, L, N, H]` by their positions; returns the input dtype."""
    x = x_BxLxNxH.astype(jnp.float32)
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    out = x * cos_BxLxH[:, :, None, :] + rotated * sin_BxLxH[:, :, None, :]
    return out.astype(x_BxLxNxH.dtype)
