"""Information retrieval: MRR@k, nDCG@k, Accuracy@k, Precision/Recall@k and MAP@k (x100) of
embedding search over a corpus, with binary relevance, as sentence-transformers'
InformationRetrievalEvaluator computes them."""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from siamjax.data.beir import read_beir
from siamjax.evaluation.embed import embed
from siamjax.search.exact import semantic_search


def hit_matrix(ranked_ids: Sequence[Sequence[str]], relevant: Sequence[set[str]], max_k: int) -> np.ndarray:
    """bool [Q, max_k]: is the doc at each rank relevant (False past the end of short lists)."""
    hits = np.zeros((len(ranked_ids), max_k), dtype=bool)
    for q, (ids, rel) in enumerate(zip(ranked_ids, relevant)):
        for r, doc in enumerate(ids[:max_k]):
            hits[q, r] = doc in rel
    return hits


def ranking_metrics(
    hits_QxK: np.ndarray,
    n_relevant_Q: np.ndarray,
    *,
    mrr_at_k: Sequence[int] = (10,),
    ndcg_at_k: Sequence[int] = (10,),
    accuracy_at_k: Sequence[int] = (1, 3, 5, 10),
    precision_recall_at_k: Sequence[int] = (1, 3, 5, 10, 100),
    map_at_k: Sequence[int] = (100,),
) -> dict[str, float]:
    """Rank metrics (x100) from a hit matrix and the number of relevant docs per query.

    Why: the metric maths separated from search, so it can be checked against a plain loop and
    reused with any ranking (re-rankers, quantised search).
    """
    hits = np.asarray(hits_QxK, dtype=bool)
    n_rel = np.asarray(n_relevant_Q, dtype=np.float64)
    if hits.shape[0] == 0 or np.any(n_rel <= 0):
        raise ValueError("need at least one query, and every query needs a relevant document")
    need = max([*mrr_at_k, *ndcg_at_k, *accuracy_at_k, *precision_recall_at_k, *map_at_k])
    if hits.shape[1] < need:
        hits = np.pad(hits, ((0, 0), (0, need - hits.shape[1])))
    ranks = np.arange(1, hits.shape[1] + 1)
    discount = 1.0 / np.log2(ranks + 1)
    out: dict[str, float] = {}
    for k in accuracy_at_k:
        out[f"accuracy@{k}"] = hits[:, :k].any(axis=1).mean()
    for k in precision_recall_at_k:
        correct = hits[:, :k].sum(axis=1)
        out[f"precision@{k}"] = (correct / k).mean()
        out[f"recall@{k}"] = (correct / n_rel).mean()
    for k in mrr_at_k:
        h = hits[:, :k]
        first = np.argmax(h, axis=1)
        out[f"mrr@{k}"] = np.where(h.any(axis=1), 1.0 / (first + 1), 0.0).mean()
    for k in ndcg_at_k:
        dcg = (hits[:, :k] * discount[:k]).sum(axis=1)
        ideal = np.cumsum(discount[:k])[np.minimum(n_rel, k).astype(int) - 1]
        out[f"ndcg@{k}"] = (dcg / ideal).mean()
    for k in map_at_k:
        h = hits[:, :k]
        precision_at_rank = np.cumsum(h, axis=1) / ranks[:k]
        out[f"map@{k}"] = ((precision_at_rank * h).sum(axis=1) / np.minimum(n_rel, k)).mean()
    return {name: 100 * float(v) for name, v in out.items()}


class RetrievalEvaluator:
    """Embed queries and corpus, search the corpus for each query, score the ranking.

    Why: retrieval quality (nDCG@10, MRR@10, Recall@k) is what a bi-encoder is usually trained
    for. Metric names are `<score>_<metric>@k`, e.g. `cosine_ndcg@10`, all x100. Queries without
    a relevant document are skipped; ties rank the smaller corpus id first (like
    sentence-transformers), because the corpus is searched in sorted-id order.
    """

    def __init__(
        self,
        queries: Mapping[str, str],
        corpus: Mapping[str, str],
        relevant_docs: Mapping[str, set[str]],
        *,
        scores: Sequence[str] = ("cosine",),
        mrr_at_k: Sequence[int] = (10,),
        ndcg_at_k: Sequence[int] = (10,),
        accuracy_at_k: Sequence[int] = (1, 3, 5, 10),
        precision_recall_at_k: Sequence[int] = (1, 3, 5, 10, 100),
        map_at_k: Sequence[int] = (100,),
        corpus_chunk_size: int = 65536,
        show_progress: bool = False,
        name: str = "retrieval",
    ):
        for s in scores:
            if s not in ("cosine", "dot"):
                raise ValueError(f"retrieval scores must be 'cosine' or 'dot', got {s!r}")
        self.query_ids = [q for q in queries if relevant_docs.get(q)]
        if not self.query_ids:
            raise ValueError("no query has a relevant document")
        self.queries = [queries[q] for q in self.query_ids]
        self.corpus_ids = sorted(corpus)
        if not self.corpus_ids:
            raise ValueError("corpus is empty")
        self.corpus = [corpus[c] for c in self.corpus_ids]
        self.relevant = [set(relevant_docs[q]) for q in self.query_ids]
        unknown = sorted({d for docs in self.relevant for d in docs} - set(corpus))
        if unknown:  # they could never be retrieved: every metric would silently drop
            raise ValueError(f"{len(unknown)} relevant document id(s) are not in the corpus, e.g. {unknown[:3]}")
        self.scores = tuple(scores)
        self.ks = dict(mrr_at_k=tuple(mrr_at_k), ndcg_at_k=tuple(ndcg_at_k), accuracy_at_k=tuple(accuracy_at_k),
                       precision_recall_at_k=tuple(precision_recall_at_k), map_at_k=tuple(map_at_k))
        self.max_k = max(max(v) for v in self.ks.values())
        self.corpus_chunk_size, self.show_progress, self.name = corpus_chunk_size, show_progress, name
        self.primary_metric = f"{self.scores[0]}_ndcg@{max(self.ks['ndcg_at_k'])}"
        self.skipped_qrels: list = []  # judgements left out while reading (from_beir, on_bad_row="skip")

    @classmethod
    def from_beir(cls, directory, split: str = "test", *, on_bad_row: str = "error", **kwargs) -> "RetrievalEvaluator":
        """Evaluator over a BEIR folder (corpus.jsonl, queries.jsonl, qrels/<split>.tsv); qrels
        naming unknown ids are errors, or skipped with `on_bad_row="skip"` (counted in
        `skipped_qrels`)."""
        data = read_beir(directory, split, on_bad_row=on_bad_row)
        evaluator = cls(data.queries, data.corpus, data.relevant_docs, **kwargs)
        evaluator.skipped_qrels = data.bad_rows
        return evaluator

    def rank(self, query_emb_QxD, corpus_emb_NxD, score: str = "cosine") -> tuple[np.ndarray, list[list[str]]]:
        """Top-max_k (scores [Q, k], corpus ids) per query, by the sharded exact search."""
        scores_QxK, idx_QxK = semantic_search(
            query_emb_QxD, corpus_emb_NxD, self.max_k, score=score,
            corpus_chunk_size=self.corpus_chunk_size, show_progress=self.show_progress,
        )
        return scores_QxK, [[self.corpus_ids[i] for i in row] for row in idx_QxK]

    def compute(self, query_emb_QxD, corpus_emb_NxD) -> dict[str, float]:
        """Metrics from embeddings of `self.queries` and `self.corpus` (in sorted corpus-id order)."""
        if len(query_emb_QxD) != len(self.queries) or len(corpus_emb_NxD) != len(self.corpus):
            raise ValueError(
                f"expected {len(self.queries)} query and {len(self.corpus)} corpus embeddings, got "
                f"{len(query_emb_QxD)} and {len(corpus_emb_NxD)}"
            )
        n_rel = np.array([len(r) for r in self.relevant])
        out = {}
        for score in self.scores:
            _, ranked = self.rank(query_emb_QxD, corpus_emb_NxD, score)
            metrics = ranking_metrics(hit_matrix(ranked, self.relevant, self.max_k), n_rel, **self.ks)
            out.update({f"{score}_{name}": v for name, v in metrics.items()})
        return out

    def __call__(self, model) -> dict[str, float]:
        """Encode queries (`encode_query`) and corpus (`encode_document`) with `model`, as
        sentence-transformers' InformationRetrievalEvaluator does, and return the metrics."""
        return self.compute(embed(model, self.queries, "query"), embed(model, self.corpus, "document"))
