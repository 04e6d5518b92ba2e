"""Flax NNX BERT-architecture transformer encoder (`model_type` bert, roberta, xlm-roberta, camembert).

One implementation covers BERT, MiniLM, bge/e5/gte-style BERTs and RoBERTa/XLM-R: the two
differ only in how position ids are formed (RoBERTa counts non-pad tokens from
`pad_token_id + 1`) and in having a single token type. Both are fields of `BertConfig`, so a
new BERT-like family is a config change, not a new module. The block is the shared
`layers.PostNormBlock`.

Inputs may be packed: `attention_mask` holds segment ids (0 padding, k > 0 the k-th text of
the row; an ordinary 0/1 mask is one text per row). Tokens attend only within their segment and
position ids restart per segment, so a packed row computes exactly what separate padded rows
would, without the padding. Compute dtype (`dtype`) is separate from the parameter dtype
(`param_dtype`): bf16 compute keeps float32 master weights.
"""
from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import jax.numpy as jnp
from flax import nnx

from siamjax.encoder import hf_names, layers
from siamjax.encoder.rows import segment_positions

# The RoBERTa-style model types count positions from pad + 1.
_ROBERTA_STYLE = ("roberta", "xlm-roberta", "camembert")


@dataclasses.dataclass(frozen=True)
class BertConfig:
    """Hyper-parameters of a BERT-family encoder, named as in Hugging Face `config.json`.

    `position_offset` is 0 for BERT; for RoBERTa/XLM-R it is `pad_token_id + 1` and position
    ids are counted over non-pad tokens, exactly as `transformers` does.
    """

    ARCHITECTURES: ClassVar[dict[str, str]] = {
        "bert": "BertModel", "roberta": "RobertaModel", "xlm-roberta": "XLMRobertaModel",
        "camembert": "CamembertModel"}
    SCORE_BIAS: ClassVar[bool] = False

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
        layers.check_heads(self.hidden_size, self.num_attention_heads)
        layers.check_activation(self.hidden_act)

    @property
    def max_tokens(self) -> int:
        """Longest input the position table allows (RoBERTa spends `position_offset` slots)."""
        return self.max_position_embeddings - self.position_offset

    @classmethod
    def from_hf(cls, config: dict, source: str) -> "BertConfig":
        """From a Hugging Face `config.json` dict (`source` names the file in errors)."""
        model_type = config["model_type"]
        if config.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError(f"{source}: position_embedding_type={config['position_embedding_type']!r} is not "
                             "supported (only 'absolute')")
        roberta = model_type in _ROBERTA_STYLE
        pad = config.get("pad_token_id", 1 if roberta else 0)
        return hf_names.config_fields(cls, config, source, model_type=model_type, pad_token_id=pad,
                                      position_offset=pad + 1 if roberta else 0)

    def to_hf(self, base: dict) -> dict:
        """The `config.json` to save: `base` (the loaded one; unknown keys kept) with our fields."""
        ours = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "position_offset"}
        return {**base, **ours, "architectures": [self.ARCHITECTURES[self.model_type]]}

    def tensor_names(self) -> hf_names.TensorNames:
        """HF tensor name <-> param path for every weight (`BertModel` layout)."""
        e = ("encoder",)
        names = [*embedding_names(e),
                 *hf_names.embedding("embeddings.token_type_embeddings", e + ("token_type_embeddings",))]
        for i in range(self.num_hidden_layers):
            hf = f"encoder.layer.{i}"
            names += layers.post_norm_names(
                e + ("layers", str(i)), f"{hf}.attention.self.query", f"{hf}.attention.self.key",
                f"{hf}.attention.self.value", f"{hf}.attention.output.dense", f"{hf}.attention.output.LayerNorm",
                f"{hf}.intermediate.dense", f"{hf}.output.dense", f"{hf}.output.LayerNorm")
        return hf_names.TensorNames(
            tuple(names), prefixes=("bert.", "roberta.", "xlm_roberta.", "model."),
            kept=("pooler.dense.weight", "pooler.dense.bias"),
            buffers=("embeddings.position_ids", "embeddings.token_type_ids"),
            task_heads=("cls.", "lm_head.", "classifier.", "qa_outputs."))

    def build(self, **kwargs) -> "BertEncoder":
        """The NNX module (`dtype`, `param_dtype`, `remat`, `attention`, `rngs` keywords)."""
        return BertEncoder(self, **kwargs)


def embedding_names(e: hf_names.Path) -> list[hf_names.Name]:
    """Word + learned position embeddings + LayerNorm, as BERT, MPNet and DistilBERT name them."""
    return [*hf_names.embedding("embeddings.word_embeddings", e + ("word_embeddings",)),
            *hf_names.embedding("embeddings.position_embeddings", e + ("position_embeddings",)),
            *hf_names.norm("embeddings.LayerNorm", e + ("embed_norm",))]


def post_norm_blocks(cfg, *, attention: str, rngs: nnx.Rngs, **kw) -> nnx.Dict:
    """The block stack of a config with BERT's field names (BERT, MPNet), keyed "0", "1", ..."""
    return nnx.Dict({str(i): layers.PostNormBlock(
        hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
        num_heads=cfg.num_attention_heads, activation=cfg.hidden_act, eps=cfg.layer_norm_eps,
        attn_dropout=cfg.hidden_dropout_prob, mlp_dropout=cfg.hidden_dropout_prob, implementation=attention,
        rngs=rngs, **kw) for i in range(cfg.num_hidden_layers)})


class BertEncoder(nnx.Module):
    """Embeddings + a stack of post-norm blocks; returns token states `[B, L, D]` in float32."""

    def __init__(self, cfg: BertConfig, *, dtype: Any = jnp.float32, param_dtype: Any = jnp.float32,
                 remat: bool = False, attention: str = "xla", rngs: nnx.Rngs):
        kw = dict(init_std=cfg.initializer_range, dtype=dtype, param_dtype=param_dtype)
        self.word_embeddings = layers.embed(rngs, cfg.vocab_size, cfg.hidden_size, **kw)
        self.position_embeddings = layers.embed(rngs, cfg.max_position_embeddings, cfg.hidden_size, **kw)
        self.token_type_embeddings = layers.embed(rngs, cfg.type_vocab_size, cfg.hidden_size, **kw)
        self.embed_norm = layers.layer_norm(rngs, cfg.hidden_size, eps=cfg.layer_norm_eps, dtype=dtype,
                                            param_dtype=param_dtype)
        self.layers = post_norm_blocks(cfg, attention=attention, rngs=rngs, **kw)
        self.config = cfg
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
        rngs = layers.layer_rngs(rng, cfg.num_hidden_layers)
        x_BxLxD = layers.dropout(self.embed_norm(x_BxLxD), cfg.hidden_dropout_prob, rngs[0])
        mask = layers.AttentionMask(attention_mask)
        blocks = [self.layers[str(i)] for i in range(cfg.num_hidden_layers)]
        x_BxLxD = layers.run_layers(blocks, x_BxLxD, rngs[1:], self.remat, lambda i: (mask,))
        return x_BxLxD.astype(jnp.float32)
