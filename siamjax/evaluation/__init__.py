"""Evaluators for sentence-embedding models, usable from Python, the CLI and the training loop.

Each evaluator is built from data (or `.from_file(...)` / `.from_beir(...)`), then called with an
`encode(texts) -> [N, D]` callable or a model with `.encode` and returns a dict of metrics (x100;
thresholds in score units). `.compute(...)` takes precomputed embeddings; `.primary_metric` names
the model-selection metric. Files are read by `siamjax.data` (the reader training uses too).

    STSEvaluator.from_file("sts-test.csv")(encoder)["spearman_cosine"]
"""
from siamjax.evaluation.classification import (
    BinaryClassificationEvaluator,
    ParaphraseMiningEvaluator,
    TripletEvaluator,
    binary_classification_metrics,
    paraphrase_mining_metrics,
    triplet_accuracy,
)
from siamjax.evaluation.retrieval import RetrievalEvaluator, hit_matrix, ranking_metrics
from siamjax.evaluation.sts import STSEvaluator, sts_metrics

__all__ = [
    "BinaryClassificationEvaluator", "ParaphraseMiningEvaluator", "RetrievalEvaluator", "STSEvaluator",
    "TripletEvaluator", "binary_classification_metrics", "hit_matrix", "paraphrase_mining_metrics",
    "ranking_metrics", "sts_metrics", "triplet_accuracy",
]
