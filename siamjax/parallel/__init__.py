"""Devices: the ('data', 'fsdp') mesh, the FSDP rule for parameters, the one batch-sharding
rule, global arrays and multi-process start-up. The lowest layer: it imports no other part of
siamjax."""
from siamjax.parallel.batch import (PER_PAIR_KEYS, batch_dim, batch_shard_count, batch_shardings,
                                    batch_spec, check_batch_divisible, constrain_rows, to_global_array)
from siamjax.parallel.distributed import DistributedArgs, detected_cluster, initialize
from siamjax.parallel.fsdp import fsdp_spec, tree_shardings
from siamjax.parallel.mesh import BATCH_AXES, MESH_AXES, make_mesh, replicated, resolve_mesh_shape

__all__ = [
    "BATCH_AXES", "DistributedArgs", "MESH_AXES", "PER_PAIR_KEYS", "batch_dim", "batch_shard_count",
    "batch_shardings", "batch_spec", "check_batch_divisible", "constrain_rows", "detected_cluster", "fsdp_spec",
    "initialize", "make_mesh", "replicated", "resolve_mesh_shape", "to_global_array", "tree_shardings",
]
