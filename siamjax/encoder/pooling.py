"""Pooling token states into one sentence vector, plus the optional Dense head.

Mirrors sentence-transformers' `Pooling` and `Dense` modules, including their config files,
so that a folder's own `1_Pooling/config.json` decides the pooling and a saved folder loads
unchanged in PyTorch. Several modes may be active at once; their outputs are concatenated in
sentence-transformers' order.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

# sentence-transformers' concatenation order and its config-file keys.
POOLING_MODES = ("cls", "max", "mean", "mean_sqrt_len", "weightedmean", "lasttoken")
_CONFIG_KEYS = {
    "cls": "pooling_mode_cls_token",
    "max": "pooling_mode_max_tokens",
    "mean": "pooling_mode_mean_tokens",
    "mean_sqrt_len": "pooling_mode_mean_sqrt_len_tokens",
    "weightedmean": "pooling_mode_weightedmean_tokens",
    "lasttoken": "pooling_mode_lasttoken",
}
_ALIASES = {"cls_token": "cls", "mean_tokens": "mean", "max_tokens": "max", "last": "lasttoken",
            "weighted_mean": "weightedmean", "last_token": "lasttoken", "mean_sqrt_len_tokens": "mean_sqrt_len"}

# Dense activations as sentence-transformers writes them in 2_Dense/config.json.
DENSE_ACTIVATIONS = {
    "torch.nn.modules.activation.Tanh": jnp.tanh,
    "torch.nn.modules.linear.Identity": lambda x: x,
    "torch.nn.modules.activation.ReLU": jax.nn.relu,
    "torch.nn.modules.activation.GELU": lambda x: jax.nn.gelu(x, approximate=False),
    "torch.nn.modules.activation.Sigmoid": jax.nn.sigmoid,
}


@dataclasses.dataclass(frozen=True)
class PoolingConfig:
    """Which pooling modes are on (concatenated in `POOLING_MODES` order)."""

    modes: tuple[str, ...] = ("mean",)

    def __post_init__(self):
        modes = tuple(_ALIASES.get(m, m) for m in self.modes)
        unknown = [m for m in modes if m not in POOLING_MODES]
        if unknown or not modes:
            raise ValueError(f"unknown pooling mode(s) {unknown or list(self.modes)}; "
                             f"valid modes: {', '.join(POOLING_MODES)}")
        object.__setattr__(self, "modes", tuple(m for m in POOLING_MODES if m in modes))

    @classmethod
    def from_st_config(cls, config: dict, source: str = "1_Pooling/config.json") -> "PoolingConfig":
        """Parse a sentence-transformers pooling config (new `pooling_mode` string or bool keys)."""
        if "pooling_mode" in config and isinstance(config["pooling_mode"], str):
            return cls((config["pooling_mode"],))
        known = set(_CONFIG_KEYS.values()) | {"word_embedding_dimension", "include_prompt"}
        unknown = [k for k, v in config.items() if k.startswith("pooling_mode") and k not in known and v]
        if unknown:
            raise ValueError(f"{source}: unsupported pooling option(s) {unknown}; "
                             f"siamjax supports {', '.join(POOLING_MODES)}")
        modes = tuple(m for m, key in _CONFIG_KEYS.items() if config.get(key, False))
        if not modes:
            raise ValueError(f"{source}: no pooling mode is enabled (set one of {sorted(_CONFIG_KEYS.values())})")
        return cls(modes)

    def to_st_config(self, dim: int) -> dict:
        """The `1_Pooling/config.json` sentence-transformers expects."""
        config = {"word_embedding_dimension": dim}
        config.update({key: mode in self.modes for mode, key in _CONFIG_KEYS.items()})
        config["include_prompt"] = True
        return config

    def output_dim(self, dim: int) -> int:
        """Width of the pooled vector for token states of width `dim`."""
        return dim * len(self.modes)


def pool(h_BxLxD, mask_BxL, config: PoolingConfig):
    """Pool token states `[B, L, D]` with the 0/1 mask `[B, L]` into `[B, D * n_modes]`.

    Assumes right padding (what siamjax's tokenisation produces). Masked means divide by
    max(count, 1e-9) as sentence-transformers does, so an all-padding row pools to zeros.
    """
    m_BxLx1 = mask_BxL.astype(h_BxLxD.dtype)[..., None]
    count_Bx1 = jnp.maximum(m_BxLx1.sum(axis=1), 1e-9)
    outputs = []
    for mode in config.modes:
        if mode == "cls":
            outputs.append(h_BxLxD[:, 0])
        elif mode == "max":
            outputs.append(jnp.where(m_BxLx1 > 0, h_BxLxD, -1e9).max(axis=1))
        elif mode == "mean":
            outputs.append((h_BxLxD * m_BxLx1).sum(axis=1) / count_Bx1)
        elif mode == "mean_sqrt_len":
            outputs.append((h_BxLxD * m_BxLx1).sum(axis=1) / jnp.sqrt(count_Bx1))
        elif mode == "weightedmean":
            w_BxLx1 = jnp.arange(1, h_BxLxD.shape[1] + 1, dtype=h_BxLxD.dtype)[None, :, None] * m_BxLx1
            outputs.append((h_BxLxD * w_BxLx1).sum(axis=1) / jnp.maximum(w_BxLx1.sum(axis=1), 1e-9))
        elif mode == "lasttoken":
            last_B = jnp.maximum(mask_BxL.sum(axis=1) - 1, 0)
            outputs.append(jnp.take_along_axis(h_BxLxD, last_B[:, None, None], axis=1)[:, 0])
    return jnp.concatenate(outputs, axis=-1)


def l2_normalize(x_BxD):
    """Unit-length rows, as `torch.nn.functional.normalize` (eps 1e-12 on the norm)."""
    return x_BxD / jnp.maximum(jnp.linalg.norm(x_BxD, axis=-1, keepdims=True), 1e-12)
