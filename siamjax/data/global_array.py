"""Host-local numpy batch -> one global jax.Array sharded over the mesh's batch axes.

Why `jax.make_array_from_process_local_data`: each process holds only its rows of the global
batch; this assembles them into a single logical array without any host ever holding the
whole batch, so the jitted train step sees the global batch size.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

# Position of the batch dimension per key: [S, B, L] token arrays, [B] labels.
_BATCH_DIM = {"labels": 0}
_DEFAULT_BATCH_DIM = 1


def batch_partition_spec(ndim: int, batch_dim: int, axes: tuple[str, ...]) -> PartitionSpec:
    """PartitionSpec sharding `batch_dim` over `axes` and replicating every other dimension."""
    spec = [None] * ndim
    spec[batch_dim] = axes if len(axes) > 1 else axes[0]
    return PartitionSpec(*spec)


def to_global_array(batch: Mapping[str, np.ndarray], mesh: Mesh,
                    batch_axes: Sequence[str] = ("data", "fsdp")) -> dict[str, jax.Array]:
    """Assemble host-local batches into global arrays sharded along the batch dimension.

    Token arrays `[S, B_local, L]` are sharded on axis 1, `labels [B_local]` on axis 0, over
    the mesh axes among `batch_axes` (axes the mesh lacks are ignored; other mesh axes,
    e.g. "tensor", replicate). Fails early, saying what to change, when the global batch
    does not divide evenly over those devices.
    """
    axes = tuple(a for a in batch_axes if a in mesh.axis_names)
    if not axes:
        raise ValueError(f"none of the batch axes {tuple(batch_axes)} is in the mesh axes "
                         f"{mesh.axis_names}")
    shards = int(np.prod([mesh.shape[a] for a in axes]))
    out = {}
    for key, local in batch.items():
        local = np.asarray(local)
        dim = _BATCH_DIM.get(key, _DEFAULT_BATCH_DIM)
        if local.ndim <= dim:
            raise ValueError(f"batch[{key!r}] has shape {local.shape}; expected the batch "
                             f"dimension at axis {dim}")
        global_size = local.shape[dim] * jax.process_count()
        if global_size % shards:
            raise ValueError(f"global batch size {global_size} (batch[{key!r}]) is not "
                             f"divisible by the {shards} devices of mesh axes {axes}; make "
                             f"the global batch size a multiple of {shards}")
        sharding = NamedSharding(mesh, batch_partition_spec(local.ndim, dim, axes))
        out[key] = jax.make_array_from_process_local_data(sharding, local)
    return out
