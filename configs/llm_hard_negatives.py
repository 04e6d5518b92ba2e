"""MNRL with 7 mined hard negatives per query at global batch 16,384, 512-token texts, GradCache:
the run the planning table in bench/RESULTS.md sizes (`siamjax plan`), for an LLM embedder.

    siamjax plan --config configs/llm_hard_negatives.py:bench/shapes/qwen3-embedding-8b \
        --devices 64 --accelerator v5e --config.train.grad_cache_chunk=512

`arg` is the model folder (a config-only folder such as bench/shapes/* is enough to plan; a
real folder to train). The data is a jsonl file of (anchor, positive, negative_1..negative_7)
rows, e.g. written by `siamjax mine`. Every text is treated as up to 512 tokens, padded
batches (`[9, 16384, 512]`), GradCache in chunks of `train.grad_cache_chunk` pairs over all
devices (default 8 per chip of a 64-chip slice), per-layer remat, bf16 compute, parameters and
moments sharded over every chip (mesh.fsdp=-1).
"""
from configs import llm_embedder

NEGATIVES = 7


def get_config(arg="bench/shapes/qwen3-embedding-0.6b"):
    """The preset for model folder `arg`."""
    c = llm_embedder.get_config("qwen3,gpu_cluster")
    c.model.name_or_path = arg or "bench/shapes/qwen3-embedding-0.6b"
    c.model.max_seq_length = 512
    c.model.remat = True
    c.data.pack_length = 0
    c.data.train.tfds.builder = ""
    c.data.nli_to_triplets = False
    c.data.nli_symmetric = False
    c.data.train.path = "data/hard_negatives.jsonl"
    c.data.train.columns = (("anchor", "anchor"), ("positive", "positive"),
                            *((f"negative_{i}", f"negative_{i}") for i in range(1, NEGATIVES + 1)))
    c.data.buckets = (128, 256, 512)
    c.eval.sts.tfds.builder = ""
    c.train.batch_size = 16384
    c.train.grad_cache_tokens = 0
    c.train.grad_cache_chunk = 512
    c.mesh.data = 1
    c.mesh.fsdp = -1
    return c
