"""Flax NNX MPNet encoder (`model_type` mpnet: all-mpnet-base-v2 and its fine-tunes).

MPNet is BERT's post-norm block (`layers.PostNormBlock`) with three differences, each taken
from `transformers`' `modeling_mpnet.py`:

- no token types: the embeddings are word + absolute position, then LayerNorm;
- position ids RoBERTa-style from a padding index that `MPNetEmbeddings` hard-codes to 1
  (not `pad_token_id`): real tokens get 2, 3, ..., padding gets 1. We count per segment, so a
  packed text gets the ids it would get alone in a row;
- a relative-position bias added to every layer's attention scores: one `[buckets, heads]`
  table shared by all layers, indexed by T5-style log buckets of (key - query) distance.
  `MPNetEncoder.forward` calls its bucket function with the default 32 buckets and maximum
  distance 128 whatever `relative_attention_num_buckets` says, so we do too. Distances are
  shift-invariant, so packed texts get the same bias as padded ones.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

import jax.numpy as jnp
import numpy as np
from flax import nnx

from siamjax.encoder import bert, hf_names, layers
from siamjax.encoder.rows import segment_positions

# MPNetEmbeddings.padding_idx (hard-coded in transformers) and the bucket arguments
# MPNetEncoder.compute_position_bias uses (its defaults, never the config's).
_PADDING_IDX = 1
_NUM_BUCKETS = 32
_MAX_DISTANCE = 128


@dataclasses.dataclass(frozen=True)
class MPNetConfig:
    """Hyper-parameters of an MPNet encoder, named as in Hugging Face `config.json`."""

    ARCHITECTURES: ClassVar[dict[str, str]] = {"mpnet": "MPNetModel"}
    SCORE_BIAS: ClassVar[bool] = True  # the relative-position bias (`attend`'s bias_1xNxLxL)

    vocab_size: int = 30527
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    max_position_embeddings: int = 514
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-5
    relative_attention_num_buckets: int = 32
    pad_token_id: int = 1
    model_type: str = "mpnet"

    def __post_init__(self):
        layers.check_heads(self.hidden_size, self.num_attention_heads)
        layers.check_activation(self.hidden_act)
        if self.relative_attention_num_buckets < _NUM_BUCKETS:
            raise ValueError(f"relative_attention_num_buckets={self.relative_attention_num_buckets}: transformers' "
                             f"MPNet always indexes {_NUM_BUCKETS} buckets, so the table needs at least that many")

    @property
    def max_tokens(self) -> int:
        """Longest input: positions start at padding_idx + 1 = 2."""
        return self.max_position_embeddings - _PADDING_IDX - 1

    @classmethod
    def from_hf(cls, config: dict, source: str) -> "MPNetConfig":
        """From a Hugging Face `config.json` dict (`source` names the file in errors)."""
        return hf_names.config_fields(cls, config, source)

    def to_hf(self, base: dict) -> dict:
        """The `config.json` to save: `base` (the loaded one; unknown keys kept) with our fields."""
        return {**base, **dataclasses.asdict(self), "architectures": ["MPNetModel"]}

    def tensor_names(self) -> hf_names.TensorNames:
        """HF tensor name <-> param path for every weight (`MPNetModel` layout)."""
        e = ("encoder",)
        names = [*bert.embedding_names(e),
                 *hf_names.embedding("encoder.relative_attention_bias", e + ("relative_attention_bias",))]
        for i in range(self.num_hidden_layers):
            hf = f"encoder.layer.{i}"
            names += layers.post_norm_names(
                e + ("layers", str(i)), f"{hf}.attention.attn.q", f"{hf}.attention.attn.k", f"{hf}.attention.attn.v",
                f"{hf}.attention.attn.o", f"{hf}.attention.LayerNorm", f"{hf}.intermediate.dense",
                f"{hf}.output.dense", f"{hf}.output.LayerNorm")
        return hf_names.TensorNames(tuple(names), prefixes=("mpnet.",),
                                    kept=("pooler.dense.weight", "pooler.dense.bias"),
                                    buffers=("embeddings.position_ids",), task_heads=("lm_head.", "classifier."))

    def build(self, **kwargs) -> "MPNetEncoder":
        """The NNX module (`dtype`, `param_dtype`, `remat`, `attention`, `rngs` keywords)."""
        return MPNetEncoder(self, **kwargs)


def relative_position_buckets(length: int) -> np.ndarray:
    """`[L, L]` bucket of (key - query) for every query/key pair, as transformers computes it.

    The arithmetic mirrors `MPNetEncoder.relative_position_bucket` in float32 (log, divide,
    truncate), so the integer buckets are the same; `tests/test_families.py` checks every
    distance against the PyTorch function. Computed on the host: it depends only on L.
    """
    index = np.arange(length)
    n = index[:, None] - index[None, :]  # query - key = -(key - query)
    half = _NUM_BUCKETS // 2
    ret = (n < 0).astype(np.int64) * half
    n = np.abs(n)
    max_exact = half // 2
    scaled = np.log(np.maximum(n, 1).astype(np.float32) / np.float32(max_exact)) / np.float32(
        math.log(_MAX_DISTANCE / max_exact)) * np.float32(half - max_exact)
    large = np.minimum(max_exact + scaled.astype(np.int64), half - 1)
    return ret + np.where(n < max_exact, n, large)


class MPNetEncoder(nnx.Module):
    """Embeddings, shared relative-position bias, post-norm blocks; token states `[B, L, D]` float32."""

    def __init__(self, cfg: MPNetConfig, *, dtype: Any = jnp.float32, param_dtype: Any = jnp.float32,
                 remat: bool = False, attention: str = "xla", rngs: nnx.Rngs):
        kw = dict(init_std=cfg.initializer_range, dtype=dtype, param_dtype=param_dtype)
        self.word_embeddings = layers.embed(rngs, cfg.vocab_size, cfg.hidden_size, **kw)
        self.position_embeddings = layers.embed(rngs, cfg.max_position_embeddings, cfg.hidden_size, **kw)
        self.embed_norm = layers.layer_norm(rngs, cfg.hidden_size, eps=cfg.layer_norm_eps, dtype=dtype,
                                            param_dtype=param_dtype)
        # The bias is added to float32 scores, so its table is used at param precision.
        self.relative_attention_bias = layers.embed(rngs, cfg.relative_attention_num_buckets,
                                                    cfg.num_attention_heads, init_std=cfg.initializer_range,
                                                    dtype=param_dtype, param_dtype=param_dtype)
        self.layers = bert.post_norm_blocks(cfg, attention=attention, rngs=rngs, **kw)
        self.config = cfg
        self.remat = remat

    def position_ids(self, segments_BxL):
        """Position within the text + 2 for tokens, 1 for padding (MPNet's padding_idx rule)."""
        return jnp.where(segments_BxL > 0, segment_positions(segments_BxL) + _PADDING_IDX + 1, _PADDING_IDX)

    def position_bias(self, length: int):
        """`[1, N, L, L]` relative-position bias, the same for every layer and row."""
        bias_LxLxN = self.relative_attention_bias(jnp.asarray(relative_position_buckets(length)))
        return jnp.transpose(bias_LxLxN, (2, 0, 1))[None]

    def __call__(self, input_ids, attention_mask, token_type_ids=None, *, rng=None):
        del token_type_ids  # MPNet has no token types
        cfg = self.config
        x_BxLxD = self.word_embeddings(input_ids) + self.position_embeddings(self.position_ids(attention_mask))
        rngs = layers.layer_rngs(rng, cfg.num_hidden_layers)
        x_BxLxD = layers.dropout(self.embed_norm(x_BxLxD), cfg.hidden_dropout_prob, rngs[0])
        mask = layers.AttentionMask(attention_mask)
        bias_1xNxLxL = self.position_bias(input_ids.shape[1])
        blocks = [self.layers[str(i)] for i in range(cfg.num_hidden_layers)]
        x_BxLxD = layers.run_layers(blocks, x_BxLxD, rngs[1:], self.remat, lambda i: (mask, bias_1xNxLxL))
        return x_BxLxD.astype(jnp.float32)
