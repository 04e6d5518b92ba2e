"""Regularisers of the embedding distribution, added to a primary loss.

Global orthogonal regularisation (Zhang et al. 2017; EmbeddingGemma, Schechter Vera et al. 2025;
sentence-transformers' GlobalOrthogonalRegularizationLoss): unrelated inputs should be spread
like random vectors, whose cosines have mean 0 and second moment 1/d. Why: in-batch contrastive
losses alone let embeddings crowd into a narrow cone, which hurts quantisation and search.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from siamjax.losses import checks as chk
from siamjax.similarity import DOT_SIMILARITIES, prepare

AGGREGATIONS = ("mean", "sum")


def gor_loss(emb_SxBxD: jax.Array, *, mean_weight: float = 1.0, second_moment_weight: float = 1.0,
             aggregation: str = "mean", similarity: str = "cosine") -> jax.Array:
    """GOR over each side (column) separately, aggregated over sides by mean or sum.

    Per side: M1 = mean off-diagonal similarity, M2 = mean off-diagonal squared similarity;
    loss = mean_weight * agg(M1^2) + second_moment_weight * agg(relu(M2 - 1/d)). The
    diagonal is excluded and a batch of one gives 0. (sentence-transformers returns the two
    terms as a dict that its trainer sums; this is that sum.)
    """
    where = "gor"
    if not mean_weight and not second_moment_weight:
        raise ValueError(f"{where}: at least one of mean_weight / second_moment_weight must be non-zero")
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"{where}: aggregation={aggregation!r}; use one of {AGGREGATIONS}")
    if similarity not in DOT_SIMILARITIES:
        raise ValueError(f"{where}: similarity={similarity!r}; use one of {DOT_SIMILARITIES}")
    emb = chk.check_float_array(where, "emb_SxBxD", emb_SxBxD, 3)
    chk.check_finite(where, "emb_SxBxD", emb)
    _, b, d = emb.shape
    x_SxBxD = prepare(emb, similarity)
    sim_SxBxB = jnp.where(jnp.eye(b, dtype=bool), 0.0, x_SxBxD @ jnp.swapaxes(x_SxBxD, 1, 2))
    off_diagonal = max(b * (b - 1), 1)
    mean_S = jnp.square(jnp.sum(sim_SxBxB, axis=(1, 2)) / off_diagonal)
    second_S = jax.nn.relu(jnp.sum(jnp.square(sim_SxBxB), axis=(1, 2)) / off_diagonal - 1.0 / d)
    agg = jnp.sum if aggregation == "sum" else jnp.mean
    total = jnp.zeros((), emb.dtype)
    if mean_weight:
        total = total + mean_weight * agg(mean_S)
    if second_moment_weight:
        total = total + second_moment_weight * agg(second_S)
    return total
