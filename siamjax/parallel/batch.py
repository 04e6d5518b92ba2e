"""The one batch-sharding rule: how a training batch is laid out over the mesh.

A training batch is a dict of arrays. Per-side arrays (`input_ids`, `attention_mask`,
`token_type_ids`, `text_index`, `text_ids`) are `[S, B, ...]`: S stacked sides of B pairs;
per-pair arrays (`labels`) are `[B, ...]`. The pair axis B is split over both mesh axes
('data', 'fsdp'), everything else is replicated. The jit in-shardings of the train step and
`to_global_array`, which assembles each process's rows into one global array, both come from
`batch_spec`, and every "does the batch split evenly" question is `check_batch_divisible`.
"""
from __future__ import annotations

import math
from collections.abc import Mapping

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from siamjax.parallel.mesh import BATCH_AXES

# Keys of per-pair arrays, whose leading axis is B; every other key is per side, [S, B, ...].
PER_PAIR_KEYS = ("labels",)


def batch_dim(key: str) -> int:
    """Position of the pair axis B in `batch[key]`."""
    return 0 if key in PER_PAIR_KEYS else 1


def batch_spec(key: str, ndim: int) -> P:
    """PartitionSpec of `batch[key]`: B split over ('data', 'fsdp'), every other axis replicated."""
    dim = batch_dim(key)
    if ndim <= dim:
        raise ValueError(f"batch[{key!r}] has rank {ndim}; expected the pair axis at position {dim} "
                         f"({'[B, ...]' if dim == 0 else '[S, B, ...]'})")
    spec: list = [None] * ndim
    spec[dim] = BATCH_AXES
    return P(*spec)


def batch_shardings(batch: Mapping[str, object], mesh: Mesh) -> dict[str, NamedSharding]:
    """NamedShardings for every array of a batch (arrays or anything with `.shape`)."""
    return {key: NamedSharding(mesh, batch_spec(key, len(np.shape(x)))) for key, x in batch.items()}


def batch_shard_count(mesh: Mesh) -> int:
    """How many slices the pair axis is split into: the product of the mesh's batch axes."""
    return math.prod(mesh.shape[a] for a in BATCH_AXES)


def check_batch_divisible(batch_size: int, shards: int, processes: int = 1, *,
                          field: str = "train.batch_size") -> None:
    """Fails early, naming `field`, when a global batch cannot be split evenly.

    Every device must get the same number of pairs and every process the same number of rows
    to feed, or `make_array_from_process_local_data` would fail deep inside XLA.
    """
    if batch_size <= 0 or batch_size % shards:
        suggestion = max(shards, round(batch_size / shards) * shards)
        raise ValueError(f"{field}={batch_size} is not divisible by the {shards} devices it is "
                         f"split over; use a multiple of {shards}, e.g. {suggestion}")
    if batch_size % processes:
        raise ValueError(f"{field}={batch_size} is not divisible by the {processes} processes")


def to_global_array(batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Assemble this process's rows of a batch into global arrays sharded by `batch_spec`.

    Why `jax.make_array_from_process_local_data`: each process holds only its rows of the global
    batch; this makes one logical array of the global batch without any host holding all of it.
    """
    out = {}
    for key, local in batch.items():
        local = np.asarray(local)
        spec = batch_spec(key, local.ndim)
        check_batch_divisible(local.shape[batch_dim(key)] * jax.process_count(), batch_shard_count(mesh),
                              jax.process_count(), field=f"global batch (batch[{key!r}])")
        out[key] = jax.make_array_from_process_local_data(NamedSharding(mesh, spec), local)
    return out


def constrain_rows(x: jax.Array) -> jax.Array:
    """`x [R, ...]` with its row axis kept split over the batch axes, inside a step traced under
    `jax.set_mesh` with an 'fsdp' axis (unchanged otherwise, or when R does not split evenly).
    Inside a `shard_map` that is manual over some batch axes (`on_data_shards`), `x` holds that
    shard's rows and stays split over the remaining automatic ones.

    Why: the encoder carries no sharding annotations, and without one XLA's sharding propagation
    lets FSDP-sharded weights shard the activations along the hidden axis instead (all-reducing
    activations in every layer). Pinning each layer's input to the batch layout makes XLA
    all-gather the weights and reduce-scatter their gradients: FSDP (ZeRO-3) as intended.
    """
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or mesh.shape.get("fsdp", 1) == 1:
        return x
    axes = tuple(a for a in BATCH_AXES if a not in mesh.manual_axes)  # inside shard_map: its own rows
    if x.shape[0] % math.prod(mesh.shape[a] for a in axes):
        return x
    return jax.lax.with_sharding_constraint(x, P(axes, *([None] * (x.ndim - 1))))
