"""How evaluators turn texts into embeddings and score pairs of them.

A model is any `encode(texts) -> [N, D]` callable, or an object with an `.encode(texts)` method
(a `SentenceEncoder`, a sentence-transformers model). Pair scores are computed in float64 with
`siamjax.similarity`, higher = more similar (distances negated), as sentence-transformers does.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from siamjax.similarity import SIMILARITIES, pairwise_similarity

# texts -> float embeddings [N, D]
EmbedTexts = Callable[[list[str]], np.ndarray]


def check_similarities(similarities: Sequence[str]) -> tuple[str, ...]:
    """The similarity names as a tuple, each one of `SIMILARITIES` (else a ValueError)."""
    for sim in similarities:
        if sim not in SIMILARITIES:
            raise ValueError(f"similarity must be one of {SIMILARITIES}, got {sim!r}")
    return tuple(similarities)


def pair_scores(a_NxD, b_NxD, similarity: str) -> np.ndarray:
    """float64 [N] similarity of matching rows (higher = more similar)."""
    return pairwise_similarity(np.asarray(a_NxD, np.float64), np.asarray(b_NxD, np.float64), similarity)


def as_encode_fn(model, task: str | None = None) -> EmbedTexts:
    """The callable behind `model`: its `.encode_query` / `.encode_document` method for `task`
    "query" / "document" if it has one (a prompted model's query and document prompts), else its
    `.encode` method, else `model` itself."""
    fn = getattr(model, f"encode_{task}", None) if task else None
    fn = fn if callable(fn) else getattr(model, "encode", None)
    if callable(fn):
        return fn
    if callable(model):
        return model
    raise TypeError(f"expected an encode(texts) callable or a model with .encode, got {type(model).__name__}")


def embed(model, texts: Sequence[str], task: str | None = None) -> np.ndarray:
    """float32 [len(texts), D] embeddings (`task` as in `as_encode_fn`), checked for shape and NaNs
    so a broken model fails here."""
    out = np.asarray(as_encode_fn(model, task)(list(texts)))
    if out.ndim != 2 or out.shape[0] != len(texts):
        raise ValueError(f"encode returned shape {out.shape} for {len(texts)} texts; expected [N, D]")
    out = out.astype(np.float32, copy=False)
    if not np.all(np.isfinite(out)):
        raise ValueError("encode returned NaN or infinite embeddings")
    return out


def embed_unique(model, *text_lists: Sequence[str]) -> list[np.ndarray]:
    """Embed each distinct text once and return one [len(list), D] array per input list.

    Why: STS / pair files repeat sentences a lot; encoding is the expensive part.
    """
    unique = list(dict.fromkeys(t for texts in text_lists for t in texts))
    emb = embed(model, unique)
    where = {t: i for i, t in enumerate(unique)}
    return [emb[[where[t] for t in texts]] if len(texts) else emb[:0] for texts in text_lists]
