"""The decoder-LLM transformer every LLM-based embedder shares (Gemma 3, Qwen3, Llama, Mistral),
its HF tensor names and the `config.json` RoPE fields.

Why one module: the LLM families compute the same pre-norm block (RMSNorm, rotary grouped-query
attention, gated MLP) and differ in a handful of switches, which each family's config turns into
a `DecoderArch`:

- RMSNorm scale: `x * w` (Llama, Qwen3, Mistral) or `x * (1 + w)` in float32 (Gemma);
- q/k RMSNorm per head (Qwen3, Gemma 3); Gemma's "sandwich" norms after attention and MLP;
- attention scale `1/sqrt(head_dim)` or Gemma's `query_pre_attn_scalar ** -0.5`; `head_dim` is
  its own field, not hidden / heads; fewer key/value heads than query heads (GQA/MQA);
- embeddings times sqrt(hidden) rounded to the parameter dtype (Gemma);
- per layer: a RoPE (base and scaling; Gemma's global and local layers differ) and an optional
  sliding window;
- causal attention (LLMs as trained) or bidirectional (EmbeddingGemma's
  `use_bidirectional_attention`).

Masks are the packing segment ids (`layers.AttentionMask`: a text never sees another text of
its row, nor padding), causal or not (only earlier tokens of its own text, since a text's tokens
are contiguous), and the window, which `layers.attend`
applies as (left, right) = (window - 1, 0) causal or (w, w) bidirectional. RoPE positions restart
per text (`rows.segment_positions`), so left padding, right padding and packing all compute what
one unpadded text computes.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from siamjax.encoder import hf_names, layers, rotary
from siamjax.encoder.rows import segment_positions

LAYER_TYPES = ("full_attention", "sliding_attention")


@dataclasses.dataclass(frozen=True)
class DecoderArch:
    """What the shared decoder computes; each family config derives it from its `config.json`."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    activation: str
    rms_eps: float
    windows: tuple[tuple[int, int] | None, ...]  # per layer: (left, right) keys seen, None = all
    ropes: tuple[rotary.Rope, ...]               # per layer
    causal: bool = True
    norm_offset: bool = False      # RMSNorm scales by (1 + w) in float32 (Gemma)
    qk_norm: bool = False          # RMSNorm over each query/key head (Qwen3, Gemma 3)
    sandwich_norm: bool = False    # extra norms on the attention and MLP outputs (Gemma)
    attention_bias: bool = False
    mlp_bias: bool = False
    query_scale: float | None = None  # None: 1/sqrt(head_dim)
    embed_scale: bool = False      # embeddings times sqrt(hidden_size) (Gemma)
    init_std: float = 0.02

    def __post_init__(self):
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_attention_heads ({self.num_heads}) must be a multiple of "
                             f"num_key_value_heads ({self.num_kv_heads})")
        layers.check_activation(self.activation)
        if len(self.windows) != len(self.ropes):
            raise ValueError("one window and one RoPE per layer")

    @property
    def num_layers(self) -> int:
        """Depth of the stack."""
        return len(self.ropes)


def layer_window(layer_type: str, sliding_window: int | None, causal: bool) -> tuple[int, int] | None:
    """The (left, right) key band of a layer, as transformers' masks: causal sliding layers see
    the `sliding_window` - 1 previous keys and the query; bidirectional ones (EmbeddingGemma)
    |key - query| <= sliding_window // 2."""
    if layer_type == "full_attention":
        return None
    if not sliding_window:
        raise ValueError("layer_types has sliding_attention layers but sliding_window is not set")
    return (sliding_window - 1, 0) if causal else (sliding_window // 2, sliding_window // 2)


def check_layer_types(layer_types, num_layers: int) -> tuple[str, ...]:
    """`layer_types` as a tuple of `num_layers` known entries (errors list the allowed ones)."""
    types = tuple(layer_types)
    if len(types) != num_layers or set(types) - set(LAYER_TYPES):
        raise ValueError(f"layer_types must list {num_layers} entries from {LAYER_TYPES}, got {list(types)}")
    return types


def rope_from_hf(config: dict, source: str, *, theta_key: str = "rope_theta", default_theta: float = 10000.0,
                 layer_type: str | None = None) -> rotary.Rope:
    """A layer type's RoPE from either `config.json` style: transformers 5's `rope_parameters`
    (one dict, or one per layer type) or the released `rope_theta` (`theta_key`) + `rope_scaling`."""
    params = config.get("rope_parameters")
    if isinstance(params, dict) and layer_type is not None and layer_type in params:
        params = params[layer_type]
    if isinstance(params, dict) and "rope_theta" in params:
        return rotary.Rope.from_hf(params["rope_theta"], params, source)
    scaling = config.get("rope_scaling")
    if layer_type == "sliding_attention":
        scaling = None  # released Gemma 3 configs scale only the global layers
    return rotary.Rope.from_hf(config.get(theta_key) or default_theta, scaling, source)


class RMSNorm(nnx.Module):
    """Root-mean-square norm over the last axis, statistics in float32.

    Llama/Qwen3/Mistral: `w * x_normed` with x_normed cast back to the input dtype first;
    Gemma (`offset`): `x_normed * (1 + w)` all in float32, then cast (its weights start at 0).
    """

    def __init__(self, dim: int, *, eps: float, offset: bool, dtype: Any, param_dtype: Any):
        self.scale = nnx.Param(jnp.full((dim,), 0.0 if offset else 1.0, param_dtype))
        self.eps, self.offset, self.dtype = eps, offset, dtype

    def __call__(self, x):
        x32 = x.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        if self.offset:
            return (normed * (1.0 + self.scale[...].astype(jnp.float32))).astype(self.dtype)
        return self.scale[...].astype(self.dtype) * normed.astype(self.dtype)


class DecoderLayer(nnx.Module):
    """x += [norm](o(attn(rope(q), rope(k), v))) of norm(x); x += [norm](down(act(gate) * up)) of norm(x)."""

    def __init__(self, arch: DecoderArch, index: int, *, dtype, param_dtype, attention: str, rngs: nnx.Rngs):
        d, f, h = arch.hidden_size, arch.intermediate_size, arch.head_dim
        dense = lambda i, o, bias: layers.linear(rngs, i, o, use_bias=bias, init_std=arch.init_std, dtype=dtype,
                                                 param_dtype=param_dtype)
        norm = lambda dim: RMSNorm(dim, eps=arch.rms_eps, offset=arch.norm_offset, dtype=dtype,
                                   param_dtype=param_dtype)
        self.attn_norm = norm(d)
        self.q_proj = dense(d, arch.num_heads * h, arch.attention_bias)
        self.k_proj = dense(d, arch.num_kv_heads * h, arch.attention_bias)
        self.v_proj = dense(d, arch.num_kv_heads * h, arch.attention_bias)
        self.o_proj = dense(arch.num_heads * h, d, arch.attention_bias)
        self.q_norm = norm(h) if arch.qk_norm else None
        self.k_norm = norm(h) if arch.qk_norm else None
        self.attn_post_norm = norm(d) if arch.sandwich_norm else None
        self.mlp_norm = norm(d)
        self.gate_proj, self.up_proj = dense(d, f, arch.mlp_bias), dense(d, f, arch.mlp_bias)
        self.down_proj = dense(f, d, arch.mlp_bias)
        self.mlp_post_norm = norm(d) if arch.sandwich_norm else None
        self.window = arch.windows[index]
        self.heads = (arch.num_heads, arch.num_kv_heads, h)
        self.query_scale = arch.query_scale
        self.act_name = arch.activation
        self.implementation = attention

    def __call__(self, x_BxLxD, mask: layers.AttentionMask, cos_BxLxH, sin_BxLxH, *, rng=None):
        # LLM embedders train without hidden-state dropout; `rng` feeds only LoRA's dropout
        r_q, r_k, r_v, r_o, r_gate, r_up, r_down = layers.projection_rngs(rng, 7)
        b, l, _ = x_BxLxD.shape
        n, k, h = self.heads
        h_BxLxD = self.attn_norm(x_BxLxD)
        q_BxLxNxH = layers.project(self.q_proj, h_BxLxD, r_q).reshape(b, l, n, h)
        k_BxLxKxH = layers.project(self.k_proj, h_BxLxD, r_k).reshape(b, l, k, h)
        v_BxLxKxH = layers.project(self.v_proj, h_BxLxD, r_v).reshape(b, l, k, h)
        if self.q_norm is not None:
            q_BxLxNxH, k_BxLxKxH = self.q_norm(q_BxLxNxH), self.k_norm(k_BxLxKxH)
        q_BxLxNxH = rotary.apply(q_BxLxNxH, cos_BxLxH, sin_BxLxH)
        k_BxLxKxH = rotary.apply(k_BxLxKxH, cos_BxLxH, sin_BxLxH)
        a_BxLxNxH = layers.attend(q_BxLxNxH, k_BxLxKxH, v_BxLxKxH, mask, window=self.window,
                                  scale=self.query_scale, implementation=self.implementation)
        a_BxLxD = layers.project(self.o_proj, a_BxLxNxH.reshape(b, l, n * h), r_o)
        if self.attn_post_norm is not None:
            a_BxLxD = self.attn_post_norm(a_BxLxD)
        x_BxLxD = x_BxLxD + a_BxLxD.astype(jnp.float32)
        h_BxLxD = self.mlp_norm(x_BxLxD)
        m_BxLxF = (layers.ACTIVATIONS[self.act_name](layers.project(self.gate_proj, h_BxLxD, r_gate))
                   * layers.project(self.up_proj, h_BxLxD, r_up))
        m_BxLxD = layers.project(self.down_proj, m_BxLxF, r_down)
        if self.mlp_post_norm is not None:
            m_BxLxD = self.mlp_post_norm(m_BxLxD)
        return x_BxLxD + m_BxLxD.astype(jnp.float32)


class DecoderEncoder(nnx.Module):
    """Token embeddings, the decoder blocks, a final RMSNorm; token states `[B, L, D]` in float32.

    `attention_mask` holds segment ids (0 padding; a 0/1 mask is one text per row, left- or
    right-padded alike). With bf16 compute the matmuls and attention run in bf16 but the residual
    stream is kept in float32 (norms read it in float32 anyway): an embedder pools one token or an
    average, with no logits to hide rounding, and a bf16 residual stream alone cost up to 1e-3 of
    cosine on a 3-layer model; the float32 adds cost elementwise work only."""

    def __init__(self, arch: DecoderArch, *, dtype: Any = jnp.float32, param_dtype: Any = jnp.float32,
                 remat: bool = False, attention: str = "xla", rngs: nnx.Rngs):
        self.embed_tokens = layers.embed(rngs, arch.vocab_size, arch.hidden_size, init_std=arch.init_std,
                                         dtype=dtype, param_dtype=param_dtype)
        self.layers = nnx.Dict({str(i): DecoderLayer(arch, i, dtype=dtype, param_dtype=param_dtype,
                                                     attention=attention, rngs=rngs)
                                for i in range(arch.num_layers)})
        self.norm = RMSNorm(arch.hidden_size, eps=arch.rms_eps, offset=arch.norm_offset, dtype=dtype,
                            param_dtype=param_dtype)
        # Gemma multiplies by sqrt(hidden) rounded to the embedding (parameter) dtype.
        self.embed_scale = float(np.asarray(math.sqrt(arch.hidden_size), param_dtype)) if arch.embed_scale else None
        self.arch = arch
        self.remat = remat

    def __call__(self, input_ids, attention_mask, token_type_ids=None, *, rng=None):
        del token_type_ids  # decoders have no token types
        arch = self.arch
        x_BxLxD = self.embed_tokens(input_ids)
        if self.embed_scale is not None:
            x_BxLxD = x_BxLxD * jnp.asarray(self.embed_scale, x_BxLxD.dtype)
        x_BxLxD = x_BxLxD.astype(jnp.float32)  # the residual stream stays float32 (see the class docstring)
        mask = layers.AttentionMask(attention_mask, causal=arch.causal)
        positions_BxL = segment_positions(attention_mask)
        rope = {r: rotary.cos_sin(positions_BxL, arch.head_dim, r) for r in set(arch.ropes)}
        blocks = [self.layers[str(i)] for i in range(arch.num_layers)]
        x_BxLxD = layers.run_layers(blocks, x_BxLxD, layers.layer_rngs(rng, arch.num_layers)[1:], self.remat,
                                    lambda i: (mask, *rope[arch.ropes[i]]))
        return self.norm(x_BxLxD).astype(jnp.float32)


def tensor_names(arch: DecoderArch) -> hf_names.TensorNames:
    """HF names of a `*Model` decoder checkpoint (`*ForCausalLM` ones add `model.`; their
    `lm_head` is dropped, it is not part of an embedder)."""
    e = ("encoder",)
    names = [*hf_names.embedding("embed_tokens", e + ("embed_tokens",))]
    for i in range(arch.num_layers):
        hf, ours = f"layers.{i}", e + ("layers", str(i))
        for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
            names += hf_names.linear(f"{hf}.self_attn.{proj}", ours + (proj,), arch.attention_bias)
        if arch.qk_norm:
            names += [*hf_names.norm(f"{hf}.self_attn.q_norm", ours + ("q_norm",), False),
                      *hf_names.norm(f"{hf}.self_attn.k_norm", ours + ("k_norm",), False)]
        names += hf_names.norm(f"{hf}.input_layernorm", ours + ("attn_norm",), False)
        if arch.sandwich_norm:
            names += [*hf_names.norm(f"{hf}.post_attention_layernorm", ours + ("attn_post_norm",), False),
                      *hf_names.norm(f"{hf}.pre_feedforward_layernorm", ours + ("mlp_norm",), False),
                      *hf_names.norm(f"{hf}.post_feedforward_layernorm", ours + ("mlp_post_norm",), False)]
        else:
            names += hf_names.norm(f"{hf}.post_attention_layernorm", ours + ("mlp_norm",), False)
        for proj in ("gate_proj", "up_proj", "down_proj"):
            names += hf_names.linear(f"{hf}.mlp.{proj}", ours + (proj,), arch.mlp_bias)
    names += hf_names.norm("norm", e + ("norm",), False)
    return hf_names.TensorNames(tuple(names), prefixes=("model.", "language_model.model."), buffers=("inv_freq",),
                                task_heads=("lm_head.", "score.", "classifier."))
