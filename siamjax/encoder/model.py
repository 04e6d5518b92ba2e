"""The whole sentence encoder as one NNX module: transformer -> pooling -> Dense -> normalise.

The module is split once into `(graphdef, params)`; training and inference use the pure
function from `make_encode_fn`, so both sides of a pair are encoded by the same parameters
with `jax.vmap(encode_fn, in_axes=(None, 0))` and gradients from both land on one pytree.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import nnx

from siamjax.encoder import lora
from siamjax.encoder.families import TransformerConfig
from siamjax.encoder.layers import KERNELS
from siamjax.encoder.pooling import DENSE_ACTIVATIONS, PoolingConfig, pool
from siamjax.encoder.rows import num_slots, unpack
from siamjax.similarity import l2_normalize


@dataclasses.dataclass(frozen=True)
class DenseConfig:
    """sentence-transformers' `Dense` module (`2_Dense/config.json`)."""

    in_features: int
    out_features: int
    bias: bool = True
    activation_function: str = "torch.nn.modules.activation.Tanh"

    def __post_init__(self):
        if self.activation_function not in DENSE_ACTIVATIONS:
            raise ValueError(f"Dense activation {self.activation_function!r} is not supported; "
                             f"valid: {sorted(DENSE_ACTIVATIONS)}")


@dataclasses.dataclass(frozen=True)
class EncoderSpec:
    """Everything that fixes the encoder's structure (not its weights).

    `transformer` is the family's config (`BertConfig`, `Gemma3Config`, `LlamaConfig`, ...; see
    `siamjax.encoder.families`). `dense` lists the Dense modules applied in order after pooling
    (`2_Dense`, `3_Dense`, ...; EmbeddingGemma has two); a single `DenseConfig` or None is accepted.
    `lora` wraps the transformer's chosen projections in LoRA adapters (`siamjax.encoder.lora`).
    """

    transformer: TransformerConfig
    pooling: PoolingConfig = PoolingConfig()
    dense: tuple[DenseConfig, ...] = ()
    normalize: bool = False
    lora: lora.LoRAConfig | None = None

    def __post_init__(self):
        dense = self.dense if self.dense is not None else ()
        dense = (dense,) if isinstance(dense, DenseConfig) else tuple(dense)
        object.__setattr__(self, "dense", dense)
        width = self.pooling.output_dim(self.transformer.hidden_size)
        for i, layer in enumerate(dense):
            if layer.in_features != width:
                source = "the pooled width = hidden_size x pooling modes" if i == 0 else "the previous Dense"
                raise ValueError(f"Dense module {i} has in_features {layer.in_features}, but its input is {width} "
                                 f"wide ({source})")
            width = layer.out_features

    @property
    def embedding_dim(self) -> int:
        """Width of the output embedding: the last Dense layer's, else the pooled width."""
        if self.dense:
            return self.dense[-1].out_features
        return self.pooling.output_dim(self.transformer.hidden_size)


class SentenceModel(nnx.Module):
    """Token ids `[B, L]` -> sentence embeddings `[B, D]` (float32).

    `attention` picks the attention implementation (`siamjax.encoder.layers`): "xla" runs
    everywhere, "cudnn" is cuDNN's fused kernel on GPU with bf16 compute, "splash" Pallas
    splash attention on TPU ("splash_interpret": the same kernel interpreted, for CPU tests).
    """

    def __init__(self, spec: EncoderSpec, *, dtype: Any = jnp.float32, param_dtype: Any = jnp.float32,
                 remat: bool = False, attention: str = "xla", rngs: nnx.Rngs):
        if attention not in KERNELS:
            raise ValueError(f"attention={attention!r}: use one of {', '.join(KERNELS)}")
        self.encoder = spec.transformer.build(dtype=dtype, param_dtype=param_dtype, remat=remat,
                                              attention=attention, rngs=rngs)
        if spec.lora is not None:
            lora.wrap(self.encoder, spec.transformer.model_type, spec.lora, rngs)
        self.dense = nnx.Dict({str(i): nnx.Linear(d.in_features, d.out_features, use_bias=d.bias,
                                                   param_dtype=param_dtype, rngs=rngs)
                               for i, d in enumerate(spec.dense)}) if spec.dense else None
        self.spec = spec

    def __call__(self, input_ids, attention_mask, token_type_ids=None, *, text_index=None, prompt_mask=None,
                 rng=None):
        h_RxLxD = self.encoder(input_ids, attention_mask, token_type_ids, rng=rng)
        dense = [(layer, self.dense[str(i)]) for i, layer in enumerate(self.spec.dense)]
        return sentence_head(h_RxLxD, attention_mask, text_index, self.spec.pooling, dense, self.spec.normalize,
                             prompt_mask=prompt_mask)


def sentence_head(h_RxLxD, attention_mask, text_index, pooling: PoolingConfig,
                  dense: list[tuple[DenseConfig, nnx.Linear]], normalize: bool, prompt_mask=None):
    """Token states `[R, L, D]` -> sentence embeddings `[B, D']`: pool (per text of a packed row
    when `text_index` is given; without the `prompt_mask` tokens if the pooling excludes the
    prompt), the Dense layers in order, then the optional L2 normalisation.
    (A Router model applies a different head per route to the same token states.)"""
    if text_index is None:  # one text per row
        x_BxD = pool(h_RxLxD, attention_mask, pooling, prompt_RxL=prompt_mask)[:, 0]
    else:
        x_BxD = unpack(pool(h_RxLxD, attention_mask, pooling, num_slots(h_RxLxD.shape[1]), prompt_RxL=prompt_mask),
                       text_index)
    for layer, linear in dense:
        x_BxD = DENSE_ACTIVATIONS[layer.activation_function](linear(x_BxD).astype(jnp.float32))
    return l2_normalize(x_BxD) if normalize else x_BxD


EncodeFn = Callable[..., jax.Array]


def make_encode_fn(graphdef: nnx.GraphDef) -> EncodeFn:
    """The pure encoder: `encode_fn(params, batch, *, rng=None) -> [B, D]` float32.

    `batch` holds int arrays `input_ids`, `attention_mask` and optionally `token_type_ids`,
    each `[R, L]`, one text per row; or a packed batch (`siamjax.encoder.rows`) whose
    `attention_mask` holds segment ids and whose `text_index [n, b]` says where each of the
    B = n * b texts sits. An optional `prompt_mask` `[R, L]` marks prompt tokens (1), which
    pooling drops when the spec's `include_prompt` is False. With `rng` given, dropout is on
    (training mode).
    """

    def encode_fn(params, batch, *, rng=None):
        model = nnx.merge(graphdef, params)
        return model(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"),
                     text_index=batch.get("text_index"), prompt_mask=batch.get("prompt_mask"), rng=rng)

    return encode_fn


def encode_sides(encode_fn: EncodeFn, params, sides: dict, rngs_S: jax.Array | None = None) -> jax.Array:
    """The S stacked sides of a batch (`[S, B, L]` inputs) -> `[S, B, D]`.

    Every side goes through `encode_fn` with the same parameters, in one vmapped call (side s
    with dropout key `rngs_S[s]`, or none). An encode function that routes sides differently
    (a Router model's, `siamjax.encoder.router`) brings its own `encode_sides` method, used here.
    """
    own = getattr(encode_fn, "encode_sides", None)
    if own is not None:
        return own(params, sides, rngs_S)
    if rngs_S is None:
        return jax.vmap(lambda side: encode_fn(params, side))(sides)
    return jax.vmap(lambda side, key: encode_fn(params, side, rng=key))(sides, rngs_S)


def init_params(spec: EncoderSpec, *, seed: int = 0, dtype: Any = jnp.float32,
                param_dtype: Any = jnp.float32, remat: bool = False, attention: str = "xla"):
    """Randomly initialised `(graphdef, params)` with params as a plain nested dict of arrays."""
    model = SentenceModel(spec, dtype=dtype, param_dtype=param_dtype, remat=remat, attention=attention,
                          rngs=nnx.Rngs(seed))
    graphdef, state = nnx.split(model)
    return graphdef, nnx.to_pure_dict(state)


def abstract_params(spec: EncoderSpec, *, dtype: Any = jnp.float32, param_dtype: Any = jnp.float32,
                    remat: bool = False, attention: str = "xla"):
    """`(graphdef, params)` where params are `jax.ShapeDtypeStruct`s: no memory, no compute."""
    model = nnx.eval_shape(lambda: SentenceModel(spec, dtype=dtype, param_dtype=param_dtype,
                                                 remat=remat, attention=attention, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(model)
    return graphdef, nnx.to_pure_dict(state)
