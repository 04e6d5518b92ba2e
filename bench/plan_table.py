"""The planning table of bench/RESULTS.md: one `siamjax plan` command per row, run one at a time
(each in its own process: the fake device count is fixed when JAX starts), summarised as
markdown (per-device GiB, fits, roofline pairs/s, and the command).

    python bench/plan_table.py                  # every row (each compiles a real step: minutes)
    python bench/plan_table.py --only gemma     # rows whose name contains "gemma"

Rows: configs/llm_hard_negatives.py (MNRL + 7 hard negatives, global batch 16,384, 512-token
texts, GradCache, remat, bf16 compute, FSDP over every chip) on the config-only model folders
of bench/shapes, on a v5e-64 and a v5e-256 slice and 8 x H100: EmbeddingGemma-300m fully
fine-tuned (float32 weights), Qwen3-0.6B/4B/8B training LoRA adapters (rank 16, every
projection) on a frozen bf16 base. GradCache chunks are 8 pairs per chip on v5e (16 GiB) and
32 on H100 (80 GB).

Run it with the Python that should plan: with libtpu installed (`pip install "jax[tpu]"`), the
v5e rows are compiled by the TPU compiler itself; without, every row by XLA:CPU on fake devices
(the `compiler` column says which).
"""
from __future__ import annotations

import argparse
import pathlib
import re
import subprocess
import sys
import time

MESHES = {"v5e-64": (64, "v5e", 8), "v5e-256": (256, "v5e", 8), "8xH100": (8, "h100", 32)}
LORA = ["--config.model.lora.rank=16", "--config.model.lora.alpha=32", "--config.model.lora.base_dtype=bfloat16"]
MODELS = {  # row name -> (shape folder, overrides)
    "EmbeddingGemma-300m full": ("bench/shapes/embeddinggemma-300m", ["--config.model.param_dtype=float32"]),
    "Qwen3-0.6B LoRA r=16": ("bench/shapes/qwen3-embedding-0.6b", LORA),
    "Qwen3-4B LoRA r=16": ("bench/shapes/qwen3-embedding-4b", LORA),
    "Qwen3-8B LoRA r=16": ("bench/shapes/qwen3-embedding-8b", LORA),
}


def command(folder: str, overrides: list[str], devices: int, accelerator: str, chunk: int) -> list[str]:
    return ["siamjax", "plan", "--config", f"configs/llm_hard_negatives.py:{folder}", "--devices", str(devices),
            "--accelerator", accelerator, f"--config.train.grad_cache_chunk={chunk * devices}", *overrides]


def summary(text: str) -> tuple[str, str, str, str]:
    """(peak GiB, fits, pairs/s, compiler) from `siamjax plan`'s output."""
    peak = re.search(r"peak\s+([\d.]+) GiB", text)
    pairs = re.search(r"-> ([\d,]+) pairs/s", text)
    fits = "yes" if re.search(r"^fits", text, re.M) else "no" if "does not fit" in text else "?"
    compiler = "TPU" if "compiled by the TPU compiler" in text else "XLA:CPU"
    return (peak.group(1) if peak else "?"), fits, (pairs.group(1) if pairs else "?"), compiler


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="", help="run only rows whose name contains this (case-insensitive)")
    parser.add_argument("--log", default="bench/out/plan_table.log", help="every plan's full output")
    args = parser.parse_args()
    print("| run | chips | per-device GiB | fits | est. pairs/s | compiler | compile s | command |\n"
          "|---|---|---|---|---|---|---|---|")
    log = pathlib.Path(args.log)
    log.parent.mkdir(parents=True, exist_ok=True)
    rows = [(name, mesh) for mesh in MESHES for name in MODELS]  # TPU slices first: the quicker compiles
    for name, mesh in rows:
        if args.only.lower() in f"{name} {mesh}".lower():
            print(row(name, mesh, log), flush=True)


def row(name: str, mesh: str, log: pathlib.Path) -> str:
    """One table row: runs the row's `siamjax plan` (its output appended to `log`)."""
    (folder, overrides), (devices, accelerator, chunk) = MODELS[name], MESHES[mesh]
    cmd = command(folder, overrides, devices, accelerator, chunk)
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "siamjax", *cmd[1:]], capture_output=True, text=True)
    seconds = time.perf_counter() - start
    with log.open("a") as out:
        out.write(f"$ {' '.join(cmd)}\n{done.stdout}{done.stderr}\n")
    if done.returncode:
        return f"| {name} | {mesh} | failed (exit {done.returncode}): {done.stderr.strip()[-200:]} | | | | | |"
    peak, fits, pairs, compiler = summary(done.stdout)
    return f"| {name} | {mesh} | {peak} | {fits} | {pairs} | {compiler} | {seconds:.0f} | `{' '.join(cmd)}` |"

if __name__ == "__main__":
    main()
