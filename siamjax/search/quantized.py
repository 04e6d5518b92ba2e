"""Top-k search over quantised corpora (int8 / uint8 / binary / ubinary codes).

Binary search ranks by Hamming distance on the sharded exact search and then re-scores an
oversampled candidate list with the float query, which recovers most of the float search's
recall at 1/32 of the memory; int8/uint8 corpora are scored against the float query without
materialising floats. The codecs themselves are `siamjax.quantization`.
"""
from __future__ import annotations

import numpy as np

from siamjax.quantization import PRECISIONS, check_ranges, dequantize_embeddings, quantize_embeddings
from siamjax.search.exact import semantic_search


def _rescore(queries_QxD, candidates_QxM, corpus_rows, top_k: int, dim: int | None, precision: str):
    """Exact float-query scores of each query's candidates; re-rank and keep top_k."""
    q_QxD = np.asarray(queries_QxD, np.float32)
    flat = candidates_QxM.reshape(-1)
    uniq, inverse = np.unique(flat, return_inverse=True)  # sorted reads: friendly to memmaps
    rows = np.asarray(corpus_rows[uniq])
    if precision is not None:
        rows = dequantize_embeddings(rows, precision, dim=dim)
    rows_QxMxD = rows.astype(np.float32)[inverse].reshape(*candidates_QxM.shape, -1)
    scores_QxM = np.einsum("qd,qmd->qm", q_QxD, rows_QxMxD)
    order = np.argsort(-scores_QxM, axis=1, kind="stable")[:, :top_k]
    return (np.take_along_axis(scores_QxM, order, 1).astype(np.float32),
            np.take_along_axis(candidates_QxM, order, 1))


def quantized_search(
    queries,
    corpus,
    top_k: int = 10,
    *,
    precision: str,
    ranges=None,
    rescore: bool = True,
    rescore_multiplier: int = 4,
    rescore_corpus=None,
    **search_kwargs,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k search of float queries [Q, D] over a quantised corpus; (scores, indices) best first.

    Why: the point of quantising a corpus is to search it cheaply; re-scoring the oversampled
    candidates with the float query recovers most of the accuracy lost to quantisation.

    binary/ubinary: candidates by Hamming distance (the query is binarised), then, if `rescore`,
    `top_k * rescore_multiplier` candidates are re-scored by dot product of the float query with
    `rescore_corpus[candidates]` (float [N, D], e.g. a memmap on disk) or, without it, with the
    candidates' +-1 bits. Without `rescore` the scores are Hamming distances (ascending).
    int8/uint8: dot product of the float query with the dequantised corpus (needs `ranges`),
    computed on the quantised values without materialising floats; `rescore_corpus` re-scores.
    Embeddings are assumed normalised (dot == cosine). `search_kwargs` go to `semantic_search`.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    q = np.asarray(queries, np.float32)
    n = corpus.shape[0]
    k = min(top_k, n)
    if rescore_corpus is not None and rescore_corpus.shape[0] != n:
        raise ValueError(f"rescore_corpus has {rescore_corpus.shape[0]} rows but the corpus has {n}")
    oversample = rescore and (precision in ("binary", "ubinary") or rescore_corpus is not None)
    k_first = min(k * max(rescore_multiplier, 1), n) if oversample and precision != "float32" else k

    if precision in ("binary", "ubinary"):
        q_bits = quantize_embeddings(q, precision)
        dist, cand = semantic_search(q_bits, corpus, k_first, score="hamming", **search_kwargs)
        if not rescore:
            return dist, cand
        if rescore_corpus is not None:
            return _rescore(q, cand, rescore_corpus, k, None, None)
        return _rescore(q, cand, corpus, k, q.shape[1], precision)

    if precision == "float32":
        return semantic_search(q, corpus, k, score="dot", **search_kwargs)

    if ranges is None:
        raise ValueError(f"searching a {precision} corpus needs the calibration ranges used to quantise it")
    ranges = check_ranges(ranges, q.shape[1])
    # dequant(x) = start + step * (x + offset + 0.5): the query absorbs the per-dimension step and
    # the constant part becomes a per-query offset, so the corpus stays int8 on device.
    steps_D = (ranges[1] - ranges[0]) / 255
    offset = 128.0 if precision == "int8" else 0.0
    const_Q = q @ (ranges[0] + (offset + 0.5) * steps_D)
    scores, cand = semantic_search(q * steps_D, corpus, k_first, score="dot", **search_kwargs)
    if rescore and rescore_corpus is not None:
        return _rescore(q, cand, rescore_corpus, k, None, None)
    return (scores + const_Q[:, None]).astype(np.float32)[:, :k], cand[:, :k]
