"""Flax NNX ModernBERT encoder (`model_type` modernbert: gte-modernbert-base, modernbert-embed-base).

From `transformers`' `modeling_modernbert.py`:

- embeddings: token embedding, LayerNorm (bias only if `norm_bias`), dropout; no position table;
- pre-norm blocks: x += Wo(attn(LN(x))); x += mlp(LN(x)); layer 0 has no attention norm (the
  embedding norm precedes it); a final LayerNorm after the last block;
- attention: fused Wqkv, rotary position embeddings on queries and keys, with theta
  `global_rope_theta` in full-attention layers and `local_rope_theta` in sliding-window ones;
  sliding layers see keys with |query - key| <= `local_attention` // 2;
  `layer_types` (or, in older `config.json`s, `global_attn_every_n_layers`: layer i is global
  when i % n == 0) says which is which;
- MLP: GeGLU, Wo(drop(act(a) * g)) with [a, g] = Wi(x);
- `attention_bias`, `mlp_bias`, `norm_bias` switch the biases of those layers.

PyTorch ModernBERT unpads (or masks) padded batches; here a padded row is the one-segment case
of a packed row. Rotary positions restart per packed text, and the segment mask is ANDed with
the window, so a sliding window never reaches into the next text of a packed row.
"""
from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
from flax import nnx

from siamjax.encoder import hf_names, layers, rotary
from siamjax.encoder.rows import segment_positions

_LAYER_TYPES = ("full_attention", "sliding_attention")


@dataclasses.dataclass(frozen=True)
class ModernBertConfig:
    """Hyper-parameters of a ModernBERT encoder, named as in Hugging Face `config.json`.

    `layer_types` defaults to the released pattern (every third layer global, from layer 0).
    """

    ARCHITECTURES: ClassVar[dict[str, str]] = {"modernbert": "ModernBertModel"}
    SCORE_BIAS: ClassVar[bool] = False

    vocab_size: int = 50368
    hidden_size: int = 768
    intermediate_size: int = 1152
    num_hidden_layers: int = 22
    num_attention_heads: int = 12
    hidden_activation: str = "gelu"
    max_position_embeddings: int = 8192
    initializer_range: float = 0.02
    norm_eps: float = 1e-5
    norm_bias: bool = False
    attention_bias: bool = False
    mlp_bias: bool = False
    local_attention: int = 128
    layer_types: tuple[str, ...] | None = None
    global_rope_theta: float = 160000.0
    local_rope_theta: float = 10000.0
    embedding_dropout: float = 0.0
    attention_dropout: float = 0.0
    mlp_dropout: float = 0.0
    pad_token_id: int = 50283
    model_type: str = "modernbert"

    def __post_init__(self):
        layers.check_heads(self.hidden_size, self.num_attention_heads)
        layers.check_activation(self.hidden_activation, "hidden_activation")
        types = self.layer_types or _periodic_layer_types(self.num_hidden_layers, 3)
        object.__setattr__(self, "layer_types", tuple(types))
        bad = sorted(set(self.layer_types) - set(_LAYER_TYPES))
        if bad or len(self.layer_types) != self.num_hidden_layers:
            raise ValueError(f"layer_types must list {self.num_hidden_layers} entries from {_LAYER_TYPES}, "
                             f"got {list(self.layer_types)}")

    @property
    def max_tokens(self) -> int:
        """Longest input the model was trained for."""
        return self.max_position_embeddings

    @property
    def head_dim(self) -> int:
        """Width of one attention head."""
        return self.hidden_size // self.num_attention_heads

    @classmethod
    def from_hf(cls, config: dict, source: str) -> "ModernBertConfig":
        """From a Hugging Face `config.json`, old style (`global_attn_every_n_layers`,
        `global_rope_theta`/`local_rope_theta`, as released) or new (`layer_types`,
        `rope_parameters`, as transformers 5 saves); the new keys win, as in transformers."""
        def fail(message):
            raise ValueError(f"{source}: {message}")

        layer_types = config.get("layer_types") or _periodic_layer_types(
            config.get("num_hidden_layers", cls.num_hidden_layers), config.get("global_attn_every_n_layers", 3))
        rope = config.get("rope_parameters") or {}
        for kind in [*_LAYER_TYPES, "rope_scaling"]:
            params = (config.get("rope_scaling") if kind == "rope_scaling" else rope.get(kind)) or {}
            if params.get("rope_type", params.get("type", "default")) != "default":
                fail(f"RoPE scaling {params} is not supported (only the default rotary embedding)")
        global_theta = (rope.get("full_attention") or {}).get("rope_theta", config.get("global_rope_theta", 160000.0))
        local_theta = (rope.get("sliding_attention") or {}).get("rope_theta", config.get("local_rope_theta", 10000.0))
        hidden = config.get("hidden_size", cls.hidden_size)
        heads = config.get("num_attention_heads", cls.num_attention_heads)
        if config.get("head_dim") not in (None, hidden // heads):
            fail(f"head_dim={config['head_dim']} differs from hidden_size / num_attention_heads; not supported")
        if config.get("sliding_window") is not None:  # transformers: the half window, overriding local_attention
            config = {**config, "local_attention": 2 * int(config["sliding_window"])}
        # transformers 4.x (which trained the released models) read a null local theta as the global one.
        return hf_names.config_fields(cls, config, source, layer_types=tuple(layer_types),
                                      global_rope_theta=float(global_theta),
                                      local_rope_theta=float(global_theta if local_theta is None else local_theta))

    def to_hf(self, base: dict) -> dict:
        """The `config.json` to save: `base` (unknown keys kept) with our fields, in both the
        transformers-5 keys and the older ones, so either version loads it the same way."""
        ours = dataclasses.asdict(self)
        ours["layer_types"] = list(self.layer_types)
        ours["rope_parameters"] = {"full_attention": {"rope_type": "default", "rope_theta": self.global_rope_theta},
                                   "sliding_attention": {"rope_type": "default", "rope_theta": self.local_rope_theta}}
        config = {**base, **ours, "architectures": ["ModernBertModel"]}
        config.pop("sliding_window", None)  # it would override local_attention on load
        every = [n for n in range(1, self.num_hidden_layers + 1)
                 if _periodic_layer_types(self.num_hidden_layers, n) == list(self.layer_types)]
        if every:
            config["global_attn_every_n_layers"] = every[0]
        else:
            config.pop("global_attn_every_n_layers", None)
        return config

    def tensor_names(self) -> hf_names.TensorNames:
        """HF tensor name <-> param path for every weight (`ModernBertModel` layout)."""
        e, nb = ("encoder",), self.norm_bias
        names = [*hf_names.embedding("embeddings.tok_embeddings", e + ("tok_embeddings",)),
                 *hf_names.norm("embeddings.norm", e + ("embed_norm",), nb)]
        for i in range(self.num_hidden_layers):
            hf, ours = f"layers.{i}", e + ("layers", str(i))
            if i > 0:
                names += hf_names.norm(f"{hf}.attn_norm", ours + ("attn_norm",), nb)
            names += [*hf_names.linear(f"{hf}.attn.Wqkv", ours + ("qkv",), self.attention_bias),
                      *hf_names.linear(f"{hf}.attn.Wo", ours + ("attn_out",), self.attention_bias),
                      *hf_names.norm(f"{hf}.mlp_norm", ours + ("mlp_norm",), nb),
                      *hf_names.linear(f"{hf}.mlp.Wi", ours + ("mlp_in",), self.mlp_bias),
                      *hf_names.linear(f"{hf}.mlp.Wo", ours + ("mlp_out",), self.mlp_bias)]
        names += hf_names.norm("final_norm", e + ("final_norm",), nb)
        return hf_names.TensorNames(tuple(names), prefixes=("model.",), buffers=("inv_freq",),
                                    task_heads=("head.", "decoder.", "classifier."))

    def build(self, **kwargs) -> "ModernBertEncoder":
        """The NNX module (`dtype`, `param_dtype`, `remat`, `attention`, `rngs` keywords)."""
        return ModernBertEncoder(self, **kwargs)


def _periodic_layer_types(num_layers: int, every: int) -> list[str]:
    """transformers' rule for `global_attn_every_n_layers`: layer i is global iff i % every == 0."""
    return [_LAYER_TYPES[1] if i % every else _LAYER_TYPES[0] for i in range(num_layers)]


class ModernBertLayer(nnx.Module):
    """One pre-norm block: rotary attention (global or sliding window), then a GeGLU MLP."""

    def __init__(self, cfg: ModernBertConfig, index: int, *, dtype, param_dtype, attention: str, rngs: nnx.Rngs):
        d, f = cfg.hidden_size, cfg.intermediate_size
        kw = dict(init_std=cfg.initializer_range, dtype=dtype, param_dtype=param_dtype)
        norm = lambda: layers.layer_norm(rngs, d, eps=cfg.norm_eps, use_bias=cfg.norm_bias, dtype=dtype,
                                         param_dtype=param_dtype)
        self.attn_norm = norm() if index > 0 else None  # layer 0 follows the embedding norm directly
        self.qkv = layers.linear(rngs, d, 3 * d, use_bias=cfg.attention_bias, **kw)
        self.attn_out = layers.linear(rngs, d, d, use_bias=cfg.attention_bias, **kw)
        self.mlp_norm = norm()
        self.mlp_in = layers.linear(rngs, d, 2 * f, use_bias=cfg.mlp_bias, **kw)
        self.mlp_out = layers.linear(rngs, f, d, use_bias=cfg.mlp_bias, **kw)
        sliding = cfg.layer_types[index] == "sliding_attention"
        self.window = cfg.local_attention // 2 if sliding else None
        self.num_heads = cfg.num_attention_heads
        self.act_name = cfg.hidden_activation
        self.attention_dropout, self.mlp_dropout = cfg.attention_dropout, cfg.mlp_dropout
        self.implementation = attention

    def __call__(self, x_BxLxD, mask: layers.AttentionMask, cos_BxLxH, sin_BxLxH, *, rng=None):
        b, l, d = x_BxLxD.shape
        n, h = self.num_heads, d // self.num_heads
        rng_attn, rng_mlp = jax.random.split(rng) if rng is not None else (None, None)
        normed_BxLxD = x_BxLxD if self.attn_norm is None else self.attn_norm(x_BxLxD)
        qkv_BxLx3xNxH = self.qkv(normed_BxLxD).reshape(b, l, 3, n, h)
        q_BxLxNxH = rotary.apply(qkv_BxLx3xNxH[:, :, 0], cos_BxLxH, sin_BxLxH)
        k_BxLxNxH = rotary.apply(qkv_BxLx3xNxH[:, :, 1], cos_BxLxH, sin_BxLxH)
        a_BxLxNxH = layers.attend(q_BxLxNxH, k_BxLxNxH, qkv_BxLx3xNxH[:, :, 2], mask, window=self.window,
                                  implementation=self.implementation)
        x_BxLxD = x_BxLxD + layers.dropout(self.attn_out(a_BxLxNxH.reshape(b, l, d)), self.attention_dropout,
                                           rng_attn)
        a_BxLxF, g_BxLxF = jnp.split(self.mlp_in(self.mlp_norm(x_BxLxD)), 2, axis=-1)
        h_BxLxF = layers.dropout(layers.ACTIVATIONS[self.act_name](a_BxLxF) * g_BxLxF, self.mlp_dropout, rng_mlp)
        return x_BxLxD + self.mlp_out(h_BxLxF)


class ModernBertEncoder(nnx.Module):
    """Embeddings, pre-norm rotary blocks, final norm; returns token states `[B, L, D]` in float32."""

    def __init__(self, cfg: ModernBertConfig, *, dtype: Any = jnp.float32, param_dtype: Any = jnp.float32,
                 remat: bool = False, attention: str = "xla", rngs: nnx.Rngs):
        norm = lambda: layers.layer_norm(rngs, cfg.hidden_size, eps=cfg.norm_eps, use_bias=cfg.norm_bias,
                                         dtype=dtype, param_dtype=param_dtype)
        self.tok_embeddings = layers.embed(rngs, cfg.vocab_size, cfg.hidden_size, init_std=cfg.initializer_range,
                                           dtype=dtype, param_dtype=param_dtype)
        self.embed_norm = norm()
        self.layers = nnx.Dict({str(i): ModernBertLayer(cfg, i, dtype=dtype, param_dtype=param_dtype,
                                                        attention=attention, rngs=rngs)
                                for i in range(cfg.num_hidden_layers)})
        self.final_norm = norm()
        self.config = cfg
        self.remat = remat

    def __call__(self, input_ids, attention_mask, token_type_ids=None, *, rng=None):
        del token_type_ids  # ModernBERT has no token types
        cfg = self.config
        rngs = layers.layer_rngs(rng, cfg.num_hidden_layers)
        x_BxLxD = layers.dropout(self.embed_norm(self.tok_embeddings(input_ids)), cfg.embedding_dropout, rngs[0])
        mask = layers.AttentionMask(attention_mask)
        positions_BxL = segment_positions(attention_mask)
        rope = {"full_attention": rotary.cos_sin(positions_BxL, cfg.head_dim, cfg.global_rope_theta),
                "sliding_attention": rotary.cos_sin(positions_BxL, cfg.head_dim, cfg.local_rope_theta)}
        blocks = [self.layers[str(i)] for i in range(cfg.num_hidden_layers)]
        x_BxLxD = layers.run_layers(blocks, x_BxLxD, rngs[1:], self.remat,
                                    lambda i: (mask, *rope[cfg.layer_types[i]]))
        return self.final_norm(x_BxLxD).astype(jnp.float32)
