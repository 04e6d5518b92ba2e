"""Hard-negative mining with the model itself: sentence-transformers' `mine_hard_negatives`,
encoded and searched over the device mesh.

For each (anchor, positive) pair, the corpus (the positives, plus an optional extra corpus) is
searched with the anchor's embedding; candidates are filtered (positives, the anchor's own text, rank
window `range_min`..`range_max`, `max_score`/`min_score`, margins to the positive's score) and
`num_negatives` are taken, the top ones or a random sample. The result is a dict of columns in
one of sentence-transformers' output formats, with the same negatives, order and scores (tested
to 1e-5 against sentence-transformers 6.3 on 1 and 8 devices; 6.3 stopped mining an anchor
that is in the corpus as its own negative).

Why here: embedding is sharded row-wise over a 1-D device mesh (`encode_sharded`) and the top-k
is the exact sharded search (`semantic_search`), so the corpus never sits on one device and no
queries x corpus matrix is built. Ties in the candidate order fall to the lower corpus index.
The CrossEncoder re-scoring, FAISS and the embedding cache of sentence-transformers are not
provided.
"""
from __future__ import annotations

import collections
import functools
import logging
import random
from collections.abc import Mapping, Sequence

import jax
import numpy as np

from siamjax.encoder.sentence_encoder import SentenceEncoder
from siamjax.search.exact import search_mesh, semantic_search

log = logging.getLogger(__name__)
SAMPLING_STRATEGIES = ("top", "random")
FORMATS = ("triplet", "n-tuple", "labeled-pair", "labeled-list")  # and "n-tuple-scores" (= n-tuple + scores)


def encode_sharded(model: SentenceEncoder, texts: Sequence[str], *, mesh: jax.sharding.Mesh | None = None,
                   batch_size: int = 32, show_progress: bool = False, task: str | None = None,
                   prompt: str | None = None, prompt_name: str | None = None) -> np.ndarray:
    """L2-normalised float32 embeddings `[N, D]`, each call's rows split over the devices of `mesh`.

    `task` "query" / "document" encodes with `encode_query` / `encode_document` (their default
    prompts), None with `encode`; `prompt` / `prompt_name` as there.
    """
    mesh = search_mesh() if mesh is None else mesh
    encode = {"query": model.encode_query, "document": model.encode_document, None: model.encode}[task]
    return encode(list(texts), batch_size=batch_size, normalize=True, mesh=mesh, show_progress=show_progress,
                  prompt=prompt, prompt_name=prompt_name)


def _columns(dataset, anchor_column_name, positive_column_name) -> tuple[str, str, list[str], list[str]]:
    """(anchor name, positive name, anchors, positives) of a column dict or a PairDataset."""
    if hasattr(dataset, "sides") and hasattr(dataset, "texts"):
        dataset = dict(zip(dataset.sides, dataset.texts))
    if not isinstance(dataset, Mapping):
        raise TypeError(f"dataset must be a column -> texts mapping or a PairDataset, got {type(dataset).__name__}")
    names = list(dataset)
    anchor = anchor_column_name if anchor_column_name in names else (names[0] if names else None)
    if positive_column_name not in names:
        if len(names) < 2:
            raise ValueError("Dataset must contain at least two columns to select the positive column automatically.")
        positive_column_name = names[1]
    anchors, positives = list(dataset[anchor]), list(dataset[positive_column_name])
    if not anchors:
        raise ValueError("The dataset is empty. Please provide a non-empty dataset.")
    return anchor, positive_column_name, anchors, positives


def _window(range_min: int, range_max: int | None, num_negatives: int, max_positives: int, filtered: bool) -> int:
    """`range_max` (by default room for the negatives, 10x more if a filter may drop candidates,
    plus the positives), after checking the window holds `num_negatives` candidates."""
    if num_negatives < 1:
        raise ValueError(f"num_negatives must be at least 1, got num_negatives={num_negatives}.")
    if range_max is None:
        range_max = range_min + num_negatives * (10 if filtered else 1) + max_positives
    if range_min < 0:
        raise ValueError(f"range_min must be non-negative, got range_min={range_min}.")
    if range_min >= range_max:
        raise ValueError(f"range_min must be smaller than range_max, got range_min={range_min} and "
                         f"range_max={range_max}.")
    if num_negatives > range_max - range_min:
        raise ValueError(f"Cannot mine {num_negatives} negatives per query: only {range_max - range_min} "
                         f"candidates remain after skipping the first range_min={range_min} of "
                         f"range_max={range_max}. Consider decreasing num_negatives or range_min, or "
                         "increasing range_max.")
    return range_max


def _normalize_format(output_format: str, output_scores: bool, include_positives: bool) -> tuple[str, bool]:
    """sentence-transformers' format rules: include_positives forces n-tuple; n-tuple-scores =
    n-tuple with scores."""
    if include_positives and output_format != "n-tuple":
        log.warning('include_positives=True: output_format is set to "n-tuple" to keep the ranking order')
        output_format = "n-tuple"
    if output_format == "n-tuple-scores":
        output_format, output_scores = "n-tuple", True
    if output_format not in FORMATS:
        raise ValueError(f"Invalid output_format: {output_format}. Must be one of {', '.join(map(repr, FORMATS))} "
                         "or 'n-tuple-scores'.")
    return output_format, output_scores


def mine_hard_negatives(
    dataset,
    model: SentenceEncoder,
    anchor_column_name: str | None = None,
    positive_column_name: str | None = None,
    corpus: Sequence[str] | None = None,
    *,
    range_min: int = 0, range_max: int | None = None,
    max_score: float | None = None, min_score: float | None = None,
    absolute_margin: float | None = None, relative_margin: float | None = None,
    num_negatives: int = 3, sampling_strategy: str = "top",
    query_prompt_name: str | None = None, query_prompt: str | None = None,
    corpus_prompt_name: str | None = None, corpus_prompt: str | None = None,
    include_positives: bool = False, output_format: str = "triplet", output_scores: bool = False,
    batch_size: int = 32, query_chunk_size: int = 16384, mesh: jax.sharding.Mesh | None = None,
    rng: random.Random | None = None, show_progress: bool = True,
) -> dict[str, list]:
    """Add mined hard negatives to (anchor, positive) pairs; sentence-transformers' options.

    `dataset`: column name -> texts (e.g. `datasets.Dataset.to_dict()`) or a `PairDataset`;
    the anchor/positive columns default to the first two. Duplicate anchors are mined once and
    all their positives are excluded. `corpus` adds candidate negatives to the positives.
    Options, output formats ("triplet", "n-tuple", "n-tuple-scores", "labeled-pair",
    "labeled-list") and their columns are those of `sentence_transformers.util.mine_hard_negatives`;
    `query_chunk_size` plays `faiss_batch_size`. "random" sampling draws with `rng.sample` (default:
    Python's global `random`, as sentence-transformers does, so a `random.seed(s)` reproduces it).
    `mesh`: the 1-D search mesh to encode and search on (default: all devices).
    Returns the output columns as a dict of lists.
    """
    anchor_name, positive_name, queries_all, positives = _columns(dataset, anchor_column_name, positive_column_name)
    output_format, output_scores = _normalize_format(output_format, output_scores, include_positives)
    if sampling_strategy not in SAMPLING_STRATEGIES:
        raise ValueError(f"sampling_strategy must be one of {SAMPLING_STRATEGIES}, got {sampling_strategy!r}")
    max_positives = max(collections.Counter(queries_all).values())
    filtered = absolute_margin is not None or relative_margin is not None or max_score is not None
    range_max = _window(range_min, range_max, num_negatives, max_positives, filtered)

    corpus, queries, positive_indices, self_indices = _dedupe(queries_all, positives, corpus,
                                                              include_positives)
    mesh = search_mesh() if mesh is None else mesh
    embed = functools.partial(encode_sharded, model, mesh=mesh, batch_size=batch_size, show_progress=show_progress)
    corpus_emb = embed(corpus, task="document", prompt=corpus_prompt, prompt_name=corpus_prompt_name)
    query_emb = embed(queries, task="query", prompt=query_prompt, prompt_name=query_prompt_name)
    # one slot more than the window and the positives: the query's own text, when the corpus has it
    scores, indices, positive_scores = _candidates(query_emb, corpus_emb, positive_indices,
                                                   range_max + max_positives + 1, query_chunk_size=query_chunk_size,
                                                   mesh=mesh, show_progress=show_progress)
    scores = _filter(scores, indices, positive_indices, self_indices, positive_scores,
                     include_positives=include_positives, absolute_margin=absolute_margin,
                     relative_margin=relative_margin, max_score=max_score, min_score=min_score)
    negative_scores, negative_indices = _select(scores, indices, range_min=range_min, range_max=range_max,
                                                num_negatives=num_negatives, sampling_strategy=sampling_strategy,
                                                rng=random if rng is None else rng)
    return format_output(output_format, output_scores, anchor_name=anchor_name, positive_name=positive_name,
                         queries=queries, corpus=corpus, positive_indices=positive_indices,
                         positive_scores=positive_scores, negative_scores=negative_scores,
                         negative_indices=negative_indices)


def _dedupe(queries_all: list[str], positives: list[str], corpus,
            include_positives: bool) -> tuple[list[str], list[str], list[list[int]], np.ndarray]:
    """(corpus, distinct queries, each query's positives as corpus indices, each query's own corpus
    index or -1), as sentence-transformers builds them: the corpus (default: the positives) plus
    every positive, each text once. A query found in the corpus is never its own negative; with
    `include_positives` a query that is its own positive keeps it (index -1)."""
    corpus = list(dict.fromkeys(list(corpus or positives) + positives))
    corpus_idx = {text: i for i, text in enumerate(corpus)}
    queries = list(dict.fromkeys(queries_all))
    query_idx = {q: i for i, q in enumerate(queries)}
    positive_indices: list[list[int]] = [[] for _ in queries]
    self_indices = np.array([corpus_idx.get(q, -1) for q in queries], np.int64)
    for query, positive in zip(queries_all, positives):
        if corpus_idx[positive] not in positive_indices[query_idx[query]]:
            positive_indices[query_idx[query]].append(corpus_idx[positive])
        if include_positives and query == positive:
            self_indices[query_idx[query]] = -1
    return corpus, queries, positive_indices, self_indices


def _candidates(query_emb, corpus_emb, positive_indices, width: int, **search_options):
    """(scores, corpus indices) `[Q, width]` of each query's nearest corpus texts (padded with
    -inf / -1 past the corpus size), and the score of every (query, positive) pair, in order."""
    scores, indices = semantic_search(query_emb, corpus_emb, min(width, len(corpus_emb)), score="cosine",
                                      **search_options)
    scores = np.pad(scores, ((0, 0), (0, width - scores.shape[1])), constant_values=-np.inf)
    indices = np.pad(indices, ((0, 0), (0, width - indices.shape[1])), constant_values=-1)
    q_rows = np.repeat(np.arange(len(positive_indices)), [len(p) for p in positive_indices])
    pos_rows = np.concatenate([np.asarray(p, np.int64) for p in positive_indices])
    positive_scores = np.sum(query_emb[q_rows] * corpus_emb[pos_rows], axis=1, dtype=np.float32)
    return scores, indices, positive_scores


def _filter(scores_QxK, indices_QxK, positive_indices, self_indices_Q, positive_scores_P, *, include_positives: bool,
            absolute_margin, relative_margin, max_score, min_score) -> np.ndarray:
    """The candidate scores with every disqualified candidate set to -inf (sentence-transformers' rules)."""
    scores = np.array(scores_QxK, np.float32)
    scores[indices_QxK == -1] = -np.inf
    scores[indices_QxK == self_indices_Q[:, None]] = -np.inf
    if not include_positives:
        scores[np.stack([np.isin(row, pos) for row, pos in zip(indices_QxK, positive_indices)])] = -np.inf
    skipped = {}
    if absolute_margin is not None or relative_margin is not None:
        # the hardest (lowest-scoring) positive of each query sets the margin
        ends = np.cumsum([len(p) for p in positive_indices])
        hardest_Q = np.minimum.reduceat(positive_scores_P, ends - np.array([len(p) for p in positive_indices]))
        if absolute_margin is not None:
            drop = scores + np.float32(absolute_margin) > hardest_Q[:, None]
            scores[drop], skipped["absolute_margin"] = -np.inf, int(drop.sum())
        if relative_margin is not None:
            drop = scores > (hardest_Q - np.abs(hardest_Q) * np.float32(relative_margin))[:, None]
            scores[drop], skipped["relative_margin"] = -np.inf, int(drop.sum())
    if max_score is not None:
        drop = scores > np.float32(max_score)
        scores[drop], skipped["max_score"] = -np.inf, int(drop.sum())
    if min_score is not None:
        drop = (scores < np.float32(min_score)) & (scores != -np.inf)
        scores[drop], skipped["min_score"] = -np.inf, int(drop.sum())
    for name, count in skipped.items():
        if count:
            log.info("skipped %d potential negatives due to %s", count, name)
    return scores


def _select(scores_QxK, indices_QxK, *, range_min: int, range_max: int, num_negatives: int,
            sampling_strategy: str, rng) -> tuple[np.ndarray, np.ndarray]:
    """(scores, corpus indices) `[Q, num_negatives]` of the chosen negatives, best first; -inf
    marks a slot no candidate could fill."""
    order = np.argsort(-scores_QxK, axis=1, kind="stable")[:, :range_max]
    scores = np.take_along_axis(scores_QxK, order, axis=1)[:, range_min:]
    indices = np.take_along_axis(indices_QxK, order, axis=1)[:, range_min:]
    if sampling_strategy == "top":
        return scores[:, :num_negatives], indices[:, :num_negatives]
    options = np.maximum(indices.shape[1] - np.isinf(scores).sum(1), num_negatives)
    picked = np.asarray([rng.sample(range(int(n)), k=num_negatives) for n in options])
    scores = np.take_along_axis(scores, picked, axis=1)
    indices = np.take_along_axis(indices, picked, axis=1)
    resort = np.argsort(-scores, axis=1, kind="stable")
    return np.take_along_axis(scores, resort, axis=1), np.take_along_axis(indices, resort, axis=1)


def format_output(output_format: str, output_scores: bool, *, anchor_name: str, positive_name: str,
                  queries: list[str], corpus: list[str], positive_indices: list[list[int]],
                  positive_scores: np.ndarray, negative_scores: np.ndarray,
                  negative_indices: np.ndarray) -> dict[str, list]:
    """The output columns of one format, built as sentence-transformers builds them: one row
    per (anchor, positive) pair, in anchor order (triplet, n-tuple, labeled-list), or one row per
    anchor-document pair (labeled-pair)."""
    q_rows = np.repeat(np.arange(len(queries)), [len(p) for p in positive_indices])
    pos_rows = np.concatenate([np.asarray(p, np.int64) for p in positive_indices])
    neg_idx_RxN, neg_sc_RxN = negative_indices[q_rows], negative_scores[q_rows]
    finite_RxN = neg_sc_RxN != -np.inf
    if output_format == "labeled-pair":
        return _labeled_pairs(output_scores, anchor_name, positive_name, queries, corpus, positive_indices,
                              positive_scores, negative_scores, negative_indices)
    if output_format == "triplet":
        r, n = np.nonzero(finite_RxN)  # row-major, as torch's boolean indexing
        out = {anchor_name: [queries[q] for q in q_rows[r]], positive_name: [corpus[p] for p in pos_rows[r]],
               "negative": [corpus[i] for i in neg_idx_RxN[r, n]]}
        if output_scores:
            out["scores"] = [[float(a), float(b)] for a, b in zip(positive_scores[r], neg_sc_RxN[r, n])]
        return out
    if output_format == "n-tuple":
        keep = finite_RxN.all(axis=1)
        out = {anchor_name: [queries[q] for q in q_rows[keep]], positive_name: [corpus[p] for p in pos_rows[keep]]}
        for i, column in enumerate(neg_idx_RxN[keep].T, start=1):
            out[f"negative_{i}"] = [corpus[j] for j in column]
        if output_scores:
            out["scores"] = np.concatenate([positive_scores[keep, None], neg_sc_RxN[keep]], axis=1).tolist()
        return out
    keep = finite_RxN.any(axis=1)  # labeled-list
    rows = np.nonzero(keep)[0]
    out = {anchor_name: [queries[q_rows[r]] for r in rows],
           positive_name: [[corpus[pos_rows[r]]] + [corpus[j] for j in neg_idx_RxN[r][finite_RxN[r]]] for r in rows]}
    if output_scores:
        out["scores"] = [[float(positive_scores[r])] + neg_sc_RxN[r][finite_RxN[r]].tolist() for r in rows]
    else:
        out["labels"] = [[1] + [0] * int(finite_RxN[r].sum()) for r in rows]
    return out


def _labeled_pairs(output_scores, anchor_name, positive_name, queries, corpus, positive_indices,
                   positive_scores, negative_scores, negative_indices) -> dict[str, list]:
    """(anchor, document, label 1/0 or score) rows: each anchor's positives, then its negatives."""
    anchors, documents, values = [], [], []
    k = 0
    for q, query in enumerate(queries):
        for p in positive_indices[q]:
            anchors.append(query)
            documents.append(corpus[p])
            values.append(float(positive_scores[k]) if output_scores else 1)
            k += 1
        for j, score in zip(negative_indices[q], negative_scores[q]):
            if score == -np.inf:
                continue
            anchors.append(query)
            documents.append(corpus[j])
            values.append(float(score) if output_scores else 0)
    return {anchor_name: anchors, positive_name: documents, ("score" if output_scores else "label"): values}
