"""Production preset for a TPU pod slice: large global batch, FSDP, bf16, remat, sharded InfoNCE.

    launch/tpu_vm.sh ... -- siamjax train --config configs/tpu_pod.py:v4-64 --workdir /mnt/gcs/run \
        --config.data.train.tfds.data_dir=gs://bucket/tfds

The workdir must be a folder every host sees (the bucket mounted with gcsfuse, or NFS).

`arg` picks the slice: "v4-8", "v4-64" (default), "v5e-256". One process per TPU VM host;
`jax.distributed` finds its peers by itself. The global batch is split over every chip
(data x fsdp); parameters and Adam moments are sharded over the fsdp axis, so a
BERT-large-sized encoder fits with room for a 64k-pair contrastive batch; GradCache keeps
activation memory at one chunk of packed rows (4096 tokens per chip), and the ring InfoNCE
holds one [b_local, b_local * 2] logit block per chip instead of [b_local, B * 2].
Base: the NLI/MNRL recipe (configs/nli_mnrl.py).
"""
from configs import nli_mnrl

# slice -> (fsdp axis size, global batch); the data axis takes the remaining chips
# (v4-8: 4 chips, v4-64: 32 chips, v5e-256: 256 chips).
SLICES = {"v4-8": (4, 4096), "v4-64": (8, 32768), "v5e-256": (16, 65536)}


def get_config(arg="v4-64"):
    """The preset for slice `arg` (see SLICES)."""
    arg = arg or "v4-64"
    if arg not in SLICES:
        raise ValueError(f"tpu_pod.py: unknown slice {arg!r}; choose one of {sorted(SLICES)}")
    fsdp, batch = SLICES[arg]
    c = nli_mnrl.get_config()
    c.model.name_or_path = "bert-large-uncased"
    c.model.dtype = "bfloat16"
    c.model.remat = True
    c.model.max_seq_length = 128
    c.data.pack_length = 128  # texts packed into 128-token rows (segment attention): no pad tokens
    c.data.prefetch = 4
    c.data.train.tfds.data_dir = "gs://YOUR_BUCKET/tensorflow_datasets"

    c.mesh.data = -1  # all chips not on the fsdp axis
    c.mesh.fsdp = fsdp
    c.mesh.fsdp_min_size = 2**18

    c.train.batch_size = batch
    c.train.grad_cache_tokens = 4096  # GradCache over packed rows: 32 rows of 128 tokens per chip per chunk
    c.loss.sharded = True
    c.loss.kwargs.ring = True  # ring InfoNCE: [b_local, b_local] logit blocks passed around the chips

    c.optim.lr = 1e-4 if batch >= 32768 else 5e-5
    c.optim.schedule = "cosine"
    c.optim.warmup_steps = 200

    c.train.log_every_steps = 20
    c.eval.every_steps = 200
    c.checkpoint.every_steps = 200
    c.checkpoint.keep = 3
    c.checkpoint.async_save = True
    return c
