"""Fine-tune an LLM-based embedder (EmbeddingGemma or Qwen3-Embedding) with MNRL + hard negatives
on a TPU pod slice or GPU nodes.

    # TPU v5e-256 (one process per host; launch/tpu_vm.sh starts it on every worker):
    CONFIG=configs/llm_embedder.py:gemma3,tpu_pod WORKDIR=/gcs/my-bucket/runs/egemma \
      launch/tpu_vm.sh train --config.train.num_steps=20000
    # GPU nodes, 8 GPUs each (SLURM):
    CONFIG=configs/llm_embedder.py:qwen3,gpu_cluster WORKDIR=/shared/runs/qwen3 \
      sbatch --nodes=2 --gpus-per-node=8 launch/slurm_gpu.sbatch
    # one machine, to try it: siamjax train --config configs/llm_embedder.py:qwen3,gpu_cluster --workdir runs/q

`arg` is "model,mesh": model "gemma3" (google/embeddinggemma-300m: Gemma 3, bidirectional,
mean pooling + two Dense + Normalize) or "qwen3" (Qwen/Qwen3-Embedding-0.6B: causal, last-token
pooling + Normalize); mesh "tpu_pod" (configs/tpu_pod.py, v5e-256: fsdp=16) or "gpu_cluster"
(configs/gpu_cluster.py, one node: fsdp=8 over NVLink, data across nodes). Everything else
comes from those presets: AllNLI triplets (anchor, entailment, contradiction as the hard
negative) through the sharded InfoNCE/MNRL loss (ring on TPU pods, all-gather on GPU nodes), so
each anchor is scored against every positive and hard negative of the global batch; texts packed
into rows; GradCache over the packed rows; per-layer remat; bf16 compute.

What the LLM embedders change:
- their vocabularies are large (262k x 768 for Gemma 3, 152k x 1024 for Qwen3): the FSDP rule
  splits the embedding along the vocabulary, so each device holds 1/fsdp of it;
- Qwen3 (0.6B, and the 4B/8B variants this scales to) keeps its weights in bfloat16
  (`model.param_dtype`) with float32 Adam moments (`optim.float32_moments`); the 300M Gemma
  keeps float32 weights;
- longer texts (256 tokens, packed into 256-token rows) and a lower learning rate;
- the models' task prompts (EmbeddingGemma's "task: search result | query: ", Qwen3's
  "Instruct: ...\\nQuery:") are not applied yet: prefix the data's texts with them.
"""
from configs import gpu_cluster, tpu_pod

MODELS = {
    # model -> (folder or hub name, param dtype, peak learning rate)
    "gemma3": ("google/embeddinggemma-300m", "float32", 2e-5),
    "qwen3": ("Qwen/Qwen3-Embedding-0.6B", "bfloat16", 1e-5),
}
MESHES = {"tpu_pod": lambda: tpu_pod.get_config("v5e-256"), "gpu_cluster": lambda: gpu_cluster.get_config("1")}


def get_config(arg="gemma3,tpu_pod"):
    """The preset for `arg` = "model,mesh" (see MODELS and MESHES)."""
    model, _, mesh = (arg or "gemma3,tpu_pod").partition(",")
    mesh = mesh or "tpu_pod"
    if model not in MODELS or mesh not in MESHES:
        raise ValueError(f"llm_embedder.py: arg {arg!r} must be 'model,mesh' with model in {sorted(MODELS)} "
                         f"and mesh in {sorted(MESHES)}")
    name, param_dtype, lr = MODELS[model]
    c = MESHES[mesh]()
    c.model.name_or_path = name
    c.model.param_dtype = param_dtype
    c.optim.float32_moments = True
    c.model.max_seq_length = 256
    c.data.pack_length = 256  # the presets' GradCache chunks (4096 / 8192 tokens) are whole 256-token rows
    c.optim.lr = lr
    c.optim.weight_decay = 0.0
    return c
