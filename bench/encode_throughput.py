"""Encoding throughput, siamjax vs sentence-transformers, side by side in one process.

Why: inference speed is half the claim, and the embeddings must be the same model's: this
encodes the 2,758 STS-b test sentences (both columns, duplicates kept) with all-MiniLM-L6-v2 (or
`--model FOLDER` of any family, or `--shape NAME`, a random folder of a named shape:
`bench/shapes.py`) in both libraries, in float32 or bf16 (`--dtype bfloat16`: the
sentence-transformers model cast to bf16, siamjax `dtype="bfloat16"`), on CUDA when PyTorch sees it, at the same batch size and max_seq_length, prints sentences/s and the ratio, and
the STS-b test Spearman (cosine) each library's embeddings give, which must agree.

Protocol: each library's own `encode(sentences, batch_size)` is timed end to end, tokenisation
included (sentence-transformers sorts by length and pads each batch to its longest; siamjax
packs several texts per row into a few fixed row shapes, so XLA compiles a few shapes). One warm-up pass per library is excluded (for siamjax it compiles the row
shapes; its time is reported as the first-pass time). Timed passes alternate between the
libraries (`--rounds`, the first to run alternating) so both see the same background load.

    python bench/encode_throughput.py                      # batch 64 and 256, ~3 min on 2 cores
    python bench/encode_throughput.py --batch 64 --rounds 3 --json bench/results/encode.json
    python bench/encode_throughput.py --shape gemma3-300m --batch 64 --rounds 1
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import time

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see train_throughput.py

import numpy as np
from scipy import stats

REPO = pathlib.Path(__file__).resolve().parents[1]
for path in (REPO, REPO / "bench"):  # run from a checkout without `pip install -e .`
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))
from environment import (STSB_DIR, add_model_args, environment, model_folder, read_stsb,  # noqa: E402
                         set_threads, torch_device)

# x100 points: the same model in two libraries must give the same number (bf16 rounds differently)
SPEARMAN_TOLERANCE = {"float32": 0.05, "bfloat16": 1.0}


def spearman_cosine(emb_2NxD: np.ndarray, scores_N: np.ndarray) -> float:
    """Spearman x100 between gold scores and cosine(emb[i], emb[N + i]) (s1 then s2 stacked)."""
    n = len(scores_N)
    a, b = emb_2NxD[:n].astype(np.float64), emb_2NxD[n:].astype(np.float64)
    cos = np.sum(a * b, 1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)
    return 100.0 * float(stats.spearmanr(scores_N, cos)[0])


def min_row_cosine(a_NxD: np.ndarray, b_NxD: np.ndarray) -> float:
    """The worst per-sentence cosine between two libraries' embeddings of the same sentences."""
    a, b = a_NxD.astype(np.float64), b_NxD.astype(np.float64)
    cos = np.sum(a * b, 1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)
    return float(cos.min())


def load_encoders(model_dir: str, max_seq_length: int, dtype: str = "float32", attention: str = "xla"):
    """(sentence-transformers model in eval mode, siamjax SentenceEncoder), same folder, same
    compute dtype (bf16: the PyTorch model cast to bf16; siamjax bf16 compute, float32 weights)."""
    import torch
    from sentence_transformers import SentenceTransformer

    from siamjax import SentenceEncoder

    st = SentenceTransformer(str(model_dir), device=torch_device())
    st.max_seq_length = max_seq_length
    if dtype == "bfloat16":
        st.to(torch.bfloat16)
    st.eval()
    return st, SentenceEncoder.from_pretrained(model_dir, max_seq_length=max_seq_length, dtype=dtype,
                                               attention=attention)


def encoders_fns(st, sj, batch_size: int) -> dict:
    """name -> callable(sentences) -> float32 [N, D], each library's public encode API."""
    return {
        "torch": lambda s: st.encode(s, batch_size=batch_size, convert_to_numpy=True, show_progress_bar=False)
        .astype(np.float32),
        "jax": lambda s: sj.encode(s, batch_size=batch_size),
    }


def padded_tokens(st, sj, sentences: list[str], batch_size: int) -> dict[str, float]:
    """Tokens each library's encoder computes on, per sentence, and the real tokens per sentence.

    Replays each library's batching: sentence-transformers sorts by character length and pads
    each batch to its longest; siamjax packs texts into rows (`SentenceEncoder.plan_calls`).
    """
    ids = sj.token_ids(sentences)
    lens = np.array([len(x) for x in ids])
    st_order = np.argsort([-len(s) for s in sentences], kind="stable")
    st_total = 0
    for start in range(0, len(sentences), batch_size):
        st_batch = lens[st_order[start:start + batch_size]]
        st_total += len(st_batch) * int(st_batch.max())
    sj_total = sum(row_length * rows for row_length, rows, _ in sj.plan_calls(ids, batch_size))
    n = len(sentences)
    return {"real": float(lens.sum()) / n, "torch": st_total / n, "jax": sj_total / n}


def bench_batch_size(st, sj, sentences: list[str], scores: np.ndarray, *, batch_size: int,
                     rounds: int, log=print) -> dict:
    """sentences/s of both libraries at one batch size, plus their Spearman and max difference."""
    fns = encoders_fns(st, sj, batch_size)
    first, emb = {}, {}
    for lib, fn in fns.items():  # warm-up pass (siamjax: compiles each row shape)
        start = time.perf_counter()
        emb[lib] = np.asarray(fn(sentences), np.float32)
        first[lib] = time.perf_counter() - start
    times = {lib: [] for lib in fns}
    for r in range(rounds):
        for lib in (("torch", "jax") if r % 2 == 0 else ("jax", "torch")):
            start = time.perf_counter()
            fns[lib](sentences)
            times[lib].append(time.perf_counter() - start)
        log(f"  batch {batch_size} round {r + 1}/{rounds}: torch {len(sentences) / times['torch'][-1]:.1f} "
            f"sent/s, siamjax {len(sentences) / times['jax'][-1]:.1f} sent/s")
    n = len(sentences) * rounds
    result = {"batch_size": batch_size, "sentences": len(sentences), "rounds": rounds,
              "torch_sentences_per_s": n / sum(times["torch"]), "jax_sentences_per_s": n / sum(times["jax"]),
              "round_seconds": times, "first_pass_s": first,
              "torch_spearman": spearman_cosine(emb["torch"], scores),
              "jax_spearman": spearman_cosine(emb["jax"], scores),
              "max_abs_diff": float(np.max(np.abs(emb["torch"] - emb["jax"]))),
              "min_cosine": min_row_cosine(emb["torch"], emb["jax"]),
              "tokens_per_sentence": padded_tokens(st, sj, sentences, batch_size)}
    result["ratio"] = result["jax_sentences_per_s"] / result["torch_sentences_per_s"]
    return result


def main(argv=None) -> int:
    """CLI: benchmark each --batch and print a table (optionally write JSON)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_model_args(parser)
    parser.add_argument("--data", default=str(STSB_DIR / "sts-test.csv"))
    parser.add_argument("--batch", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--rounds", type=int, default=2, help="timed passes per library")
    parser.add_argument("--pairs", type=int, default=0, help="only the first N pairs of --data (0: all)")
    parser.add_argument("--max-seq-length", type=int, default=128)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args(argv)
    set_threads(args.threads)
    s1, s2, scores = read_stsb(args.data)
    if args.pairs:
        s1, s2, scores = s1[:args.pairs], s2[:args.pairs], scores[:args.pairs]
    sentences = s1 + s2
    args.model = model_folder(args, sentences)
    env = environment()
    print(f"# {env}\n# {len(sentences)} sentences from {args.data}, {args.dtype}")
    st, sj = load_encoders(args.model, args.max_seq_length, args.dtype)
    rows = [bench_batch_size(st, sj, sentences, scores, batch_size=b, rounds=args.rounds) for b in args.batch]
    env["load_avg_1m_end"] = os.getloadavg()[0]
    print(results_table(rows))
    tolerance = SPEARMAN_TOLERANCE[args.dtype]
    disagree = [r["batch_size"] for r in rows if abs(r["torch_spearman"] - r["jax_spearman"]) > tolerance]
    if disagree:
        print(f"ERROR: Spearman differs by more than {tolerance} at batch {disagree}", file=sys.stderr)
    if args.json:
        command = "python bench/encode_throughput.py " + " ".join(sys.argv[1:] if argv is None else argv)
        out = {"command": command, "environment": env, "results": rows}
        pathlib.Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        pathlib.Path(args.json).write_text(json.dumps(out, indent=1))
    return 1 if disagree else 0


def results_table(rows: list[dict]) -> str:
    """Markdown table of the results (the form RESULTS.md quotes)."""
    lines = ["", "| batch | sentence-transformers sent/s | siamjax sent/s | ratio | Spearman ST | Spearman siamjax "
                 "| max abs diff | siamjax first pass s | tokens/sentence real / ST / siamjax |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        tok = r["tokens_per_sentence"]
        lines.append(f"| {r['batch_size']} | {r['torch_sentences_per_s']:.1f} | {r['jax_sentences_per_s']:.1f} | "
                     f"{r['ratio']:.2f}x | {r['torch_spearman']:.2f} | {r['jax_spearman']:.2f} | "
                     f"{r['max_abs_diff']:.1e} | {r['first_pass_s']['jax']:.1f} | "
                     f"{tok['real']:.1f} / {tok['torch']:.1f} / {tok['jax']:.1f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
