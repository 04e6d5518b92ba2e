"""Semantic textual similarity: Pearson and Spearman correlation (x100) between gold scores and
cosine / dot / negative Euclidean / negative Manhattan similarity of the embedded pairs."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import stats

from siamjax.data.readers import read_scored_pairs
from siamjax.evaluation.embed import check_similarities, embed_unique, pair_scores
from siamjax.similarity import SIMILARITIES

def sts_metrics(emb1_NxD, emb2_NxD, scores_N, similarities: Sequence[str] = SIMILARITIES) -> dict[str, float]:
    """{pearson_<sim>, spearman_<sim>} x100 for each similarity; the pure core of STSEvaluator."""
    scores = np.asarray(scores_N, np.float64)
    if len(scores) < 2 or not (len(emb1_NxD) == len(emb2_NxD) == len(scores)):
        raise ValueError(
            f"need >= 2 pairs with one score each; got {len(emb1_NxD)}, {len(emb2_NxD)} embeddings "
            f"and {len(scores)} scores"
        )
    out = {}
    for sim in similarities:
        pred = pair_scores(emb1_NxD, emb2_NxD, sim)
        out[f"pearson_{sim}"] = 100 * float(stats.pearsonr(scores, pred)[0])
        out[f"spearman_{sim}"] = 100 * float(stats.spearmanr(scores, pred)[0])
    return out


class STSEvaluator:
    """Correlation of embedding similarity with human similarity scores.

    Why: STS Spearman (cosine) is the standard quality number of a sentence embedding model, and
    the usual model-selection metric during training. `STSEvaluator(s1, s2, scores)(encode)`.
    `primary_metric` is Spearman of `main_similarity`, as in sentence-transformers' evaluator:
    by default the similarity the model says it uses (`similarity_fn_name`, e.g. "dot" for
    dot-product models) when it is called with a `SentenceEncoder`, else cosine.
    """

    def __init__(self, sentences1: Sequence[str], sentences2: Sequence[str], scores, *,
                 similarities: Sequence[str] = SIMILARITIES, main_similarity: str | None = None, name: str = "sts"):
        if not (len(sentences1) == len(sentences2) == len(scores)):
            raise ValueError(f"lengths differ: {len(sentences1)}, {len(sentences2)}, {len(scores)}")
        similarities = check_similarities(similarities)
        if main_similarity is not None and main_similarity not in similarities:
            raise ValueError(f"main_similarity {main_similarity!r} is not among the similarities {similarities}")
        self.sentences1, self.sentences2 = list(sentences1), list(sentences2)
        self.scores = np.asarray(scores, np.float64)
        self.similarities, self.name, self.main_similarity = tuple(similarities), name, main_similarity
        default = "cosine" if "cosine" in similarities else similarities[0]
        self.primary_metric = f"spearman_{main_similarity or default}"

    @classmethod
    def from_file(cls, path, *, format: str = "auto", columns=None, score_range=None, **kwargs) -> "STSEvaluator":
        """Evaluator over an STS-b / SICK / csv / tsv / jsonl file (`siamjax.data.read_scored_pairs`)."""
        data = read_scored_pairs(path, format=format, columns=columns, score_range=score_range)
        return cls(*data.texts, data.labels, **kwargs)

    def __len__(self) -> int:
        return len(self.scores)

    def compute(self, emb1_NxD, emb2_NxD) -> dict[str, float]:
        """Metrics from precomputed embeddings of sentences1 and sentences2."""
        return sts_metrics(emb1_NxD, emb2_NxD, self.scores, self.similarities)

    def __call__(self, model) -> dict[str, float]:
        """Encode the (deduplicated) sentences with `model` and return the metrics."""
        model_similarity = getattr(model, "similarity_fn_name", None)
        if self.main_similarity is None and model_similarity in self.similarities:
            self.primary_metric = f"spearman_{model_similarity}"
        emb1, emb2 = embed_unique(model, self.sentences1, self.sentences2)
        return self.compute(emb1, emb2)
