"""Gemma 3 text decoders (`model_type` gemma3_text: EmbeddingGemma-300m, Gemma-3 text backbones).

From `transformers`' `modeling_gemma3.py` / `configuration_gemma3.py`, what differs from Llama
(the block itself is `decoder.DecoderLayer`):

- RMSNorm computes `x_normed * (1 + w)` in float32; four norms per block (before and after
  attention, before and after the MLP) and RMSNorm on each query and key head;
- embeddings are multiplied by sqrt(hidden_size), rounded to the embedding dtype;
- scores are scaled by `query_pre_attn_scalar ** -0.5`, and `head_dim` is its own field
  (EmbeddingGemma: 3 heads of 256 on a 768-wide model, one key/value head);
- `layer_types` interleaves sliding-window and full layers (by default every 6th is full), with
  RoPE base `rope_local_base_freq` in sliding layers and `rope_theta` (+ `rope_scaling`) in full ones;
- `use_bidirectional_attention` (EmbeddingGemma): no causal mask, and a sliding layer sees
  |key - query| <= `sliding_window` // 2 (transformers stores (w // 2) + 1 as an exclusive
  bound and writes w back); otherwise causal with the `sliding_window` - 1 previous keys;
- the MLP is GeGLU with the tanh GELU (`gelu_pytorch_tanh`).
"""
from __future__ import annotations

import dataclasses
from typing import ClassVar

from siamjax.encoder import decoder, hf_names, rotary


def _default_layer_types(num_layers: int, pattern: int = 6) -> tuple[str, ...]:
    """transformers' default: layer i is full iff (i + 1) % pattern == 0."""
    return tuple("sliding_attention" if (i + 1) % pattern else "full_attention" for i in range(num_layers))


@dataclasses.dataclass(frozen=True)
class Gemma3Config:
    """Hyper-parameters of a Gemma 3 text model, named as in Hugging Face `config.json`
    (`rope_global` / `rope_local` are `rope_theta` + `rope_scaling` and `rope_local_base_freq`)."""

    ARCHITECTURES: ClassVar[dict[str, str]] = {"gemma3_text": "Gemma3TextModel"}
    SCORE_BIAS: ClassVar[bool] = False

    vocab_size: int = 262_208
    hidden_size: int = 2304
    intermediate_size: int = 9216
    num_hidden_layers: int = 26
    num_attention_heads: int = 8
    num_key_value_heads: int = 4
    head_dim: int = 256
    hidden_activation: str = "gelu_pytorch_tanh"
    max_position_embeddings: int = 131_072
    rms_norm_eps: float = 1e-6
    attention_bias: bool = False
    query_pre_attn_scalar: float = 256
    sliding_window: int | None = 4096
    layer_types: tuple[str, ...] | None = None
    rope_global: rotary.Rope = rotary.Rope(1_000_000.0)
    rope_local: rotary.Rope = rotary.Rope(10_000.0)
    use_bidirectional_attention: bool = False
    attn_logit_softcapping: float | None = None
    initializer_range: float = 0.02
    pad_token_id: int | None = 0
    model_type: str = "gemma3_text"

    def __post_init__(self):
        types = self.layer_types or _default_layer_types(self.num_hidden_layers)
        object.__setattr__(self, "layer_types", decoder.check_layer_types(types, self.num_hidden_layers))
        if self.attn_logit_softcapping is not None:
            raise ValueError(f"attn_logit_softcapping={self.attn_logit_softcapping} is not supported "
                             "(Gemma 3 checkpoints have none)")
        self.arch()  # every remaining check (heads, activation, windows) once, at construction

    @property
    def max_tokens(self) -> int:
        """Longest input the model supports."""
        return self.max_position_embeddings

    @classmethod
    def from_hf(cls, config: dict, source: str) -> "Gemma3Config":
        """From a Hugging Face `config.json`: released style (`rope_theta`, `rope_local_base_freq`,
        `rope_scaling`, `sliding_window_pattern`) or transformers 5's (`rope_parameters` per layer type)."""
        num_layers = config.get("num_hidden_layers", cls.num_hidden_layers)
        pattern = config.get("_sliding_window_pattern", config.get("sliding_window_pattern", 6))
        layer_types = config.get("layer_types") or _default_layer_types(num_layers, pattern)
        try:
            rope_global = decoder.rope_from_hf(config, source, default_theta=1_000_000.0, layer_type="full_attention")
            rope_local = decoder.rope_from_hf(config, source, theta_key="rope_local_base_freq", default_theta=10_000.0,
                                              layer_type="sliding_attention")
        except ValueError as err:
            raise ValueError(f"{source}: {err}") from err
        return hf_names.config_fields(cls, config, source, layer_types=tuple(layer_types), rope_global=rope_global,
                                      rope_local=rope_local)

    def to_hf(self, base: dict) -> dict:
        """The `config.json` to save: `base` (unknown keys kept) with our fields, in the released
        keys and transformers 5's `rope_parameters`, which agree."""
        ours = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if f.name not in ("rope_global", "rope_local")}
        ours["layer_types"] = list(self.layer_types)
        ours["rope_theta"], ours["rope_local_base_freq"] = self.rope_global.theta, self.rope_local.theta
        ours["rope_scaling"] = None if self.rope_global.kind == "default" else self.rope_global.to_hf()
        ours["rope_parameters"] = {"full_attention": self.rope_global.to_hf(),
                                   "sliding_attention": self.rope_local.to_hf()}
        return {**base, **ours, "architectures": ["Gemma3TextModel"]}

    def arch(self) -> decoder.DecoderArch:
        """What the shared decoder computes for this config."""
        causal = not self.use_bidirectional_attention
        return decoder.DecoderArch(
            vocab_size=self.vocab_size, hidden_size=self.hidden_size, intermediate_size=self.intermediate_size,
            num_heads=self.num_attention_heads, num_kv_heads=self.num_key_value_heads, head_dim=self.head_dim,
            activation=self.hidden_activation, rms_eps=self.rms_norm_eps,
            windows=tuple(decoder.layer_window(t, self.sliding_window, causal) for t in self.layer_types),
            ropes=tuple(self.rope_local if t == "sliding_attention" else self.rope_global for t in self.layer_types),
            causal=causal, norm_offset=True, qk_norm=True, sandwich_norm=True, attention_bias=self.attention_bias,
            query_scale=float(self.query_pre_attn_scalar) ** -0.5, embed_scale=True, init_std=self.initializer_range)

    def tensor_names(self) -> hf_names.TensorNames:
        """HF tensor name <-> param path for every weight (`Gemma3TextModel` layout)."""
        return decoder.tensor_names(self.arch())

    def build(self, **kwargs) -> decoder.DecoderEncoder:
        """The NNX module (`dtype`, `param_dtype`, `remat`, `attention`, `rngs` keywords)."""
        return decoder.DecoderEncoder(self.arch(), **kwargs)
