"""Ring InfoNCE: the sharded softmax of every MNRL direction without gathering the candidates.

The all-gather form (`siamjax.losses.in_batch`) holds `[b_local, B_global * (1 + K)]` logits
and the gathered `[B_global * (1 + K), D]` candidates on every device. Here, as in ring
attention / flash attention, each device keeps its own block of candidates and passes it
around the ring of batch devices with `ppermute`; after n - 1 hops every device has seen every
block, and it has only ever held one `[b_local, b_local * (1 + K)]` logit block, folding each
into a running log-sum-exp per softmax group. A global batch of 65,536 on 256 chips holds
256 x 256 logits per device, not 256 x 65,536.

The backward pass is a second ring (`jax.custom_vjp`): with the saved log-partitions, each
block's softmax weights are recomputed, the anchor gradients accumulate locally and the
candidate gradients travel with their block, arriving home after the last hop. Nothing of size
B_global is stored between the passes, so per-device memory stays flat as devices are added.
Both loops run n steps of compute-then-hop (the forward's last hop only brings the blocks home):
a loop of one hop is unrolled by XLA, which then keeps two logit blocks live at once.
Logits, masks and penalties come from `siamjax.losses.directions`, so the ring equals the
all-gather form and the single-device loss (tested on 1-8 devices, values and gradients).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from siamjax.losses.directions import MnrlSpec, block_logits, partition_lse


def ring_lse(local: dict, scale, spec: MnrlSpec, axis_name) -> jax.Array:
    """`[P, b_local]` log-partitions of the local rows against the whole global batch.

    local: this device's block (`q`, `p`, optional `n`, `ids`); `scale` may be traced (a
    learnable scale gets its gradient). Without `axis_name` the ring has one block: the plain
    single-device loss.
    """
    b = local["q"].shape[0]
    if axis_name is None:
        rows = jnp.arange(b)
        return partition_lse(block_logits(local, rows, local, rows, scale, spec), spec)
    floats = {k: v for k, v in local.items() if k != "ids"}
    # The scale is replicated; its cotangent below is per device, so mark it device-varying
    # (the transpose of that cast is the psum that totals the scale's gradient).
    scale = jax.lax.pcast(jnp.asarray(scale).astype(local["q"].dtype), axis_name, to="varying")
    return _ring(spec, axis_name, floats, local.get("ids"), scale)


def _setup(axis_name, b):
    n = jax.lax.axis_size(axis_name)
    me = jax.lax.axis_index(axis_name)
    perm = [(j, (j + 1) % n) for j in range(n)]
    rows_of = lambda src: src * b + jnp.arange(b)  # noqa: E731
    return n, me, perm, rows_of


def _with_ids(floats, ids):
    return floats if ids is None else dict(floats, ids=ids)


def _forward(spec, axis_name, floats, ids, scale):
    b = floats["q"].shape[0]
    n, me, perm, rows_of = _setup(axis_name, b)
    rows = _with_ids(floats, ids)

    def lse_against(block, src):
        return partition_lse(block_logits(rows, rows_of(me), block, rows_of(src), scale, spec), spec)

    def hop(carry, t):
        block, lse = carry
        lse = jnp.logaddexp(lse, lse_against(block, (me - t) % n))
        return (jax.lax.ppermute(block, axis_name, perm), lse), None

    lse = jax.lax.pcast(jnp.full((len(spec.partitions), b), -jnp.inf, floats["q"].dtype), axis_name, to="varying")
    (_, lse), _ = jax.lax.scan(hop, (rows, lse), jnp.arange(n))
    return lse


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _ring(spec, axis_name, floats, ids, scale):
    return _forward(spec, axis_name, floats, ids, scale)


def _ring_fwd(spec, axis_name, floats, ids, scale):
    lse = _forward(spec, axis_name, floats, ids, scale)
    return lse, (floats, ids, scale, lse)


def _ring_bwd(spec, axis_name, residuals, g_Pxb):
    """Second ring: d lse / d logits = g * softmax, pulled back block by block through `jax.vjp`."""
    floats, ids, scale, lse_Pxb = residuals
    b = floats["q"].shape[0]
    n, me, perm, rows_of = _setup(axis_name, b)
    group = {d: i for i, part in enumerate(spec.partitions) for d in part}

    def pull(block_floats, block_ids, src):
        def logits_of(rows_f, block_f, s):
            return block_logits(_with_ids(rows_f, ids), rows_of(me), _with_ids(block_f, block_ids),
                                rows_of(src), s, spec)

        logits, vjp = jax.vjp(logits_of, floats, block_floats, scale)
        cot = {d: jnp.exp(x - lse_Pxb[group[d]][:, None]) * g_Pxb[group[d]][:, None] for d, x in logits.items()}
        return vjp(cot)

    def hop(carry, t):
        block_f, block_ids, d_block, d_rows, d_scale = carry
        dr, db, ds = pull(block_f, block_ids, (me - t) % n)
        d_block = jax.tree.map(jnp.add, d_block, db)
        block_f, block_ids, d_block = jax.lax.ppermute((block_f, block_ids, d_block), axis_name, perm)
        return (block_f, block_ids, d_block, jax.tree.map(jnp.add, d_rows, dr), d_scale + ds), None

    zeros = jax.tree.map(jnp.zeros_like, floats)
    # n hops: each block's gradient travels with it and, after the last hop, is home again.
    (_, _, d_block, d_rows, d_scale), _ = jax.lax.scan(
        hop, (floats, ids, zeros, zeros, jnp.zeros_like(scale)), jnp.arange(n))
    return jax.tree.map(jnp.add, d_rows, d_block), None, d_scale


_ring.defvjp(_ring_fwd, _ring_bwd)
