"""Triplet accuracy, binary pair classification (duplicate detection) and paraphrase mining.

Scores are x100; thresholds stay in similarity (cosine, dot) or distance (euclidean, manhattan)
units. Threshold selection follows sentence-transformers' BinaryClassificationEvaluator.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from siamjax.data.readers import read_labelled_pairs, read_triplets
from siamjax.evaluation.embed import check_similarities, embed, embed_unique, pair_scores
from siamjax.search.duplicates import paraphrase_mining_embeddings
from siamjax.similarity import SIMILARITIES

_DISTANCES = ("euclidean", "manhattan")


def triplet_accuracy(anchor_NxD, positive_NxD, negative_NxD, similarity: str = "cosine", margin: float = 0.0) -> float:
    """Share (x100) of triplets whose positive is more similar to the anchor than the negative by > margin."""
    pos = pair_scores(anchor_NxD, positive_NxD, similarity)
    neg = pair_scores(anchor_NxD, negative_NxD, similarity)
    return 100 * float(np.mean(pos - neg > margin))


class TripletEvaluator:
    """Triplet accuracy for each similarity: `TripletEvaluator(a, p, n)(encode)` -> {cosine_accuracy, ...}.

    Why: the direct check of what triplet / MNRL training optimises.
    """

    def __init__(self, anchors, positives, negatives, *, similarities=SIMILARITIES, margin: float = 0.0,
                 name: str = "triplet"):
        if not (len(anchors) == len(positives) == len(negatives)) or not len(anchors):
            raise ValueError(f"need equal, non-zero numbers of anchors/positives/negatives; got "
                             f"{len(anchors)}, {len(positives)}, {len(negatives)}")
        self.anchors, self.positives, self.negatives = list(anchors), list(positives), list(negatives)
        self.similarities, self.margin, self.name = check_similarities(similarities), margin, name
        self.primary_metric = f"{self.similarities[0]}_accuracy"

    @classmethod
    def from_file(cls, path, *, format: str = "auto", columns=None, **kwargs) -> "TripletEvaluator":
        """Evaluator over a csv/tsv/jsonl with anchor/positive/negative columns."""
        return cls(*read_triplets(path, format=format, columns=columns).texts, **kwargs)

    def compute(self, anchor_NxD, positive_NxD, negative_NxD) -> dict[str, float]:
        """Metrics from precomputed embeddings."""
        return {f"{s}_accuracy": triplet_accuracy(anchor_NxD, positive_NxD, negative_NxD, s, self.margin)
                for s in self.similarities}

    def __call__(self, model) -> dict[str, float]:
        """Encode the (deduplicated) texts with `model` and return the metrics."""
        return self.compute(*embed_unique(model, self.anchors, self.positives, self.negatives))


def _group_ends(sorted_scores: np.ndarray) -> np.ndarray:
    """Positions that end a run of equal scores (a threshold can only fall after them)."""
    return np.nonzero(np.append(sorted_scores[1:] != sorted_scores[:-1], True))[0]


def _threshold_after(s: np.ndarray, pos: int) -> float:
    """Midpoint between the score at `pos` and the next distinct score (the score itself at the end)."""
    if pos == len(s) - 1:
        return float(s[pos])
    mid = (s[pos] + s[pos + 1]) / 2
    return float(s[pos] if mid == s[pos + 1] else mid)


def binary_classification_metrics(scores_N, labels_N, greater_is_better: bool = True) -> dict[str, float]:
    """Best-threshold accuracy and F1, with precision/recall at the F1 threshold, and average precision.

    Why: duplicate detection needs a decision threshold; the best one on the evaluation set is the
    standard way to compare embedding models for it (x100 except the thresholds).
    """
    scores = np.asarray(scores_N, np.float64)
    labels = np.asarray(labels_N).astype(bool)
    if len(scores) != len(labels) or not len(scores):
        raise ValueError(f"need one label per score; got {len(scores)} scores and {len(labels)} labels")
    sign = 1.0 if greater_is_better else -1.0
    order = np.argsort(-sign * scores, kind="stable")
    s, y = sign * scores[order], labels[order]  # best first, s descending
    ends = _group_ends(s)
    tp, n_pred = np.cumsum(y)[ends], ends + 1
    n, n_pos = len(y), int(y.sum())
    fp = n_pred - tp

    acc = (tp + (n - n_pos - fp)) / n
    best_acc, best_acc_thr = (n - n_pos) / n, float(np.nextafter(s[0], np.inf))  # predict all negative
    if acc.max() > best_acc:
        i = int(np.argmax(acc))
        best_acc, best_acc_thr = float(acc[i]), _threshold_after(s, int(ends[i]))

    f1 = best_f1 = best_p = best_r = 0.0
    f1_thr = 0.0
    if n_pos:
        precision, recall = tp / n_pred, tp / n_pos
        with np.errstate(invalid="ignore", divide="ignore"):
            f1 = np.where(tp > 0, 2 * precision * recall / (precision + recall), 0.0)
        i = int(np.argmax(f1))
        if f1[i] > 0:
            best_f1, best_p, best_r = float(f1[i]), float(precision[i]), float(recall[i])
            f1_thr = _threshold_after(s, int(ends[i])) * sign
        ap = float(np.sum(np.diff(np.concatenate([[0.0], recall])) * precision))
    else:
        ap = 0.0
    return {"accuracy": 100 * best_acc, "accuracy_threshold": best_acc_thr * sign,
            "f1": 100 * best_f1, "f1_threshold": f1_thr, "precision": 100 * best_p, "recall": 100 * best_r,
            "ap": 100 * ap}


class BinaryClassificationEvaluator:
    """Duplicate / paraphrase detection from pair similarity: best-threshold accuracy, F1, AP.

    Why: a pair classifier built on embeddings is judged by how well one threshold separates the
    positives; metric names are `<similarity>_<metric>`, e.g. `cosine_ap`.
    """

    def __init__(self, sentences1, sentences2, labels, *, similarities=SIMILARITIES,
                 name: str = "binary"):
        if not (len(sentences1) == len(sentences2) == len(labels)) or not len(labels):
            raise ValueError(f"need equal, non-zero lengths; got {len(sentences1)}, {len(sentences2)}, {len(labels)}")
        labels = np.asarray(labels)
        if not np.all(np.isin(labels, (0, 1))):
            raise ValueError("labels must be 0 or 1")
        self.sentences1, self.sentences2, self.labels = list(sentences1), list(sentences2), labels.astype(np.int64)
        self.similarities, self.name = check_similarities(similarities), name
        self.primary_metric = f"{self.similarities[0]}_ap"

    @classmethod
    def from_file(cls, path, *, format: str = "auto", columns=None, **kwargs) -> "BinaryClassificationEvaluator":
        """Evaluator over a csv/tsv/jsonl with sentence1/sentence2/label (0/1) columns."""
        pairs = read_labelled_pairs(path, format=format, columns=columns)
        return cls(*pairs.texts, pairs.labels, **kwargs)

    def compute(self, emb1_NxD, emb2_NxD) -> dict[str, float]:
        """Metrics from precomputed embeddings; distances are thresholded as distances."""
        out = {}
        for sim in self.similarities:
            scores = pair_scores(emb1_NxD, emb2_NxD, sim)
            if sim in _DISTANCES:  # report thresholds as positive distances, lower = similar
                metrics = binary_classification_metrics(-scores, self.labels, greater_is_better=False)
            else:
                metrics = binary_classification_metrics(scores, self.labels)
            out.update({f"{sim}_{k}": v for k, v in metrics.items()})
        return out

    def __call__(self, model) -> dict[str, float]:
        """Encode the (deduplicated) sentences with `model` and return the metrics."""
        return self.compute(*embed_unique(model, self.sentences1, self.sentences2))


def paraphrase_mining_metrics(mined: Sequence[tuple[float, int, int]], gold: set[tuple[int, int]]) -> dict[str, float]:
    """AP, best F1 (with its precision, recall, threshold) of mined pairs (score, i, j), best first,
    against gold duplicate pairs (i < j)."""
    if not gold:
        raise ValueError("no gold duplicate pairs to evaluate against")
    correct = np.array([(i, j) in gold for _, i, j in mined], dtype=bool)
    scores = np.array([s for s, _, _ in mined], np.float64)
    if not correct.any():
        return {"average_precision": 0.0, "f1": 0.0, "precision": 0.0, "recall": 0.0, "threshold": 0.0}
    ends = _group_ends(-scores)  # tied scores are one decision: evaluate after each run of ties
    n_correct = np.cumsum(correct)[ends]
    gained = np.diff(np.concatenate([[0], n_correct]))
    precision = n_correct / (ends + 1)
    recall = n_correct / len(gold)
    with np.errstate(invalid="ignore"):
        f1 = np.where(gained > 0, 2 * precision * recall / (precision + recall), 0.0)
    i = int(np.argmax(f1))
    end = int(ends[i])
    threshold = (scores[end] + scores[min(end + 1, len(scores) - 1)]) / 2
    return {"average_precision": 100 * float((precision * gained).sum() / len(gold)), "f1": 100 * float(f1[i]),
            "precision": 100 * float(precision[i]), "recall": 100 * float(recall[i]), "threshold": float(threshold)}


class ParaphraseMiningEvaluator:
    """Mine the most similar pairs among `sentences` and score them against known duplicates.

    Why: measures an embedding model the way duplicate mining uses it (no pairs given up front).
    `duplicates` are index pairs into `sentences`.
    """

    primary_metric = "average_precision"

    def __init__(self, sentences: Sequence[str], duplicates: Sequence[tuple[int, int]], *, top_k: int = 100,
                 max_pairs: int = 500_000, name: str = "paraphrase"):
        self.sentences = list(sentences)
        n = len(self.sentences)
        gold = set()
        for i, j in duplicates:
            if not (0 <= i < n and 0 <= j < n) or i == j:
                raise ValueError(f"duplicate pair ({i}, {j}) is not two distinct indices below {n}")
            gold.add((min(i, j), max(i, j)))
        self.gold, self.top_k, self.max_pairs, self.name = gold, top_k, max_pairs, name

    @classmethod
    def from_file(cls, path, *, format: str = "auto", columns=None, **kwargs) -> "ParaphraseMiningEvaluator":
        """From a labelled pair file: its distinct sentences, and the label-1 pairs as duplicates."""
        pairs = read_labelled_pairs(path, format=format, columns=columns)
        first, second = pairs.texts
        sentences = list(dict.fromkeys(first + second))
        where = {s: i for i, s in enumerate(sentences)}
        dup = [(where[a], where[b]) for a, b, y in zip(first, second, pairs.labels) if y and a != b]
        return cls(sentences, dup, **kwargs)

    def compute(self, embeddings_NxD) -> dict[str, float]:
        """Metrics from precomputed embeddings of `sentences`."""
        mined = paraphrase_mining_embeddings(embeddings_NxD, top_k=self.top_k, max_pairs=self.max_pairs)
        return paraphrase_mining_metrics(mined, self.gold)

    def __call__(self, model) -> dict[str, float]:
        """Encode the sentences with `model` and return the metrics."""
        return self.compute(embed(model, self.sentences))
