"""Per-'data'-shard computation inside a step: each shard of the mesh's 'data' axis runs a
function on its own rows, so a sum over its rows stays on that shard until one explicit reduction.

Why: under GSPMD (jit with shardings) the gradient of parameters that are replicated over 'data'
is all-reduced where XLA computes it from batch-sharded rows. Inside a loop over chunks
(GradCache, gradient accumulation) that is one all-reduce of the full gradient per chunk instead
of one per step. `on_data_shards` runs the loop under `jax.shard_map`, manual over 'data' only:
the body sees its shard's rows, the parameter gradients it accumulates are that shard's partial
sums (`local_to_data_shard`), and `sum_over_data_shards` all-reduces them once. The 'fsdp' axis
stays automatic inside, so XLA still all-gathers FSDP weights layer by layer and reduce-scatters
their gradients over 'fsdp' (which FSDP needs in every chunk anyway: each chip keeps only its
shard of the weights, so it cannot hold a full local gradient).

Without a mesh, or with data=1, there is nothing to keep local: `on_data_shards` returns the
function unchanged and the helpers are identities, so the same code runs everywhere.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from siamjax.parallel.mesh import MESH_AXES

DATA_AXIS = MESH_AXES[0]  # 'data': the axis parameters are replicated over


def data_shard_count() -> int:
    """Size of the context mesh's 'data' axis (1 without a mesh)."""
    mesh = jax.sharding.get_abstract_mesh()
    return 1 if mesh.empty else mesh.shape.get(DATA_AXIS, 1)


def in_data_shard() -> bool:
    """True while tracing the body of `on_data_shards` (the 'data' axis is manual)."""
    mesh = jax.sharding.get_abstract_mesh()
    return not mesh.empty and DATA_AXIS in mesh.manual_axes


def _row_spec(axis: int | None) -> P:
    return P() if axis is None else P(*([None] * axis), DATA_AXIS)


def on_data_shards(fn: Callable, in_row_axes: Sequence[int | None], out_row_axis: int | None) -> Callable:
    """`fn` run once per 'data' shard of the context mesh, each on its own rows.

    in_row_axes: per positional argument, the axis of every array in it that is split over
      'data' (its rows), or None for an argument every shard gets whole (parameters, keys).
    out_row_axis: the same for the result (None: `fn` returns the same value on every shard,
      e.g. after `sum_over_data_shards`).
    A row axis must divide evenly over 'data' (the batch rule's axes split it already).
    """
    if data_shard_count() == 1:
        return fn
    return jax.shard_map(fn, mesh=jax.sharding.get_abstract_mesh(),
                         in_specs=tuple(_row_spec(a) for a in in_row_axes), out_specs=_row_spec(out_row_axis),
                         axis_names={DATA_AXIS})


def local_to_data_shard(tree):
    """Inside `on_data_shards`: `tree` (same on every shard) as a per-shard value, so gradients
    taken with respect to it are this shard's partial sums. Differentiating the replicated value
    itself would all-reduce each gradient where it is taken (the transpose of an implicit
    broadcast), which is what the per-shard loop exists to avoid."""
    if not in_data_shard():
        return tree
    return jax.tree.map(lambda x: jax.lax.pcast(x, DATA_AXIS, to="varying"), tree)


def sum_over_data_shards(tree):
    """Inside `on_data_shards`: the sum of every shard's `tree` (one all-reduce per leaf).

    Floating leaves narrower than float32 (bf16 gradients) are summed in float32 and cast back:
    the shards' partial sums add without bf16 rounding, and XLA:CPU (where `siamjax plan`
    compiles) aborts on a bf16 all-reduce inside a partially manual `shard_map` (its bf16 to
    float32 promotion pass cannot clone the reduction that JAX lowers there).
    """
    if not in_data_shard():
        return tree

    def total(x):
        if jnp.issubdtype(x.dtype, jnp.floating) and jnp.finfo(x.dtype).bits < 32:
            return jax.lax.psum(x.astype(jnp.float32), DATA_AXIS).astype(x.dtype)
        return jax.lax.psum(x, DATA_AXIS)

    return jax.tree.map(total, tree)


def data_shard_key(key: jax.Array) -> jax.Array:
    """This shard's random key: `key` folded with the shard's index inside `on_data_shards`
    (shards draw different dropout masks for their different rows), else `key` itself."""
    if not in_data_shard():
        return key
    return jax.random.fold_in(key, jax.lax.axis_index(DATA_AXIS))
