"""Building blocks every encoder family shares: activations, dropout, the segment mask,
attention, norms and the post-norm (BERT-style) transformer block.

Why one module: BERT, MPNet and DistilBERT differ only in their embeddings, position rule and
tensor names; their blocks compute the same thing (attention, residual + LayerNorm, MLP,
residual + LayerNorm), MPNet adding a relative-position bias to the scores. ModernBERT and the
decoder families reuse the mask, attention, norms and dropout here, with their own pre-norm
blocks.

Attention masks are described, not materialised: `AttentionMask` holds the segment ids (0
padding, k > 0 the k-th text of a packed row) and whether the model is causal. A token attends
only within its own text, so packed rows compute exactly what separate padded rows would;
causal decoders also see only their text's earlier tokens (a text's tokens are contiguous).
`attend` is the one place that turns the description into what a kernel takes:

- `"xla"` (default, every backend): `jax.nn.dot_product_attention`, XLA's fused softmax(QK^T)V
  with the full `[L, L]` score matrix per head and a boolean `[B, 1, L, L]` mask. Sliding
  windows use `local_window_size` ((left, right) keys around the query).
- `"cudnn"` (GPU only, bf16/fp16 compute): cuDNN's fused attention kernel. The segment mask is
  turned into an additive bias by jax; cuDNN's own sliding window only covers the causal
  (left) side, so a bidirectional window is folded into the mask instead.
- `"splash"` (TPU only): Pallas splash attention (`siamjax.encoder.splash`) on the segment ids
  and a static causal/window mask, never storing the scores. It has no score-bias input, so
  MPNet's relative-position bias cannot use it. `"splash_interpret"` is the same kernel in
  Pallas interpret mode, on any backend: for correctness tests on CPU, not a config value.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from siamjax.encoder import hf_names
from siamjax.encoder.splash import attend_splash
from siamjax.parallel import constrain_rows

ACTIVATIONS: dict[str, Callable] = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_fast": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
}
ATTENTION_IMPLEMENTATIONS = ("xla", "cudnn", "splash")
ATTENTION_CHOICES = ("auto",) + ATTENTION_IMPLEMENTATIONS
# The splash kernel in Pallas interpret mode (any backend, slow): what CPU tests run. Models and
# `SentenceEncoder` accept it; the config does not (`ATTENTION_CHOICES`), so no run picks it.
SPLASH_INTERPRET = "splash_interpret"
KERNELS = ATTENTION_IMPLEMENTATIONS + (SPLASH_INTERPRET,)


def select_attention(configured: str, platform: str, dtype: Any, *, score_bias: bool = False) -> str:
    """The attention kernel to run: `configured` itself, or for "auto" the best one `platform`
    ("gpu", "tpu", "cpu", i.e. `jax.default_backend()`) has for `dtype` compute and a model
    that adds a bias to the scores (`score_bias`: MPNet) or not.

    "auto" picks a kernel that never stores the `[L, L]` scores where one runs: cuDNN's fused
    (flash) kernel on a GPU with half-precision compute, splash attention on a TPU (any length:
    it pads to its 128-token blocks; not with a score bias, which it has no input for); XLA's
    attention everywhere else.
    """
    if configured not in ATTENTION_CHOICES + (SPLASH_INTERPRET,):
        raise ValueError(f"attention={configured!r}: use one of {', '.join(ATTENTION_CHOICES)}")
    if configured != "auto":
        return configured
    half = jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16)
    if platform == "gpu" and half:
        return "cudnn"
    return "splash" if platform == "tpu" and not score_bias else "xla"


def check_activation(name: str, field: str = "hidden_act") -> None:
    """A clear error for an activation no family implements (checked when a config is built)."""
    if name not in ACTIVATIONS:
        raise ValueError(f"{field}={name!r} is not supported; choose one of {sorted(ACTIVATIONS)}")


def check_heads(hidden_size: int, num_heads: int) -> None:
    """Every family splits the hidden size evenly over the attention heads."""
    if hidden_size % num_heads:
        raise ValueError(f"hidden_size ({hidden_size}) must be divisible by num_attention_heads ({num_heads})")


def dropout(x, rate: float, rng):
    """Inverted dropout; identity when `rng` is None (inference) or the rate is 0."""
    if rng is None or rate == 0.0:
        return x
    keep = jax.random.bernoulli(rng, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), 0).astype(x.dtype)


def layer_rngs(rng, num_layers: int) -> list:
    """One dropout key for the embeddings and one per layer (all None at inference)."""
    if rng is None:
        return [None] * (num_layers + 1)
    return list(jax.random.split(rng, num_layers + 1))


def segment_mask(segments_BxL):
    """`[B, 1, L, L]` bool: query and key are in the same text, and the key is not padding."""
    segments_BxL = segments_BxL.astype(jnp.int32)
    return (segments_BxL[:, None, :, None] == segments_BxL[:, None, None, :]) & (
        segments_BxL[:, None, None, :] > 0)


def window_mask(length: int, window: int | tuple[int, int]):
    """`[1, 1, L, L]` bool: -left <= key - query <= right (`window` = (left, right); an int is both)."""
    left, right = (window, window) if isinstance(window, int) else window
    index_L = jnp.arange(length)
    offset_LxL = index_L[None, :] - index_L[:, None]
    return ((offset_LxL >= -left) & (offset_LxL <= right))[None, None]


def causal_mask(length: int):
    """`[1, 1, L, L]` bool: the key is not after the query. ANDed with the segment mask, a packed
    text sees only its own earlier tokens (its segment starts after the previous text's end)."""
    index_L = jnp.arange(length)
    return (index_L[None, :] <= index_L[:, None])[None, None]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class AttentionMask:
    """Who attends to whom, described: `segments_BxL` (0 padding, k > 0 the k-th text of a row)
    and `causal`. Why not the `[B, 1, L, L]` boolean mask itself: splash attention takes segment
    ids and never materialises `[L, L]` anything; XLA and cuDNN get `dense()`."""

    segments_BxL: jax.Array
    causal: bool = dataclasses.field(default=False, metadata=dict(static=True))

    def dense(self):
        """`[B, 1, L, L]` bool: same text, key not padding, and (causal) key not after the query."""
        mask_Bx1xLxL = segment_mask(self.segments_BxL)
        return mask_Bx1xLxL & causal_mask(self.segments_BxL.shape[1]) if self.causal else mask_Bx1xLxL


def attend(q_BxLxNxH, k_BxLxKxH, v_BxLxKxH, mask: AttentionMask, *, bias_1xNxLxL=None,
           window: int | tuple[int, int] | None = None, scale: float | None = None, implementation: str = "xla"):
    """Scaled dot-product attention within segments (and a sliding window when given).

    K may be smaller than N (grouped-query attention). `window` is (left, right): keys from
    `left` before to `right` after the query (an int is a two-sided band; causal windows are
    (w - 1, 0) with the causal mask). `scale` multiplies the scores (default 1/sqrt(H); Gemma
    uses `query_pre_attn_scalar ** -0.5`). `bias_1xNxLxL` is added to the scaled scores
    (MPNet's relative-position bias; not with splash). Attention-probability dropout is not
    applied: fused kernels have none, and hidden-state dropout is what regularises fine-tuning.
    """
    if window is not None and isinstance(window, int):
        window = (window, window)
    if implementation in ("splash", SPLASH_INTERPRET):
        if bias_1xNxLxL is not None:
            raise ValueError("splash attention has no score-bias input (MPNet's relative positions); use 'xla'")
        return attend_splash(q_BxLxNxH, k_BxLxKxH, v_BxLxKxH, mask.segments_BxL, causal=mask.causal,
                             window=window, scale=scale, interpret=implementation == SPLASH_INTERPRET)
    mask_Bx1xLxL = mask.dense()
    if implementation == "cudnn":
        if window is not None:
            mask_Bx1xLxL = mask_Bx1xLxL & window_mask(q_BxLxNxH.shape[1], window)
        return jax.nn.dot_product_attention(q_BxLxNxH, k_BxLxKxH, v_BxLxKxH, bias=bias_1xNxLxL,
                                            mask=mask_Bx1xLxL, scale=scale, implementation="cudnn")
    return jax.nn.dot_product_attention(q_BxLxNxH, k_BxLxKxH, v_BxLxKxH, bias=bias_1xNxLxL, mask=mask_Bx1xLxL,
                                        scale=scale, local_window_size=window, implementation="xla")


def linear(rngs: nnx.Rngs, d_in: int, d_out: int, *, use_bias: bool = True, init_std: float = 0.02,
           dtype: Any, param_dtype: Any) -> nnx.Linear:
    """A Linear layer with HF's normal(init_std) kernel initialisation."""
    return nnx.Linear(d_in, d_out, use_bias=use_bias, dtype=dtype, param_dtype=param_dtype,
                      kernel_init=nnx.initializers.normal(init_std), rngs=rngs)


def project(linear: nnx.Module, x, rng):
    """`linear(x)`; a LoRA-wrapped projection (`siamjax.encoder.lora.LoRALinear`) also gets its
    dropout key (None at inference), a plain `nnx.Linear` has no dropout of its own."""
    return linear(x) if isinstance(linear, nnx.Linear) else linear(x, rng=rng)


def projection_rngs(rng, count: int) -> list:
    """`count` keys for the projections' LoRA dropout, drawn from `rng` without disturbing the
    keys the block already splits from it (all None at inference)."""
    if rng is None:
        return [None] * count
    return list(jax.random.split(jax.random.fold_in(rng, 0x10A), count))


def embed(rngs: nnx.Rngs, num: int, dim: int, *, init_std: float = 0.02, dtype: Any, param_dtype: Any) -> nnx.Embed:
    """An embedding table with HF's normal(init_std) initialisation."""
    return nnx.Embed(num, dim, dtype=dtype, param_dtype=param_dtype,
                     embedding_init=nnx.initializers.normal(init_std), rngs=rngs)


def layer_norm(rngs: nnx.Rngs, dim: int, *, eps: float, use_bias: bool = True, dtype: Any,
               param_dtype: Any) -> nnx.LayerNorm:
    """LayerNorm; statistics are taken in float32 whatever the compute dtype (flax reduces in f32)."""
    return nnx.LayerNorm(dim, epsilon=eps, use_bias=use_bias, dtype=dtype, param_dtype=param_dtype, rngs=rngs)


class PostNormBlock(nnx.Module):
    """BERT's block: x = LN(x + drop(attn(x))); x = LN(x + drop(W2 act(W1 x))).

    BERT, MPNet and DistilBERT all compute this; they differ in tensor names (mapped in each
    family's module), LayerNorm epsilon, activation and where dropout sits (DistilBERT has
    none after the attention output, hence two rates).
    """

    def __init__(self, *, hidden_size: int, intermediate_size: int, num_heads: int, activation: str,
                 eps: float, attn_dropout: float, mlp_dropout: float, init_std: float, dtype, param_dtype,
                 implementation: str, rngs: nnx.Rngs):
        d, f = hidden_size, intermediate_size
        dense = lambda i, o: linear(rngs, i, o, init_std=init_std, dtype=dtype, param_dtype=param_dtype)
        self.query, self.key, self.value, self.attn_out = dense(d, d), dense(d, d), dense(d, d), dense(d, d)
        self.attn_norm = layer_norm(rngs, d, eps=eps, dtype=dtype, param_dtype=param_dtype)
        self.intermediate, self.output = dense(d, f), dense(f, d)
        self.out_norm = layer_norm(rngs, d, eps=eps, dtype=dtype, param_dtype=param_dtype)
        self.num_heads = num_heads
        self.attn_dropout, self.mlp_dropout = attn_dropout, mlp_dropout
        self.act_name = activation
        self.implementation = implementation

    def __call__(self, x_BxLxD, mask: AttentionMask, bias_1xNxLxL=None, *, rng=None):
        b, l, d = x_BxLxD.shape
        split = lambda t: t.reshape(b, l, self.num_heads, d // self.num_heads)
        r_q, r_k, r_v, r_o, r_up, r_down = projection_rngs(rng, 6)
        a_BxLxNxH = attend(split(project(self.query, x_BxLxD, r_q)), split(project(self.key, x_BxLxD, r_k)),
                           split(project(self.value, x_BxLxD, r_v)), mask, bias_1xNxLxL=bias_1xNxLxL,
                           implementation=self.implementation)
        rng_attn, rng_mlp = jax.random.split(rng) if rng is not None else (None, None)
        a_BxLxD = dropout(project(self.attn_out, a_BxLxNxH.reshape(b, l, d), r_o), self.attn_dropout, rng_attn)
        x_BxLxD = self.attn_norm(x_BxLxD + a_BxLxD)
        h_BxLxF = ACTIVATIONS[self.act_name](project(self.intermediate, x_BxLxD, r_up))
        h_BxLxD = dropout(project(self.output, h_BxLxF, r_down), self.mlp_dropout, rng_mlp)
        return self.out_norm(x_BxLxD + h_BxLxD)


def post_norm_names(ours: hf_names.Path, query: str, key: str, value: str, attn_out: str, attn_norm: str,
                    intermediate: str, output: str, out_norm: str) -> list[hf_names.Name]:
    """HF tensor names of one `PostNormBlock` at param path `ours`, given each sub-layer's HF
    name (BERT, MPNet and DistilBERT name the same eight layers differently)."""
    linears = {"query": query, "key": key, "value": value, "attn_out": attn_out, "intermediate": intermediate,
               "output": output}
    names = [n for attr, hf in linears.items() for n in hf_names.linear(hf, ours + (attr,))]
    return names + hf_names.norm(attn_norm, ours + ("attn_norm",)) + hf_names.norm(out_norm, ours + ("out_norm",))


def run_layers(layers: Sequence[nnx.Module], x_BxLxD, rngs: Sequence, remat: bool, args_for: Callable[[int], tuple]):
    """Apply `layers` in order, layer i as `layer(x, *args_for(i), rng=rngs[i])`.

    With `remat`, each layer is wrapped in `nnx.remat`: its activations are recomputed in the
    backward pass instead of stored, so activation memory is one layer's, not the stack's.
    Each layer's input keeps the batch layout on an FSDP mesh (`constrain_rows`), so weights
    are gathered to the activations, not activations sharded like the weights.
    """
    forward = nnx.remat(_call_layer) if remat else _call_layer
    for i, layer in enumerate(layers):
        x_BxLxD = forward(layer, constrain_rows(x_BxLxD), rngs[i], *args_for(i))
    return constrain_rows(x_BxLxD)


def _call_layer(layer, x_BxLxD, rng, *args):
    """One block; a free function so `nnx.remat` can wrap it."""
    return layer(x_BxLxD, *args, rng=rng)


def check_attention(attention: str, dtype: Any, *, score_bias: bool = False) -> None:
    """"cudnn" only runs on a GPU and only in half precision, "splash" only on a TPU and only
    without a score bias: say so before anything compiles ("auto" is resolved first:
    `select_attention`)."""
    dtype = jnp.dtype(dtype) if dtype is not None else jnp.float32
    backend = jax.default_backend()
    attention = select_attention(attention, backend, dtype, score_bias=score_bias)
    if attention in ("splash", SPLASH_INTERPRET) and score_bias:
        raise ValueError(f"attention={attention!r} has no input for this model's attention-score bias "
                         "(MPNet's relative positions); use attention='xla'")
    if attention == "splash" and backend != "tpu":
        raise ValueError(f"attention='splash' needs a TPU, but JAX's default backend is {backend!r}; "
                         "use attention='xla'")
    if attention != "cudnn":
        return
    if backend != "gpu":
        raise ValueError(f"attention='cudnn' needs a GPU, but JAX's default backend is {backend!r}; "
                         "use attention='xla'")
    if dtype not in (jnp.bfloat16, jnp.float16):
        raise ValueError(f"attention='cudnn' needs bfloat16 or float16 compute, got dtype={dtype}; "
                         "set dtype='bfloat16' or use attention='xla'")
