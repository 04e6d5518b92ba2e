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

from siamjax.encoder.rows import segment_positions

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
    """Which pooling modes are on (concatenated in `POOLING_MODES` order), and whether a
    prompt's tokens are pooled with the text (sentence-transformers' `include_prompt`; False
    drops them from pooling only: the text's tokens still attend to them)."""

    modes: tuple[str, ...] = ("mean",)
    include_prompt: bool = True

    def __post_init__(self):
        modes = tuple(_ALIASES.get(m, m) for m in self.modes)
        unknown = [m for m in modes if m not in POOLING_MODES]
        if unknown or not modes:
            raise ValueError(f"unknown pooling mode(s) {unknown or list(self.modes)}; "
                             f"valid modes: {', '.join(POOLING_MODES)}")
        object.__setattr__(self, "modes", tuple(m for m in POOLING_MODES if m in modes))

    @classmethod
    def from_st_config(cls, config: dict, source: str = "1_Pooling/config.json") -> "PoolingConfig":
        """Parse a sentence-transformers pooling config: `pooling_mode` (a string, or the list
        sentence-transformers 6 writes for several modes) or the older bool keys."""
        include_prompt = config.get("include_prompt", True)
        if not isinstance(include_prompt, bool):
            raise ValueError(f"{source}: include_prompt must be true or false, got {include_prompt!r}")
        return dataclasses.replace(cls._modes_from_st_config(config, source), include_prompt=include_prompt)

    @classmethod
    def _modes_from_st_config(cls, config: dict, source: str) -> "PoolingConfig":
        if isinstance(config.get("pooling_mode"), str):
            return cls((config["pooling_mode"],))
        if isinstance(config.get("pooling_mode"), list):
            try:
                parsed = cls(tuple(config["pooling_mode"]))
            except ValueError as err:
                raise ValueError(f"{source}: {err}") from err
            given = [_ALIASES.get(m, m) for m in config["pooling_mode"]]
            if list(parsed.modes) != given:  # sentence-transformers concatenates in list order
                raise ValueError(f"{source}: pooling_mode {config['pooling_mode']} concatenates in an order siamjax "
                                 f"does not support; list the modes in the order {list(POOLING_MODES)}")
            return parsed
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
        config["include_prompt"] = self.include_prompt
        return config

    def output_dim(self, dim: int) -> int:
        """Width of the pooled vector for token states of width `dim`."""
        return dim * len(self.modes)


def pool(h_RxLxD, segments_RxL, config: PoolingConfig, num_slots: int = 1, prompt_RxL=None):
    """Pool token states `[R, L, D]` into `[R, K, D * n_modes]`, one vector per segment slot.

    `segments_RxL` holds segment ids: 0 is padding, k in 1..K is the k-th text of the row
    (`K = num_slots`). An ordinary padded batch is the case K = 1 with the 0/1 attention
    mask as segment ids, so packed and padded batches share this one code path. Each mode
    is a masked sum over the row (a one-hot `[R, L, K]` contraction, local to the row so it
    shards with the rows). Masked means divide by max(count, 1e-9) as sentence-transformers
    does, so an empty slot pools to zeros.

    `prompt_RxL` (1 on each text's prompt tokens) matters only with `include_prompt=False`:
    as sentence-transformers zeroes the first `prompt_length` positions of the attention mask
    before pooling, those tokens leave every mode; cls takes the first token after the prompt
    and weightedmean keeps the weights of the tokens' positions in the whole text.
    """
    dtype = h_RxLxD.dtype
    pos_RxL = segment_positions(segments_RxL)
    if prompt_RxL is not None and not config.include_prompt:
        segments_RxL = jnp.where(prompt_RxL > 0, 0, segments_RxL)
    slots_K = jnp.arange(1, num_slots + 1, dtype=segments_RxL.dtype)
    onehot_RxLxK = (segments_RxL[..., None] == slots_K).astype(dtype)
    contract = lambda w_RxLxK: jnp.einsum("rlk,rld->rkd", w_RxLxK, h_RxLxD,
                                          precision=jax.lax.Precision.HIGHEST)
    count_RxKx1 = jnp.maximum(onehot_RxLxK.sum(axis=1), 1e-9)[..., None]
    outputs = []
    for mode in config.modes:
        if mode == "cls":
            first_RxL = segment_positions(segments_RxL) == 0  # the first pooled token of each text
            outputs.append(contract(onehot_RxLxK * first_RxL[..., None]))
        elif mode == "max":
            masked_RxLxKxD = jnp.where(onehot_RxLxK[..., None] > 0, h_RxLxD[:, :, None, :], -1e9)
            outputs.append(masked_RxLxKxD.max(axis=1))
        elif mode == "mean":
            outputs.append(contract(onehot_RxLxK) / count_RxKx1)
        elif mode == "mean_sqrt_len":
            outputs.append(contract(onehot_RxLxK) / jnp.sqrt(count_RxKx1))
        elif mode == "weightedmean":
            w_RxLxK = onehot_RxLxK * (pos_RxL + 1).astype(dtype)[..., None]
            outputs.append(contract(w_RxLxK) / jnp.maximum(w_RxLxK.sum(axis=1), 1e-9)[..., None])
        elif mode == "lasttoken":
            nxt_RxL = jnp.concatenate([segments_RxL[..., 1:], jnp.zeros_like(segments_RxL[..., :1])], axis=-1)
            outputs.append(contract(onehot_RxLxK * (nxt_RxL != segments_RxL)[..., None]))
    return jnp.concatenate(outputs, axis=-1)
