"""Flax NNX DistilBERT encoder (`model_type` distilbert: msmarco-distilbert-*, multi-qa-distilbert-*).

DistilBERT is BERT's post-norm block (`layers.PostNormBlock`) with its own names and three
differences, from `transformers`' `modeling_distilbert.py`:

- no token types: embeddings are word + position (0..len-1, restarting per packed text);
- every LayerNorm has epsilon 1e-12, fixed in the code rather than read from the config;
- dropout sits after the embeddings and after the feed-forward output only (none after the
  attention output projection).

Its `config.json` uses its own field names (`dim`, `n_layers`, `n_heads`, `hidden_dim`,
`activation`, `dropout`); the config keeps them and exposes the common ones as properties.
Sinusoidal position tables (`sinusoidal_pos_embds`) are stored in the checkpoint like
learned ones, so they need no special case.
"""
from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import jax.numpy as jnp
from flax import nnx

from siamjax.encoder import bert, hf_names, layers
from siamjax.encoder.rows import segment_positions

_LAYER_NORM_EPS = 1e-12  # hard-coded in transformers' DistilBERT


@dataclasses.dataclass(frozen=True)
class DistilBertConfig:
    """Hyper-parameters of a DistilBERT encoder, named as in its Hugging Face `config.json`."""

    ARCHITECTURES: ClassVar[dict[str, str]] = {"distilbert": "DistilBertModel"}
    SCORE_BIAS: ClassVar[bool] = False

    vocab_size: int = 30522
    dim: int = 768
    n_layers: int = 6
    n_heads: int = 12
    hidden_dim: int = 3072
    activation: str = "gelu"
    dropout: float = 0.1
    max_position_embeddings: int = 512
    initializer_range: float = 0.02
    pad_token_id: int = 0
    model_type: str = "distilbert"

    def __post_init__(self):
        layers.check_heads(self.dim, self.n_heads)
        layers.check_activation(self.activation, "activation")

    @property
    def hidden_size(self) -> int:
        """Width of the token states (`dim`)."""
        return self.dim

    @property
    def num_hidden_layers(self) -> int:
        """Number of blocks (`n_layers`)."""
        return self.n_layers

    @property
    def max_tokens(self) -> int:
        """Longest input the position table allows."""
        return self.max_position_embeddings

    @classmethod
    def from_hf(cls, config: dict, source: str) -> "DistilBertConfig":
        """From a Hugging Face `config.json` dict; `hidden_size`-style aliases are accepted as
        `transformers`' attribute_map does."""
        aliases = {"hidden_size": "dim", "num_hidden_layers": "n_layers", "num_attention_heads": "n_heads"}
        config = {**{aliases[k]: v for k, v in config.items() if k in aliases}, **config}
        return hf_names.config_fields(cls, config, source)

    def to_hf(self, base: dict) -> dict:
        """The `config.json` to save: `base` (the loaded one; unknown keys kept) with our fields."""
        return {**base, **dataclasses.asdict(self), "architectures": ["DistilBertModel"]}

    def tensor_names(self) -> hf_names.TensorNames:
        """HF tensor name <-> param path for every weight (`DistilBertModel` layout)."""
        e = ("encoder",)
        names = bert.embedding_names(e)
        for i in range(self.n_layers):
            hf = f"transformer.layer.{i}"
            names += layers.post_norm_names(
                e + ("layers", str(i)), f"{hf}.attention.q_lin", f"{hf}.attention.k_lin", f"{hf}.attention.v_lin",
                f"{hf}.attention.out_lin", f"{hf}.sa_layer_norm", f"{hf}.ffn.lin1", f"{hf}.ffn.lin2",
                f"{hf}.output_layer_norm")
        return hf_names.TensorNames(
            tuple(names), prefixes=("distilbert.",), buffers=("embeddings.position_ids",),
            task_heads=("vocab_transform.", "vocab_layer_norm.", "vocab_projector.", "pre_classifier.",
                        "classifier.", "qa_outputs."))

    def build(self, **kwargs) -> "DistilBertEncoder":
        """The NNX module (`dtype`, `param_dtype`, `remat`, `attention`, `rngs` keywords)."""
        return DistilBertEncoder(self, **kwargs)


class DistilBertEncoder(nnx.Module):
    """Embeddings + post-norm blocks; returns token states `[B, L, D]` in float32."""

    def __init__(self, cfg: DistilBertConfig, *, dtype: Any = jnp.float32, param_dtype: Any = jnp.float32,
                 remat: bool = False, attention: str = "xla", rngs: nnx.Rngs):
        kw = dict(init_std=cfg.initializer_range, dtype=dtype, param_dtype=param_dtype)
        self.word_embeddings = layers.embed(rngs, cfg.vocab_size, cfg.dim, **kw)
        self.position_embeddings = layers.embed(rngs, cfg.max_position_embeddings, cfg.dim, **kw)
        self.embed_norm = layers.layer_norm(rngs, cfg.dim, eps=_LAYER_NORM_EPS, dtype=dtype, param_dtype=param_dtype)
        self.layers = nnx.Dict({str(i): layers.PostNormBlock(
            hidden_size=cfg.dim, intermediate_size=cfg.hidden_dim, num_heads=cfg.n_heads,
            activation=cfg.activation, eps=_LAYER_NORM_EPS, attn_dropout=0.0, mlp_dropout=cfg.dropout,
            implementation=attention, rngs=rngs, **kw) for i in range(cfg.n_layers)})
        self.config = cfg
        self.remat = remat

    def __call__(self, input_ids, attention_mask, token_type_ids=None, *, rng=None):
        del token_type_ids  # DistilBERT has no token types
        cfg = self.config
        x_BxLxD = self.word_embeddings(input_ids) + self.position_embeddings(segment_positions(attention_mask))
        rngs = layers.layer_rngs(rng, cfg.n_layers)
        x_BxLxD = layers.dropout(self.embed_norm(x_BxLxD), cfg.dropout, rngs[0])
        mask = layers.AttentionMask(attention_mask)
        blocks = [self.layers[str(i)] for i in range(cfg.n_layers)]
        x_BxLxD = layers.run_layers(blocks, x_BxLxD, rngs[1:], self.remat, lambda i: (mask,))
        return x_BxLxD.astype(jnp.float32)
