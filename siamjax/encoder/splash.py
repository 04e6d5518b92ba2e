"""Pallas splash attention: TPU flash attention that never stores the `[L, L]` scores.

Why a kernel of its own on TPU: XLA's attention materialises every head's `[L, L]` scores (and,
for the backward pass, the probabilities), which at 512+ tokens is most of an encoder's
activation memory. Splash attention (`jax.experimental.pallas.ops.tpu.splash_attention`) is
flash attention with a block-sparse mask: it streams key/value blocks through an online softmax
and skips blocks the mask rules out entirely (other texts' windows, the causal upper triangle).

How the encoders' masks map onto it (`attend_splash` is called only by `layers.attend`):

- packed rows and padding: the segment ids themselves (`SegmentIds(q=, kv=)`; a token attends
  only to keys with its id). Padding has id 0, which no text has, so real tokens never see it;
  padding tokens attend to each other, so no query row is ever empty (no NaN) and nothing reads
  their outputs;
- causal / bidirectional and the sliding window (left, right): a static mask per head,
  `CausalMask`, `FullMask` or `LocalMask` (causal windows are (left, 0));
- scale: the kernel has none, so q is multiplied by it first (Gemma 3's
  `query_pre_attn_scalar ** -0.5` or 1/sqrt(head_dim));
- grouped-query attention: `make_splash_mha` takes K key/value heads for N query heads (N % K == 0).

Shapes: the kernel's blocks are multiples of 128 tokens (the TPU lane width), so the sequence is
padded with padding tokens to the next multiple of 128 and cut back afterwards; any length runs,
at most 127 tokens of extra work. The blocks are the largest of 512/256/128 that divide it.
The kernel handles one row (`[N, L, H]`), so rows are `jax.vmap`-ed; on a mesh it runs per
device under `jax.shard_map` over the batch axes, since XLA cannot partition a Mosaic custom
call (it would gather the whole batch onto every device). Its custom VJP (two Pallas kernels,
dq and dk/dv) makes it differentiable; `interpret=True` runs the same kernel code as plain XLA
ops on any backend: the CPU correctness tests' path, never a TPU one.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as kernels
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as masks
from jax.sharding import PartitionSpec as P

from siamjax.parallel import BATCH_AXES, batch_shard_count

LANES = kernels.NUM_LANES  # every block is a multiple of the TPU's 128 lanes
_BLOCK_CHOICES = (512, 256, 128)


def padded_length(length: int) -> int:
    """The sequence length the kernel runs at: `length` rounded up to a multiple of 128."""
    return -(-length // LANES) * LANES


def block_size(length: int) -> int:
    """The largest of 512/256/128 tokens that divides the padded `length` (512 amortises the
    per-block overhead best on TPU v4-v6; smaller blocks avoid padding a 640-token row to 1024)."""
    return next(b for b in _BLOCK_CHOICES if padded_length(length) % b == 0)


@functools.lru_cache(maxsize=32)
def _head_mask(length: int, causal: bool, window: tuple[int, int] | None) -> masks.Mask:
    """The static `[L, L]` mask of one head (segments are applied separately)."""
    shape = (length, length)
    if window is None:
        return masks.CausalMask(shape) if causal else masks.FullMask(shape)
    left, right = window
    return masks.LocalMask(shape, (left, 0 if causal else right), offset=0)


@functools.lru_cache(maxsize=32)
def _kernel_args(length: int, num_heads: int, causal: bool, window: tuple[int, int] | None) -> tuple:
    """(multi-head mask, block sizes) for a padded `length`; cached so every layer of every
    trace reuses the same (hashable) mask, whose block-sparsity the kernel maker also caches."""
    block = block_size(length)
    sizes = kernels.BlockSizes(block_q=block, block_kv=block, block_kv_compute=block, block_q_dkv=block,
                               block_kv_dkv=block, block_kv_dkv_compute=block, block_q_dq=block, block_kv_dq=block)
    return masks.MultiHeadMask([_head_mask(length, causal, window)] * num_heads), sizes


def attend_splash(q_BxLxNxH, k_BxLxKxH, v_BxLxKxH, segments_BxL, *, causal: bool,
                  window: tuple[int, int] | None, scale: float | None, interpret: bool = False):
    """Attention within segments (0 = padding) by the splash kernel; `[B, L, N, H]` like `q`.

    `window` = (left, right) keys around the query (None: no window); `scale` multiplies the
    scores (None: 1/sqrt(H)).
    """
    b, length, n, h = q_BxLxNxH.shape
    scale = h ** -0.5 if scale is None else scale
    padded = padded_length(length)
    pad = lambda x_BxLx: jnp.pad(x_BxLx, [(0, 0), (0, padded - length)] + [(0, 0)] * (x_BxLx.ndim - 2))
    heads_first = lambda x_BxLxNxH: jnp.swapaxes(pad(x_BxLxNxH), 1, 2)
    q_BxNxPxH = heads_first((q_BxLxNxH.astype(jnp.float32) * scale).astype(q_BxLxNxH.dtype))  # one rounding
    k_BxKxPxH, v_BxKxPxH = heads_first(k_BxLxKxH), heads_first(v_BxLxKxH)
    segments_BxP = pad(segments_BxL.astype(jnp.int32))
    mask, sizes = _kernel_args(padded, n, causal, window)

    def rows(q_BxNxPxH, k_BxKxPxH, v_BxKxPxH, segments_BxP):
        kernel = kernels.make_splash_mha(mask, block_sizes=sizes, head_shards=1, q_seq_shards=1,
                                         interpret=interpret)
        one_row = lambda q, k, v, s: kernel(q, k, v, kernels.SegmentIds(q=s, kv=s))
        return jax.vmap(one_row)(q_BxNxPxH, k_BxKxPxH, v_BxKxPxH, segments_BxP)

    mesh = jax.sharding.get_abstract_mesh()
    if not mesh.empty and set(BATCH_AXES) <= set(mesh.axis_names) and batch_shard_count(mesh) > 1 \
            and b % batch_shard_count(mesh) == 0:
        spec = P(BATCH_AXES)
        rows = jax.shard_map(rows, in_specs=(spec,) * 4, out_specs=spec, check_vma=False)
    o_BxNxPxH = rows(q_BxNxPxH, k_BxKxPxH, v_BxKxPxH, segments_BxP)
    return jnp.swapaxes(o_BxNxPxH, 1, 2)[:, :length]
