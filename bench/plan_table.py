"""The planning table of bench/RESULTS.md: one `siamjax plan` command per row, run one at a time
(each in its own process: the fake device count is fixed when JAX starts), summarised as
markdown (per-device GiB, fits, roofline pairs/s, and the command).

    python bench/plan_table.py                  # every row (each compiles a real step: minutes)
    python bench/plan_table.py --only gemma     # rows whose name contains "gemma"

Each row's compiled program is kept in bench/out/hlo/ (`siamjax plan --hlo`), to re-count it.

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

from siamjax.parallel.hlo import program_stats
from siamjax.train.accelerators import get_accelerator
from siamjax.train.plan import roofline

BATCH = 16384  # configs/llm_hard_negatives.py's global batch
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


def summary(text: str) -> tuple[str, str, str]:
    """(peak GiB, fits, compiler) from `siamjax plan`'s output."""
    peak = re.search(r"peak\s+([\d.]+) GiB", text)
    fits = "yes" if re.search(r"^fits", text, re.M) else "no" if "does not fit" in text else "?"
    compiler = "TPU" if "compiled by the TPU compiler" in text else "XLA:CPU"
    return (peak.group(1) if peak else "?"), fits, compiler


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="", help="run only rows whose name contains this (case-insensitive)")
    parser.add_argument("--log", default="bench/out/plan_table.log", help="every plan's full output")
    parser.add_argument("--recount", action="store_true",
                        help="compile nothing: rebuild the rows from the log and the kept programs (after a "
                        "change to siamjax.parallel.hlo's counting)")
    parser.add_argument("--reuse", action="store_true",
                        help="rows already in the log are recounted, only the others compiled")
    args = parser.parse_args()
    print("| run | chips | per-device GiB | fits | est. pairs/s (bound) | compiler | compile s | command |\n"
          "|---|---|---|---|---|---|---|---|")
    log = pathlib.Path(args.log)
    log.parent.mkdir(parents=True, exist_ok=True)
    rows = [(name, mesh) for mesh in MESHES for name in MODELS]  # TPU slices first: the quicker compiles
    for name, mesh in rows:
        if args.only.lower() in f"{name} {mesh}".lower():
            print(row(name, mesh, log, args.recount, args.reuse), flush=True)


def row(name: str, mesh: str, log: pathlib.Path, recount: bool, reuse: bool) -> str:
    """One table row: runs the row's `siamjax plan` (its output appended to `log`, its program
    kept in bench/out/hlo/), or reads them back (`recount`; `reuse` where the log has the row)."""
    (folder, overrides), (devices, accelerator, chunk) = MODELS[name], MESHES[mesh]
    cmd = " ".join(command(folder, overrides, devices, accelerator, chunk))
    hlo = log.parent / "hlo" / f"{re.sub(r'[^A-Za-z0-9.]+', '_', name)}_{mesh}.hlo.txt"
    found = re.findall(rf"^\$ {re.escape(cmd)}\n(.*?)^# exit (\d+) after (\d+) s$",
                       log.read_text() if log.exists() else "", re.M | re.S)
    if recount and not found:
        return f"| {name} | {mesh} | not planned yet | | | | | |"
    if found and (recount or reuse):
        text, code, seconds = found[-1][0], int(found[-1][1]), float(found[-1][2])
    else:
        hlo.parent.mkdir(exist_ok=True)
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "siamjax", *cmd.split()[1:], "--hlo", str(hlo)],
                              capture_output=True, text=True)
        text, code, seconds = done.stdout + done.stderr, done.returncode, time.perf_counter() - start
        with log.open("a") as out:
            out.write(f"$ {cmd}\n{text}\n# exit {code} after {seconds:.0f} s\n")
    if code:
        return f"| {name} | {mesh} | failed (exit {code}): {text.strip()[-200:]} | | | | | |"
    peak, fits, compiler = summary(text)
    return f"| {name} | {mesh} | {peak} | {fits} | {speed(hlo, text, devices, accelerator)} | {compiler} | {seconds:.0f} | `{cmd}` |"


def speed(hlo: pathlib.Path, text: str, devices: int, accelerator: str) -> str:
    """Roofline pairs/s and its bound, counted from the kept program (so a recount follows
    siamjax.parallel.hlo); "-" when the compiler refused the step."""
    if "the compiler refused the step" in text or not hlo.exists():
        return "-"
    seconds = roofline(program_stats(hlo.read_text(), devices), get_accelerator(accelerator))
    bound = max(("compute", "hbm", "interconnect"), key=seconds.get)
    return f"{BATCH / seconds['estimate']:,.0f} ({bound}: {seconds['estimate']:.1f} s/step)"


if __name__ == "__main__":
    main()
