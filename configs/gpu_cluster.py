"""Production preset for GPU nodes (8 x H100/A100 each) under SLURM or Kubernetes.

    sbatch launch/slurm_gpu.sbatch configs/gpu_cluster.py:2 runs/nli-gpu
    # or one node:  siamjax train --config configs/gpu_cluster.py:1 --workdir runs/nli-gpu

`arg` is the node count (default 1). One process per node (or per GPU; `jax.distributed`
detects SLURM/JobSet). Parameters are sharded over the 8 GPUs of a node (fsdp=8, NVLink) and
replicated across nodes (data axis), bf16 compute with float32 master weights, per-layer
remat, sequence packing, and GradCache over the packed rows (chunks of 8192 tokens per GPU) so
a 16k-pair contrastive batch fits in 80 GB.
"""
from configs import nli_mnrl

GPUS_PER_NODE = 8


def get_config(arg="1"):
    """The preset for `arg` nodes."""
    nodes = int(arg or 1)
    if nodes < 1:
        raise ValueError(f"gpu_cluster.py: node count must be >= 1, got {arg!r}")
    c = nli_mnrl.get_config()
    c.model.name_or_path = "bert-base-uncased"
    c.model.dtype = "bfloat16"
    c.model.remat = True
    c.model.max_seq_length = 128
    c.data.pack_length = 128  # texts packed into 128-token rows (segment attention): no pad tokens
    c.data.prefetch = 4

    c.mesh.data = -1  # = nodes
    c.mesh.fsdp = GPUS_PER_NODE
    c.mesh.fsdp_min_size = 2**18

    c.train.batch_size = 2048 * nodes * GPUS_PER_NODE // 8
    c.train.grad_cache_tokens = 8192  # GradCache over packed rows: 64 rows of 128 tokens per GPU per chunk
    c.loss.sharded = True  # all-gathered negatives (NVLink/IB), logits scored in blocks of 512 queries
    c.loss.kwargs.block_size = 512

    c.optim.lr = 5e-5
    c.optim.schedule = "cosine"
    c.optim.warmup_steps = 300

    c.train.log_every_steps = 50
    c.eval.every_steps = 500
    c.checkpoint.every_steps = 500
    return c
