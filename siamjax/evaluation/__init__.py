"""Evaluators for sentence-embedding models, usable from Python, the CLI and the training loop.

Each evaluator is built from data (or `.from_file(...)` / `.from_beir(...)`), then called with an
`encode(texts) -> [N, D]` callable or a model with `.encode` and returns a dict of metrics (x100;
thresholds in score units). `.compute(...)` takes precomputed embeddings; `.primary_metric` names
the model-selection metric.

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
from siamjax.evaluation.readers import (
    DataFormatError,
    LabelledPairs,
    RetrievalData,
    ScoredPairs,
    Triplets,
    detect_format,
    read_beir,
    read_labelled_pairs,
    read_records,
    read_sts,
    read_triplets,
)
from siamjax.evaluation.retrieval import RetrievalEvaluator, hit_matrix, ranking_metrics
from siamjax.evaluation.sts import PAIR_SIMILARITIES, STSEvaluator, pairwise_similarity, sts_metrics

__all__ = [
    "BinaryClassificationEvaluator", "DataFormatError", "LabelledPairs", "PAIR_SIMILARITIES",
    "ParaphraseMiningEvaluator", "RetrievalData", "RetrievalEvaluator", "STSEvaluator", "ScoredPairs",
    "TripletEvaluator", "Triplets", "binary_classification_metrics", "detect_format", "hit_matrix",
    "pairwise_similarity", "paraphrase_mining_metrics", "ranking_metrics", "read_beir",
    "read_labelled_pairs", "read_records", "read_sts", "read_triplets", "sts_metrics", "triplet_accuracy",
]
