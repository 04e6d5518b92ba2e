"""Semantic textual similarity: Pearson and Spearman correlation (x100) between gold scores and
cosine / dot / negative Euclidean / negative Manhattan similarity of the embedded pairs."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import stats

from siamjax.evaluation import readers
from siamjax.evaluation.embed import embed_unique

PAIR_SIMILARITIES = ("cosine", "dot", "euclidean", "manhattan")


def pairwise_similarity(a_NxD: np.ndarray, b_NxD: np.ndarray, similarity: str) -> np.ndarray:
    """[N] similarity of matching rows, higher = more similar (distances are negated), as in
    sentence-transformers' pairwise_* functions."""
    a, b = np.asarray(a_NxD, np.float64), np.asarray(b_NxD, np.float64)
    if similarity == "cosine":
        a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
        b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
        return np.sum(a * b, axis=1)
    if similarity == "dot":
        return np.sum(a * b, axis=1)
    if similarity == "euclidean":
        return -np.linalg.norm(a - b, axis=1)
    if similarity == "manhattan":
        return -np.sum(np.abs(a - b), axis=1)
    raise ValueError(f"similarity must be one of {PAIR_SIMILARITIES}, got {similarity!r}")


def sts_metrics(emb1_NxD, emb2_NxD, scores_N, similarities: Sequence[str] = PAIR_SIMILARITIES) -> dict[str, float]:
    """{pearson_<sim>, spearman_<sim>} x100 for each similarity; the pure core of STSEvaluator."""
    scores = np.asarray(scores_N, np.float64)
    if len(scores) < 2 or not (len(emb1_NxD) == len(emb2_NxD) == len(scores)):
        raise ValueError(
            f"need >= 2 pairs with one score each; got {len(emb1_NxD)}, {len(emb2_NxD)} embeddings "
            f"and {len(scores)} scores"
        )
    out = {}
    for sim in similarities:
        pred = pairwise_similarity(emb1_NxD, emb2_NxD, sim)
        out[f"pearson_{sim}"] = 100 * float(stats.pearsonr(scores, pred)[0])
        out[f"spearman_{sim}"] = 100 * float(stats.spearmanr(scores, pred)[0])
    return out


class STSEvaluator:
    """Correlation of embedding similarity with human similarity scores.

    Why: STS Spearman (cosine) is the standard quality number of a sentence embedding model, and
    the usual model-selection metric during training. `STSEvaluator(s1, s2, scores)(encode)`.
    """

    primary_metric = "spearman_cosine"

    def __init__(self, sentences1: Sequence[str], sentences2: Sequence[str], scores, *,
                 similarities: Sequence[str] = PAIR_SIMILARITIES, name: str = "sts"):
        if not (len(sentences1) == len(sentences2) == len(scores)):
            raise ValueError(f"lengths differ: {len(sentences1)}, {len(sentences2)}, {len(scores)}")
        for sim in similarities:
            if sim not in PAIR_SIMILARITIES:
                raise ValueError(f"similarity must be one of {PAIR_SIMILARITIES}, got {sim!r}")
        self.sentences1, self.sentences2 = list(sentences1), list(sentences2)
        self.scores = np.asarray(scores, np.float64)
        self.similarities, self.name = tuple(similarities), name

    @classmethod
    def from_file(cls, path, *, format: str = "auto", columns=None, **kwargs) -> "STSEvaluator":
        """Evaluator over an STS-b / SICK / csv / tsv / jsonl file (see `readers.read_sts`)."""
        data = readers.read_sts(path, format=format, columns=columns)
        return cls(data.sentences1, data.sentences2, data.scores, **kwargs)

    def __len__(self) -> int:
        return len(self.scores)

    def compute(self, emb1_NxD, emb2_NxD) -> dict[str, float]:
        """Metrics from precomputed embeddings of sentences1 and sentences2."""
        return sts_metrics(emb1_NxD, emb2_NxD, self.scores, self.similarities)

    def __call__(self, model) -> dict[str, float]:
        """Encode the (deduplicated) sentences with `model` and return the metrics."""
        emb1, emb2 = embed_unique(model, self.sentences1, self.sentences2)
        return self.compute(emb1, emb2)
