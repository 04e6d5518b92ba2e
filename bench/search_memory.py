"""Exact top-k search of a 1M x 384 float32 random corpus on CPU: time and peak memory.

Why: `siamjax.search.semantic_search` claims memory O(query_chunk * (corpus_chunk + k)) on top
of the corpus itself, i.e. it never builds a queries x corpus (let alone N x N) score matrix.
This measures it: the process's resident memory is sampled every 20 ms during the search and the
peak above the pre-search baseline (corpus and queries already in memory) is printed beside
the size a full Q x N float32 score matrix would have. A few queries are checked against a
brute-force numpy search so the speed is not bought with wrong answers.

    python bench/search_memory.py                       # 1M x 384, 1000 queries, 1 CPU device
    python bench/search_memory.py --devices 8           # same on 8 fake CPU devices
    python bench/search_memory.py --n 200000 --queries 100 --chunk 16384
"""
from __future__ import annotations

import argparse
import os
import threading
import time


def rss_bytes() -> int:
    """Resident set size of this process, from /proc (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRSS:
    """Samples RSS in a background thread; `.peak` is the maximum seen while running."""

    def __init__(self, interval: float = 0.02):
        self.interval, self.peak, self._stop = interval, rss_bytes(), threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes())
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="corpus rows")
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--top-k", type=int, default=10)
    parser.add_argument("--chunk", type=int, default=32768, help="corpus rows per step (all devices)")
    parser.add_argument("--query-chunk", type=int, default=1024)
    parser.add_argument("--devices", type=int, default=1, help="CPU devices (fake ones beyond the first)")
    parser.add_argument("--check", type=int, default=8, help="queries verified against numpy brute force")
    args = parser.parse_args()

    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                               + f" --xla_force_host_platform_device_count={args.devices}").strip()
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import jax
    import numpy as np

    from siamjax import search

    rng = np.random.default_rng(0)
    corpus = np.empty((args.n, args.dim), np.float32)
    for start in range(0, args.n, 100_000):  # fill in slices: no float64 temporary of the whole corpus
        stop = min(start + 100_000, args.n)
        corpus[start:stop] = rng.standard_normal((stop - start, args.dim), dtype=np.float32)
    queries = rng.standard_normal((args.queries, args.dim), dtype=np.float32)
    mesh = search.search_mesh()

    # warm-up compile on a tiny slice of the same chunk shapes, then measure
    search.semantic_search(queries, corpus[: args.chunk + 1], args.top_k, corpus_chunk_size=args.chunk,
                           query_chunk_size=args.query_chunk, mesh=mesh)
    baseline = rss_bytes()
    with PeakRSS() as peak:
        t0 = time.perf_counter()
        scores, idx = search.semantic_search(queries, corpus, args.top_k, corpus_chunk_size=args.chunk,
                                             query_chunk_size=args.query_chunk, mesh=mesh)
        elapsed = time.perf_counter() - t0

    q = queries[: args.check] / np.linalg.norm(queries[: args.check], axis=1, keepdims=True)
    c_norm = np.linalg.norm(corpus, axis=1)
    ref_scores = (q @ corpus.T) / c_norm
    ref_idx = np.argsort(-ref_scores, axis=1, kind="stable")[:, : args.top_k]
    exact = bool(np.array_equal(ref_idx, idx[: args.check]))

    mib = 2**20
    q_rows = min(args.query_chunk, args.queries)
    bound = 4 * (q_rows * (args.chunk + len(mesh.devices.flat) * args.top_k) + args.chunk * args.dim)
    print(f"devices            {len(jax.devices())} x {jax.devices()[0].platform}")
    print(f"corpus             {args.n:,} x {args.dim} float32 ({corpus.nbytes / mib:,.0f} MiB, held on the host)")
    print(f"queries, top-k     {args.queries:,}, {args.top_k}   (corpus chunk {args.chunk:,}, query chunk {q_rows:,})")
    print(f"search time        {elapsed:.2f} s  ({args.queries * args.n / elapsed / 1e9:.2f} G scores/s)")
    print(f"peak RSS           {peak.peak / mib:,.0f} MiB total, {(peak.peak - baseline) / mib:,.0f} MiB above "
          f"the pre-search baseline of {baseline / mib:,.0f} MiB")
    print(f"working-set bound  {bound / mib:,.0f} MiB  (scores of one query chunk x corpus chunk + the chunk)")
    print(f"full Q x N matrix  {4 * args.queries * args.n / mib:,.0f} MiB;  N x N: {4 * args.n**2 / 2**40:,.1f} TiB "
          f"(never built)")
    print(f"exact vs numpy     {exact} on {args.check} queries")
    if not exact:
        raise SystemExit("sharded search disagrees with brute force")


if __name__ == "__main__":
    main()
