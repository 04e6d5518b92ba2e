"""The device mesh: two axes, ('data', 'fsdp'), over all devices of all processes.

Batches are split over both axes (`siamjax.parallel.batch`); parameters and optimizer moments
over 'fsdp' only (`siamjax.parallel.fsdp`). With fsdp=1 this is plain data parallelism.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import jax
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


def replicated(mesh: Mesh) -> NamedSharding:
    """A sharding that keeps a full copy on every device (scalars, metrics, RNG keys)."""
    return NamedSharding(mesh, P())
