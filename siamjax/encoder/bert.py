"""Flax NNX BERT-architecture transformer encoder.

One implementation covers BERT, MiniLM, bge/e5/gte-style BERTs and RoBERTa/XLM-R: the two
families differ only in how position ids are formed (RoBERTa counts non-pad tokens from
`pad_token_id + 1`) and in having a single token type. Both are flags on `BertConfig`, so a
new BERT-like family is a config change, not a new module.

Inputs may be packed: `attention_mask` holds segment ids (0 padding, k > 0 the k-th text of
the row; an ordinary 0/1 mask is one text per row). Tokens attend only within their segment and
position ids restart per segment, so a packed row computes exactly what separate padded rows
would, without the padding. Attention goes through `jax.nn.dot_product_attention` with that
block-diagonal mask. With no
`implementation` argument jax 0.10 lowers it to plain XLA on every backend (the full score
matrix is materialised); a cuDNN flash-attention path is future work for the GPU MFU target. Compute dtype (`dtype`) is separate from
the parameter dtype (`param_dtype`): bf16 compute keeps float32 master weights, and LayerNorm
statistics are taken in float32 (flax's LayerNorm reduces in float32 whatever the input dtype).
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from siamjax.encoder.rows import segment_positions

_ACTIVATIONS = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_fast": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
}


@dataclasses.dataclass(frozen=True)
class BertConfig:
    """Hyper-parameters of a BERT-family encoder, named as in Hugging Face `config.json`.

    `position_offset` is 0 for BERT; for RoBERTa/XLM-R it is `pad_token_id + 1` and position
    ids are counted over non-pad tokens, exactly as `transformers` does.
    """

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0
    hidden_dropout_prob: float = 0.1
    initializer_range: float = 0.02
    model_type: str = "bert"
    position_offset: int = 0

    def __post_init__(self):
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be divisible by "
                f"num_attention_heads ({self.num_attention_heads})"
            )
        if self.hidden_act not in _ACTIVATIONS:
            raise ValueError(
                f"hidden_act {self.hidden_act!r} is not supported; choose one of {sorted(_ACTIVATIONS)}"
            )

    @property
    def max_tokens(self) -> int:
        """Longest input the position table allows (RoBERTa spends `position_offset` slots)."""
        return self.max_position_embeddings - self.position_offset


def _dropout(x, rate: float, rng):
    """Inverted dropout; identity when `rng` is None (inference) or the rate is 0."""
    if rng is None or rate == 0.0:
        return x
    keep = jax.random.bernoulli(rng, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), 0).astype(x.dtype)


class BertLayer(nnx.Module):
    """Post-LN transformer block: self-attention and a GELU MLP, each with residual + LayerNorm."""

    def __init__(self, cfg: BertConfig, *, dtype, param_dtype, rngs: nnx.Rngs):
        d, f = cfg.hidden_size, cfg.intermediate_size
        init = nnx.initializers.normal(cfg.initializer_range)
        dense = lambda i, o: nnx.Linear(i, o, dtype=dtype, param_dtype=param_dtype, kernel_init=init, rngs=rngs)
        self.query, self.key, self.value, self.attn_out = dense(d, d), dense(d, d), dense(d, d), dense(d, d)
        norm = lambda: nnx.LayerNorm(d, epsilon=cfg.layer_norm_eps, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.attn_norm = norm()
        self.intermediate, self.output = dense(d, f), dense(f, d)
        self.out_norm = norm()
        self.num_heads = cfg.num_attention_heads
        self.dropout_rate = cfg.hidden_dropout_prob
        self.act_name = cfg.hidden_act

    def __call__(self, x_BxLxD, mask_Bx1xLxL, rng=None):
        b, l, d = x_BxLxD.shape
        split = lambda t: t.reshape(b, l, self.num_heads, d // self.num_heads)
        q_BxLxNxH = split(self.query(x_BxLxD))
        k_BxLxNxH = split(self.key(x_BxLxD))
        v_BxLxNxH = split(self.value(x_BxLxD))
        # Attention-prob dropout is not applied: fused attention kernels have no dropout, and
        # hidden-state dropout below is what regularises fine-tuning in practice.
        a_BxLxNxH = jax.nn.dot_product_attention(q_BxLxNxH, k_BxLxNxH, v_BxLxNxH, mask=mask_Bx1xLxL)
        rng_attn, rng_mlp = jax.random.split(rng) if rng is not None else (None, None)
        a_BxLxD = _dropout(self.attn_out(a_BxLxNxH.reshape(b, l, d)), self.dropout_rate, rng_attn)
        x_BxLxD = self.attn_norm(x_BxLxD + a_BxLxD)
        h_BxLxF = _ACTIVATIONS[self.act_name](self.intermediate(x_BxLxD))
        h_BxLxD = _dropout(self.output(h_BxLxF), self.dropout_rate, rng_mlp)
        return self.out_norm(x_BxLxD + h_BxLxD)


class BertEncoder(nnx.Module):
    """Embeddings + a stack of `BertLayer`s; returns token states `[B, L, D]` in float32."""

    def __init__(self, cfg: BertConfig, *, dtype: Any = jnp.float32, param_dtype: Any = jnp.float32,
                 remat: bool = False, rngs: nnx.Rngs):
        init = nnx.initializers.normal(cfg.initializer_range)
        embed = lambda n: nnx.Embed(n, cfg.hidden_size, dtype=dtype, param_dtype=param_dtype,
                                    embedding_init=init, rngs=rngs)
        self.word_embeddings = embed(cfg.vocab_size)
        self.position_embeddings = embed(cfg.max_position_embeddings)
        self.token_type_embeddings = embed(cfg.type_vocab_size)
        self.embed_norm = nnx.LayerNorm(cfg.hidden_size, epsilon=cfg.layer_norm_eps, dtype=dtype,
                                        param_dtype=param_dtype, rngs=rngs)
        self.layers = nnx.Dict({str(i): BertLayer(cfg, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
                                for i in range(cfg.num_hidden_layers)})
        self.config = cfg
        self.dtype = dtype
        self.remat = remat

    def position_ids(self, segments_BxL):
        """BERT: position within the text, 0..len-1. RoBERTa: that + pad_token_id + 1, pad tokens pad_token_id.

        Counting within each segment is what `transformers` does for one text per row, and
        makes packed rows restart their positions per text.
        """
        cfg = self.config
        pos_BxL = segment_positions(segments_BxL)
        if cfg.position_offset == 0:
            return pos_BxL
        return jnp.where(segments_BxL > 0, pos_BxL + cfg.pad_token_id + 1, cfg.pad_token_id)

    def __call__(self, input_ids, attention_mask, token_type_ids=None, *, rng=None):
        cfg = self.config
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(input_ids)
        x_BxLxD = (self.word_embeddings(input_ids)
                   + self.position_embeddings(self.position_ids(attention_mask))
                   + self.token_type_embeddings(token_type_ids))
        rngs = [None] * (cfg.num_hidden_layers + 1) if rng is None else list(
            jax.random.split(rng, cfg.num_hidden_layers + 1))
        x_BxLxD = _dropout(self.embed_norm(x_BxLxD), cfg.hidden_dropout_prob, rngs[0])
        segments_BxL = attention_mask.astype(jnp.int32)
        mask_Bx1xLxL = (segments_BxL[:, None, :, None] == segments_BxL[:, None, None, :]) & (
            segments_BxL[:, None, None, :] > 0)
        forward = nnx.remat(_layer_forward) if self.remat else _layer_forward
        for i in range(cfg.num_hidden_layers):
            x_BxLxD = forward(self.layers[str(i)], x_BxLxD, mask_Bx1xLxL, rngs[i + 1])
        return x_BxLxD.astype(jnp.float32)


def _layer_forward(layer: BertLayer, x_BxLxD, mask_Bx1xLxL, rng):
    """One block; a free function so `nnx.remat` can wrap it when rematerialising."""
    return layer(x_BxLxD, mask_Bx1xLxL, rng)
