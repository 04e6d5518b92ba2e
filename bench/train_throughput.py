"""Fine-tuning throughput, siamjax vs sentence-transformers, side by side in one process.

Why: siamjax claims to train faster than the PyTorch reference; this measures it on the same
model (all-MiniLM-L6-v2, any family's folder with `--model`, or a random folder of a named shape
with `--shape bert-base|mpnet-base|modernbert-base|gemma3-300m|qwen3-0.6b`, `bench/shapes.py`),
in the same precision (`--dtype float32|bfloat16`; `bench/trainers.py`), the same STS-b train pairs in the same order, the same batch, the
same max_seq_length, the same loss (MNRL / InfoNCE, scale 20, cosine) and the same optimiser
(AdamW, lr 2e-5 constant, eps 1e-6, weight decay 0.01 except biases and LayerNorm, global-norm
clipping at 1.0), with dropout on in both.

Protocol: both libraries' batches are tokenised once, before any timing (sentence-transformers
pads each side to its longest sequence; siamjax packs each side into rows of `--pack-length`
tokens, as `data.pack_length` does in training, or with `--pack-length 0` pads both sides to
one of `--buckets`, by default the CPU quickstart's 16/32/48/64/128), so the timed loop is pure
training. Warm-up steps are excluded; siamjax compiles every batch shape ahead of time and
reports that compile time separately. The timed steps are split into `--rounds` chunks and
the libraries alternate chunk by chunk (the first to run rotates too), so on a shared machine
all see the same background load. siamjax runs the real `siamjax.train.step` (TrainState, jit
with shardings, donated state) and fetches its losses only after the clock stops. Tokens per
pair (real, and as computed on by each library) are reported because on a CPU the step time
is proportional to them. `--padded` adds the padded siamjax step as a third runner.

    python bench/train_throughput.py                       # batch 32 and 128, ~6 min on 2 cores
    python bench/train_throughput.py --batch 32 --steps 20 --json bench/results/train.json
    python bench/train_throughput.py --only-grad-cache     # GradCache: packed vs padded chunks, batch 128
    python bench/train_throughput.py --shape gemma3-300m --batch 32 --steps 4 --rounds 2
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import random
import sys
import time

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# PyTorch's OpenMP threads spin-wait by default; on a shared (oversubscribed) CPU that made
# sentence-transformers up to 3x slower. Sleeping waits keep the comparison about the libraries.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
for path in (REPO, REPO / "bench"):  # run from a checkout without `pip install -e .`
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))
from environment import (STSB_DIR, add_model_args, environment, model_folder, read_stsb,  # noqa: E402
                         set_threads)
from siamjax import SentenceEncoder  # noqa: E402
from trainers import JaxTrainer, TorchTrainer  # noqa: E402

QUICKSTART_BUCKETS = (16, 32, 48, 64, 128)  # data.buckets of configs/stsb_minilm.py


# ----------------------------------------------------------------------------- benchmark
def pair_batches(s1: list[str], s2: list[str], batch_size: int, count: int, seed: int = 0):
    """`count` (anchors, positives) batches from the pairs, shuffled once, cycled if needed."""
    order = list(range(len(s1)))
    random.Random(seed).shuffle(order)
    per_epoch = len(order) // batch_size
    if per_epoch == 0:
        raise ValueError(f"batch {batch_size} is larger than the {len(order)} training pairs")
    out = []
    for i in range(count):
        idx = order[(i % per_epoch) * batch_size:(i % per_epoch + 1) * batch_size]
        out.append(([s1[j] for j in idx], [s2[j] for j in idx]))
    return out


def padded_tokens(batch) -> tuple[int, int]:
    """(tokens the encoder computes on, real tokens) of one prepared batch, either library."""
    sides = batch if isinstance(batch, list) else [batch]
    shape = lambda x: tuple(x.shape)  # noqa: E731
    total = sum(int(np.prod(shape(side["input_ids"]))) for side in sides)
    real = sum(int((np.asarray(side["attention_mask"]) > 0).sum()) for side in sides)
    return total, real


def bench_batch_size(model_dir, s1, s2, *, batch_size, warmup, steps, rounds, max_seq_length,
                     buckets=None, pack_length=0, padded=False, seed=0, dtype="float32", log=print) -> dict:
    """Train both libraries on identical batches; pairs/s for each, interleaved in `rounds` chunks.

    Before any step, each library's loss on the first batch with dropout off (`*_eval_loss`):
    the same weights and texts must give the same number (the side-by-side parity check).
    """
    if steps < rounds or warmup < 1:
        raise ValueError(f"need steps ({steps}) >= rounds ({rounds}) and warmup >= 1 (got {warmup})")
    texts = pair_batches(s1, s2, batch_size, warmup + steps, seed)
    runners = {"torch": TorchTrainer(model_dir, max_seq_length, seed, dtype=dtype),
               "jax": JaxTrainer(model_dir, max_seq_length, seed, buckets, pack_length=pack_length, dtype=dtype)}
    if padded and pack_length:
        runners["jax_padded"] = JaxTrainer(model_dir, max_seq_length, seed, buckets, dtype=dtype,
                                           encoder=runners["jax"].encoder)
    batches = {name: [r.prepare(a, p) for a, p in texts] for name, r in runners.items()}
    result = {"batch_size": batch_size, "steps": steps, "warmup": warmup, "rounds": rounds,
              "jax_pack_length": pack_length, "dtype": dtype,
              "torch_eval_loss": runners["torch"].eval_loss(batches["torch"][0]),
              "jax_eval_loss": runners["jax"].eval_loss(*texts[0])}
    result.update(timed_stats(runners, batches, batch_size=batch_size, warmup=warmup, steps=steps,
                              rounds=rounds, log=log))
    result["jax_shapes"] = sorted(k[1:] for k in runners["jax"].compiled)
    timed = slice(warmup, warmup + steps)
    result["real_tokens_per_pair"] = sum(padded_tokens(b)[1] for b in batches["torch"][timed]) / (steps * batch_size)
    for name in runners:
        if name != "torch":
            result[f"{name}_ratio"] = result[f"{name}_pairs_per_s"] / result["torch_pairs_per_s"]
    result["ratio"] = result["jax_ratio"]
    return result


def timed_stats(runners: dict, batches: dict, *, batch_size, warmup, steps, rounds, log=print) -> dict:
    """Interleave the runners, then each one's pairs/s, mean loss, tokens/pair and compile time."""
    times, losses = interleave(runners, batches, batch_size=batch_size, warmup=warmup, steps=steps,
                               rounds=rounds, log=log)
    pairs, timed = steps * batch_size, slice(warmup, warmup + steps)
    result = {"round_seconds": times}
    for name, runner in runners.items():
        result[f"{name}_pairs_per_s"] = pairs / sum(times[name])
        result[f"{name}_mean_loss"] = float(np.mean([float(x) for x in losses[name]]))
        result[f"{name}_tokens_per_pair"] = sum(padded_tokens(b)[0] for b in batches[name][timed]) / pairs
        if name != "torch":
            result[f"{name}_compile_s"] = runner.compile_seconds
    return result


def interleave(runners: dict, batches: dict, *, batch_size, warmup, steps, rounds, log=print):
    """Compile, warm up, then time the runners chunk by chunk in rotating order (same load for all).

    Returns ({name: seconds per round}, {name: losses}).
    """
    for name, runner in runners.items():
        if name != "torch":
            for batch in batches[name]:
                runner.compile_for(batch)
            log(f"  batch {batch_size}: {name} compiled {len(runner.compiled)} shape(s) "
                f"{sorted(runner.compiled)} in {runner.compile_seconds:.1f}s")
    for name, runner in runners.items():
        for i in range(warmup):
            runner.step(batches[name][i])
        runner.sync()
    names = list(runners)
    times = {name: [] for name in names}
    losses = {name: [] for name in names}
    for r, chunk in enumerate(np.array_split(np.arange(warmup, warmup + steps), rounds)):
        for name in names[r % len(names):] + names[:r % len(names)]:  # rotate who goes first
            runner, start = runners[name], time.perf_counter()
            losses[name] += [runner.step(batches[name][i]) for i in chunk]
            runner.sync()
            times[name].append(time.perf_counter() - start)
        log(f"  batch {batch_size} round {r + 1}/{rounds}: " + ", ".join(
            f"{name} {len(chunk) * batch_size / times[name][-1]:.1f}" for name in names) + " pairs/s")
    return times, losses


def bench_grad_cache(model_dir, s1, s2, *, batch_size, warmup, steps, rounds, max_seq_length, buckets,
                     pack_length, chunk, chunk_tokens, seed=0, log=print) -> dict:
    """siamjax GradCache on packed rows (chunks of `chunk_tokens` tokens) vs on padded batches
    (chunks of `chunk` pairs), same pairs, same model, interleaved: the speed-up packing keeps
    at the scale where GradCache is needed."""
    texts = pair_batches(s1, s2, batch_size, warmup + steps, seed)
    encoder = SentenceEncoder.from_pretrained(model_dir, max_seq_length=max_seq_length)
    runners = {"gc_packed": JaxTrainer(model_dir, max_seq_length, seed, encoder=encoder, pack_length=pack_length,
                                       grad_cache_tokens=chunk_tokens),
               "gc_padded": JaxTrainer(model_dir, max_seq_length, seed, buckets, encoder=encoder,
                                       grad_cache_chunk=chunk)}
    batches = {name: [r.prepare(a, p) for a, p in texts] for name, r in runners.items()}
    result = {"batch_size": batch_size, "steps": steps, "chunk_pairs_padded": chunk,
              "chunk_tokens_packed": chunk_tokens}
    result.update(timed_stats(runners, batches, batch_size=batch_size, warmup=warmup, steps=steps,
                              rounds=rounds, log=log))
    result["packed_over_padded"] = result["gc_packed_pairs_per_s"] / result["gc_padded_pairs_per_s"]
    return result


def main(argv=None) -> int:
    """CLI: benchmark each --batch and print a table (optionally write JSON)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_model_args(parser)
    parser.add_argument("--data", default=str(STSB_DIR / "sts-train.csv"))
    parser.add_argument("--batch", type=int, nargs="+", default=[32, 128])
    parser.add_argument("--steps", type=int, nargs="+", default=[16, 6],
                        help="timed steps per batch size (one value, or one per --batch)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved chunks per library")
    parser.add_argument("--max-seq-length", type=int, default=128)
    parser.add_argument("--buckets", type=int, nargs="+", default=list(QUICKSTART_BUCKETS),
                        help="siamjax pad lengths (default: configs/stsb_minilm.py's data.buckets)")
    parser.add_argument("--pack-length", type=int, default=128,
                        help="siamjax packs each side into rows of this many tokens (data.pack_length); "
                             "0 pads to --buckets instead")
    parser.add_argument("--padded", action="store_true",
                        help="also time siamjax padding to --buckets (no packing) in the same run")
    parser.add_argument("--grad-cache", action="store_true",
                        help="also time siamjax GradCache on packed vs padded batches (--gc-* below)")
    parser.add_argument("--gc-batch", type=int, default=128, help="GradCache row: batch size")
    parser.add_argument("--gc-steps", type=int, default=6, help="GradCache row: timed steps")
    parser.add_argument("--gc-chunk", type=int, default=32, help="GradCache row: padded chunk (pairs)")
    parser.add_argument("--gc-tokens", type=int, default=512,
                        help="GradCache row: packed chunk (tokens per side, a multiple of --pack-length)")
    parser.add_argument("--only-grad-cache", action="store_true", help="skip the library comparison rows")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args(argv)
    steps = args.steps * len(args.batch) if len(args.steps) == 1 else args.steps
    if len(steps) != len(args.batch):
        parser.error(f"--steps takes one value or one per --batch ({len(args.batch)})")
    set_threads(args.threads)
    s1, s2, _ = read_stsb(args.data)
    args.model = model_folder(args, s1 + s2)
    env = environment()
    print(f"# {env}")
    command = "python bench/train_throughput.py " + " ".join(sys.argv[1:] if argv is None else argv)
    rows, gc_rows = [], []
    for batch_size, n in ([] if args.only_grad_cache else zip(args.batch, steps)):
        rows.append(bench_batch_size(args.model, s1, s2, batch_size=batch_size, warmup=args.warmup, steps=n,
                                     rounds=args.rounds, max_seq_length=args.max_seq_length,
                                     buckets=tuple(args.buckets), pack_length=args.pack_length,
                                     padded=args.padded, dtype=args.dtype))
        env["load_avg_1m_end"] = os.getloadavg()[0]
        if args.json:  # after every batch size, so a run killed later (e.g. OOM) keeps what it measured
            pathlib.Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            pathlib.Path(args.json).write_text(json.dumps({"command": command, "environment": env,
                                                           "results": rows}, indent=1))
    if args.grad_cache or args.only_grad_cache:
        pack = args.pack_length or 128
        gc_rows.append(bench_grad_cache(args.model, s1, s2, batch_size=args.gc_batch, warmup=args.warmup,
                                        steps=args.gc_steps, rounds=args.rounds, max_seq_length=args.max_seq_length,
                                        buckets=tuple(args.buckets), pack_length=pack, chunk=args.gc_chunk,
                                        chunk_tokens=args.gc_tokens))
        env["load_avg_1m_end"] = os.getloadavg()[0]
        if args.json:
            pathlib.Path(args.json).write_text(json.dumps({"command": command, "environment": env,
                                                           "results": rows, "grad_cache": gc_rows}, indent=1))
    if rows:
        print(results_table(rows))
    if gc_rows:
        print(grad_cache_table(gc_rows))
    return 0


def grad_cache_table(rows: list[dict]) -> str:
    """Markdown table of the GradCache rows: packed vs padded chunks, pairs/s and tokens/pair."""
    head = ("| batch | GradCache padded (chunk pairs) pairs/s | GradCache packed (chunk tokens) pairs/s | "
            "packed / padded | tokens/pair padded / packed |")
    lines = ["", head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        lines.append(f"| {r['batch_size']} | {r['gc_padded_pairs_per_s']:.1f} ({r['chunk_pairs_padded']}) | "
                     f"{r['gc_packed_pairs_per_s']:.1f} ({r['chunk_tokens_packed']}) | "
                     f"{r['packed_over_padded']:.2f}x | {r['gc_padded_tokens_per_pair']:.1f} / "
                     f"{r['gc_packed_tokens_per_pair']:.1f} |")
    return "\n".join(lines)


def results_table(rows: list[dict]) -> str:
    """Markdown table of the results (the form RESULTS.md quotes)."""
    padded = all("jax_padded_pairs_per_s" in r for r in rows)
    head = ("| batch | sentence-transformers pairs/s | siamjax pairs/s | ratio | siamjax compile s "
            "| tokens/pair real / ST / siamjax |" + (" siamjax padded pairs/s (ratio) |" if padded else ""))
    lines = ["", head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        line = (f"| {r['batch_size']} | {r['torch_pairs_per_s']:.1f} | {r['jax_pairs_per_s']:.1f} | "
                f"{r['ratio']:.2f}x | {r['jax_compile_s']:.1f} | {r['real_tokens_per_pair']:.1f} / "
                f"{r['torch_tokens_per_pair']:.1f} / {r['jax_tokens_per_pair']:.1f} |")
        if padded:
            line += f" {r['jax_padded_pairs_per_s']:.1f} ({r['jax_padded_ratio']:.2f}x) |"
        lines.append(line)
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
