"""Devices: the ('data', 'fsdp') mesh, the FSDP rule for parameters, the one batch-sharding
rule, per-'data'-shard loops (gradients reduced once), global arrays and multi-process
start-up. The lowest layer: it imports no other part of siamjax."""
from siamjax.parallel.batch import (PER_PAIR_KEYS, batch_dim, batch_shard_count, batch_shardings,
                                    batch_spec, check_batch_divisible, constrain_rows, to_global_array)
from siamjax.parallel.data_shards import (DATA_AXIS, data_shard_count, data_shard_key, in_data_shard,
                                          local_to_data_shard, on_data_shards, sum_over_data_shards)
from siamjax.parallel.distributed import DistributedArgs, detected_cluster, initialize
from siamjax.parallel.fsdp import fsdp_spec, tree_shardings
from siamjax.parallel.mesh import BATCH_AXES, MESH_AXES, make_mesh, replicated, resolve_mesh_shape

__all__ = [
    "BATCH_AXES", "DATA_AXIS", "DistributedArgs", "MESH_AXES", "PER_PAIR_KEYS", "batch_dim", "batch_shard_count",
    "batch_shardings", "batch_spec", "check_batch_divisible", "constrain_rows", "data_shard_count", "data_shard_key",
    "detected_cluster", "fsdp_spec", "in_data_shard", "initialize", "local_to_data_shard", "make_mesh",
    "on_data_shards", "replicated", "resolve_mesh_shape", "sum_over_data_shards", "to_global_array", "tree_shardings",
]
