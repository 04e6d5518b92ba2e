"""Device mesh and sharding rules for training: one place that decides where arrays live.

The mesh has two axes, ('data', 'fsdp'). Batches are split over both (every device sees a
different slice of the batch); parameters and optimizer moments are split over 'fsdp' only
(big_vision's FSDP rule: each large array is cut along its largest dimension that the fsdp
size divides, everything small is replicated). With fsdp=1 this is plain data parallelism.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp")
# The batch dimension is split over both mesh axes.
BATCH_AXES = ("data", "fsdp")


def resolve_mesh_shape(data: int, fsdp: int, num_devices: int) -> tuple[int, int]:
    """Turns config sizes (where -1 means "all remaining devices") into a concrete (data, fsdp).

    Raises a ValueError naming the config fields when the sizes cannot tile the devices, so a
    bad mesh fails before anything is compiled.
    """
    sizes = {"mesh.data": int(data), "mesh.fsdp": int(fsdp)}
    for name, size in sizes.items():
        if size == 0 or size < -1:
            raise ValueError(f"config {name}={size}: must be a positive size or -1 (fill).")
    fills = [name for name, size in sizes.items() if size == -1]
    if len(fills) > 1:
        raise ValueError(
            "config mesh.data and mesh.fsdp are both -1: at most one axis can fill the remaining "
            "devices; set the other to a positive size."
        )
    fixed = math.prod(size for size in sizes.values() if size != -1)
    if fills:
        if num_devices % fixed:
            raise ValueError(
                f"config {fills[0]}=-1 cannot fill {num_devices} devices: the other axis has size "
                f"{fixed}, which does not divide {num_devices}."
            )
        sizes[fills[0]] = num_devices // fixed
    if sizes["mesh.data"] * sizes["mesh.fsdp"] != num_devices:
        raise ValueError(
            f"config mesh.data={sizes['mesh.data']} x mesh.fsdp={sizes['mesh.fsdp']} = "
            f"{sizes['mesh.data'] * sizes['mesh.fsdp']} devices, but {num_devices} are available; "
            "set one of them to -1 to fill the rest."
        )
    return sizes["mesh.data"], sizes["mesh.fsdp"]


def make_mesh(data: int = -1, fsdp: int = 1, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """Builds the ('data', 'fsdp') mesh over `devices` (default: all devices of all processes).

    Axes are `Auto` (compiler-propagated shardings): model code carries no sharding
    annotations, and the only explicit shardings are those given at the jit boundaries.
    """
    devices = list(jax.devices() if devices is None else devices)
    shape = resolve_mesh_shape(data, fsdp, len(devices))
    return jax.make_mesh(
        shape, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES), devices=devices
    )


def batch_shard_count(mesh: Mesh) -> int:
    """How many slices the batch is split into: the product of the mesh's batch axes."""
    return math.prod(mesh.shape[a] for a in BATCH_AXES)


def check_batch_divisible(batch_size: int, mesh: Mesh, *, field: str = "train.batch_size") -> None:
    """Fails early, naming the config field, when the global batch cannot be split evenly.

    Every device must get the same number of pairs, and every process the same number of
    rows to feed, or `make_array_from_process_local_data` would fail deep inside XLA.
    """
    shards = batch_shard_count(mesh)
    if batch_size <= 0 or batch_size % shards:
        raise ValueError(
            f"config {field}={batch_size} is not divisible by the {shards} batch shards of the "
            f"mesh (data={mesh.shape['data']} x fsdp={mesh.shape['fsdp']}); use a multiple of "
            f"{shards}, e.g. {max(shards, round(batch_size / shards) * shards)}."
        )
    if batch_size % jax.process_count():
        raise ValueError(
            f"config {field}={batch_size} is not divisible by the {jax.process_count()} processes."
        )


def fsdp_spec(shape: Sequence[int], fsdp_size: int, min_size: int) -> P:
    """PartitionSpec for one parameter: its largest fsdp-divisible dimension goes on 'fsdp'.

    Arrays with fewer than `min_size` elements (biases, LayerNorm scales, scalars) are
    replicated: splitting them saves no memory and costs a gather per use.
    """
    spec: list[str | None] = [None] * len(shape)
    if fsdp_size <= 1 or not shape or math.prod(shape) < min_size:
        return P(*spec)
    for dim in np.argsort(shape, kind="stable")[::-1]:
        if shape[dim] >= fsdp_size and shape[dim] % fsdp_size == 0:
            spec[dim] = "fsdp"
            break
    return P(*spec)


def tree_shardings(tree: Any, mesh: Mesh, min_size: int) -> Any:
    """NamedShardings for every array leaf of `tree` (arrays or ShapeDtypeStructs) by the FSDP rule.

    Applied to a whole TrainState: parameters and their Adam moments share a shape and so get
    the same layout; step counters and RNG keys are small and stay replicated.
    """
    fsdp_size = mesh.shape["fsdp"]

    def leaf_sharding(leaf):
        return NamedSharding(mesh, fsdp_spec(tuple(np.shape(leaf)), fsdp_size, min_size))

    return jax.tree.map(leaf_sharding, tree)


def replicated(mesh: Mesh) -> NamedSharding:
    """A sharding that keeps a full copy on every device (scalars, metrics, RNG keys)."""
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh, ndim: int, batch_dim: int) -> NamedSharding:
    """Sharding of one batch array: dimension `batch_dim` split over ('data', 'fsdp')."""
    spec: list[Any] = [None] * ndim
    spec[batch_dim] = BATCH_AXES
    return NamedSharding(mesh, P(*spec))


def batch_shardings(batch: Any, mesh: Mesh) -> Any:
    """Shardings for a training batch: `[S, B, L]` token arrays split on B, `[B]` labels on B.

    Any array of rank >= 2 is treated as stacked sides `[S, B, ...]`; rank-1 arrays are
    per-pair (`labels [B]`).
    """

    def leaf(x):
        ndim = len(np.shape(x))
        return batch_sharding(mesh, ndim, 1 if ndim >= 2 else 0)

    return jax.tree.map(leaf, batch)
