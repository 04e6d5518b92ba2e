"""Llama-architecture decoders (`model_type` llama, mistral, qwen3: e5-mistral-7b-instruct,
SFR-Embedding-Mistral, Qwen3-Embedding-0.6B/4B/8B, Llama-based embedders).

One config covers the three, as `BertConfig` covers RoBERTa: from `transformers`'
`modeling_llama.py`, `modeling_mistral.py` and `modeling_qwen3.py` they compute the same causal
pre-norm block (`decoder.DecoderLayer`: RMSNorm `w * x`, rotary grouped-query attention scaled by
1/sqrt(head_dim), SwiGLU MLP, final RMSNorm) and differ in:

- Qwen3: RMSNorm on each query and key head; `head_dim` 128 by default, independent of
  hidden / heads; sliding windows only with `use_sliding_window`, on layers >= `max_window_layers`
  (or as `layer_types` says);
- Mistral: `sliding_window` (when set) on every layer, each token seeing the `sliding_window` - 1
  previous ones;
- Llama: optional `attention_bias` / `mlp_bias`, `head_dim`, and Llama 3.1's `llama3` RoPE scaling.

Embedders built on them pool the last token (`lasttoken`, read from `1_Pooling/config.json`),
which with causal attention is the one token that has seen the whole text.
"""
from __future__ import annotations

import dataclasses
from typing import ClassVar

from siamjax.encoder import decoder, hf_names, rotary

_QK_NORM = ("qwen3",)


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
    """Hyper-parameters of a Llama/Mistral/Qwen3 decoder, named as in Hugging Face `config.json`
    (`rope` is `rope_theta` + `rope_scaling`, or transformers 5's `rope_parameters`)."""

    ARCHITECTURES: ClassVar[dict[str, str]] = {"llama": "LlamaModel", "mistral": "MistralModel",
                                               "qwen3": "Qwen3Model"}
    SCORE_BIAS: ClassVar[bool] = False

    vocab_size: int = 32000
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int | None = None
    head_dim: int | None = None
    hidden_act: str = "silu"
    max_position_embeddings: int = 2048
    rms_norm_eps: float = 1e-6
    attention_bias: bool = False
    mlp_bias: bool = False
    rope: rotary.Rope = rotary.Rope(10000.0)
    sliding_window: int | None = None
    layer_types: tuple[str, ...] | None = None
    initializer_range: float = 0.02
    pad_token_id: int | None = None
    model_type: str = "llama"

    def __post_init__(self):
        if self.model_type not in self.ARCHITECTURES:
            raise ValueError(f"model_type={self.model_type!r} is not one of {sorted(self.ARCHITECTURES)}")
        if self.num_key_value_heads is None:
            object.__setattr__(self, "num_key_value_heads", self.num_attention_heads)
        if self.head_dim is None:
            object.__setattr__(self, "head_dim", self.hidden_size // self.num_attention_heads)
        if self.layer_types is None:
            every = "sliding_attention" if self.model_type == "mistral" and self.sliding_window else "full_attention"
            object.__setattr__(self, "layer_types", (every,) * self.num_hidden_layers)
        object.__setattr__(self, "layer_types", decoder.check_layer_types(self.layer_types, self.num_hidden_layers))
        self.arch()  # every remaining check (heads, activation, windows) once, at construction

    @property
    def max_tokens(self) -> int:
        """Longest input the model supports."""
        return self.max_position_embeddings

    @classmethod
    def from_hf(cls, config: dict, source: str) -> "LlamaConfig":
        """From a Hugging Face `config.json`, released (`rope_theta`, `rope_scaling`) or transformers 5
        style (`rope_parameters`, `layer_types`); Qwen3's sliding layers as transformers derives them."""
        model_type = config["model_type"]
        fixed = {}
        if model_type == "qwen3":
            window = config.get("sliding_window") if config.get("use_sliding_window") else None
            first = config.get("max_window_layers", 28)
            num_layers = config.get("num_hidden_layers", cls.num_hidden_layers)
            fixed["sliding_window"] = window
            fixed["layer_types"] = tuple(config.get("layer_types") or (
                "sliding_attention" if window is not None and i >= first else "full_attention"
                for i in range(num_layers)))
            fixed["head_dim"] = config.get("head_dim") or 128
        elif model_type == "mistral":
            fixed["layer_types"] = None  # every layer slides when sliding_window is set
        try:
            fixed["rope"] = decoder.rope_from_hf(config, source)
        except ValueError as err:
            raise ValueError(f"{source}: {err}") from err
        return hf_names.config_fields(cls, config, source, exclude=(), **fixed)

    def to_hf(self, base: dict) -> dict:
        """The `config.json` to save: `base` (unknown keys kept) with our fields, the RoPE in the
        released keys and transformers 5's `rope_parameters`."""
        ours = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if f.name not in ("rope", "layer_types")}
        ours["rope_theta"] = self.rope.theta
        ours["rope_scaling"] = None if self.rope.kind == "default" else self.rope.to_hf()
        ours["rope_parameters"] = self.rope.to_hf()
        if self.model_type == "qwen3":
            ours["layer_types"] = list(self.layer_types)
            ours["use_sliding_window"] = "sliding_attention" in self.layer_types
        return {**base, **ours, "architectures": [self.ARCHITECTURES[self.model_type]]}

    def arch(self) -> decoder.DecoderArch:
        """What the shared decoder computes for this config."""
        return decoder.DecoderArch(
            vocab_size=self.vocab_size, hidden_size=self.hidden_size, intermediate_size=self.intermediate_size,
            num_heads=self.num_attention_heads, num_kv_heads=self.num_key_value_heads, head_dim=self.head_dim,
            activation=self.hidden_act, rms_eps=self.rms_norm_eps,
            windows=tuple(decoder.layer_window(t, self.sliding_window, True) for t in self.layer_types),
            ropes=(self.rope,) * self.num_hidden_layers, causal=True, qk_norm=self.model_type in _QK_NORM,
            attention_bias=self.attention_bias, mlp_bias=self.mlp_bias, init_std=self.initializer_range)

    def tensor_names(self) -> hf_names.TensorNames:
        """HF tensor name <-> param path for every weight (`LlamaModel` / `MistralModel` / `Qwen3Model`)."""
        return decoder.tensor_names(self.arch())

    def build(self, **kwargs) -> decoder.DecoderEncoder:
        """The NNX module (`dtype`, `param_dtype`, `remat`, `attention`, `rngs` keywords)."""
        return decoder.DecoderEncoder(self.arch(), **kwargs)
