"""The planning table of bench/RESULTS.md: one `siamjax plan` command per row, run one at a time
(each in its own process: the fake device count is fixed when JAX starts), summarised as
markdown (per-device GiB, fits, roofline pairs/s, and the command).

    python bench/plan_table.py                  # every row (each compiles a real step: minutes)
    python bench/plan_table.py --only gemma     # rows whose name contains "gemma"

Rows: configs/llm_hard_negatives.py (MNRL + 7 hard negatives, global batch 16,384, 512-token
texts, GradCache, remat, bf16 compute, FSDP over every chip) on the config-only model folders
of bench/shapes, on a v5e-64 and a v5e-256 slice and 8 x H100. GradCache chunks are 8 pairs
per chip on v5e (16 GiB) and 32 on H100 (80 GB). With `--lora`, the Qwen3 rows train LoRA
adapters (rank 16) on a frozen bf16 base (needs `model.lora`).
"""
from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time

MESHES = {"v5e-64": (64, "v5e", 8), "v5e-256": (256, "v5e", 8), "8xH100": (8, "h100", 32)}
MODELS = {  # row name -> (shape folder, overrides)
    "EmbeddingGemma-300m full": ("bench/shapes/embeddinggemma-300m", ["--config.model.param_dtype=float32"]),
    "Qwen3-0.6B full": ("bench/shapes/qwen3-embedding-0.6b", []),
    "Qwen3-4B full": ("bench/shapes/qwen3-embedding-4b", []),
    "Qwen3-8B full": ("bench/shapes/qwen3-embedding-8b", []),
}
LORA = ["--config.model.lora.rank=16", "--config.model.lora.alpha=32"]


def command(folder: str, overrides: list[str], devices: int, accelerator: str, chunk: int) -> list[str]:
    return ["siamjax", "plan", "--config", f"configs/llm_hard_negatives.py:{folder}", "--devices", str(devices),
            "--accelerator", accelerator, f"--config.train.grad_cache_chunk={chunk * devices}", *overrides]


def summary(text: str) -> tuple[str, str, str]:
    """(peak GiB, fits, pairs/s) from `siamjax plan`'s output."""
    peak = re.search(r"peak\s+([\d.]+) GiB", text)
    pairs = re.search(r"-> ([\d,]+) pairs/s", text)
    fits = "yes" if re.search(r"^fits", text, re.M) else "no" if "does not fit" in text else "?"
    return (peak.group(1) if peak else "?"), fits, (pairs.group(1) if pairs else "?")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="", help="run only rows whose name contains this (case-insensitive)")
    parser.add_argument("--lora", action="store_true", help="Qwen3 rows as LoRA r=16 (needs model.lora)")
    args = parser.parse_args()
    print("| run | chips | per-device GiB | fits | est. pairs/s | compile s | command |\n|---|---|---|---|---|---|---|")
    for name, (folder, overrides) in MODELS.items():
        if args.lora and name.startswith("Qwen3"):
            name, overrides = name.replace("full", "LoRA r=16"), overrides + LORA
        for mesh, (devices, accelerator, chunk) in MESHES.items():
            if args.only.lower() not in f"{name} {mesh}".lower():
                continue
            cmd = command(folder, overrides, devices, accelerator, chunk)
            start = time.perf_counter()
            done = subprocess.run(cmd, capture_output=True, text=True)
            seconds = time.perf_counter() - start
            if done.returncode:
                print(f"{name} {mesh}: failed ({done.returncode}): {done.stderr.strip()[-300:]}", file=sys.stderr)
                continue
            peak, fits, pairs = summary(done.stdout)
            print(f"| {name} | {mesh} | {peak} | {fits} | {pairs} | {seconds:.0f} | `{' '.join(cmd)}` |", flush=True)


if __name__ == "__main__":
    main()
