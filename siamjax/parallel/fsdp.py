"""The one FSDP rule: where each parameter (and its optimizer moments) lives on the mesh.

big_vision's rule: every array with at least `min_size` elements is cut along its largest
dimension that the 'fsdp' axis size divides; everything smaller (biases, norms, scalars) is
replicated. Applied to a whole TrainState, parameters and their Adam moments share a shape and
so get the same layout.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P


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

    Step counters and RNG keys are small and stay replicated.
    """
    fsdp_size = mesh.shape["fsdp"]

    def leaf_sharding(leaf):
        return NamedSharding(mesh, fsdp_spec(tuple(np.shape(leaf)), fsdp_size, min_size))

    return jax.tree.map(leaf_sharding, tree)
