"""Similarities and distances between embeddings: the one vocabulary of losses, evaluators,
search and `SentenceEncoder.similarity`.

Each function works on numpy arrays (host code: evaluators, the CLI; computed in the input's
dtype, so float64 metrics stay float64) and on jax arrays or tracers (losses, the encoder's
Normalize module, search kernels), choosing the array namespace from its input. Definitions
follow sentence-transformers (`sentence_transformers.util` and its `SimilarityFunction`s), so
losses and metrics built on them match sentence-transformers'.

Matrix forms (`[N, D] x [M, D] -> [N, M]`) serve in-batch losses and search; row-wise forms
(`pairwise_*`, `[B, D] x [B, D] -> [B]`) serve pair/triplet losses and evaluators.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

# sentence-transformers' `similarity_fn_name` values: higher = more similar (distances negated).
SIMILARITIES = ("cosine", "dot", "euclidean", "manhattan")
# In-batch losses score candidates by a dot product in a prepared space: these two.
DOT_SIMILARITIES = ("cosine", "dot")
DISTANCES = ("euclidean", "cosine", "manhattan")


def _xp(x):
    """numpy for host arrays, jax.numpy for jax arrays and tracers."""
    return jnp if isinstance(x, jax.Array) else np


def l2_normalize(x_NxD, eps: float = 1e-12):
    """x / max(||x||, eps) along the last axis, like torch.nn.functional.normalize (0 stays 0).

    The norm's square root is zero-safe, so a zero vector also has a finite gradient, as in
    torch (an empty packed slot the encoder normalises must not turn its gradients into NaN).
    """
    xp = _xp(x_NxD)
    norm_N1 = _safe_sqrt(xp.sum(xp.square(x_NxD), axis=-1, keepdims=True))
    return x_NxD / xp.maximum(norm_N1, eps)


def prepare(x_NxD, similarity: str):
    """Maps embeddings into the space where a dot product is the requested similarity.

    Normalising once per array (not per pair) lets the sharded InfoNCE gather already-normalised
    candidates, so every device sees exactly the values the single-device loss sees.
    """
    if similarity == "cosine":
        return l2_normalize(x_NxD)
    if similarity == "dot":
        return x_NxD
    raise ValueError(f"unknown similarity {similarity!r}; valid: {DOT_SIMILARITIES}")


def similarity_matrix(a_NxD, b_MxD, similarity: str = "cosine"):
    """[N, M] similarities between every row of a and every row of b (distances negated)."""
    if similarity in DOT_SIMILARITIES:
        return prepare(a_NxD, similarity) @ prepare(b_MxD, similarity).T
    if similarity in ("euclidean", "manhattan"):
        return -distance_matrix(a_NxD, similarity, b_MxD)
    raise ValueError(f"unknown similarity {similarity!r}; valid: {SIMILARITIES}")


def pairwise_similarity(a_BxD, b_BxD, similarity: str = "cosine"):
    """[B] similarity of matching rows, higher = more similar (distances are negated)."""
    xp = _xp(a_BxD)
    if similarity == "cosine":
        return xp.sum(l2_normalize(a_BxD) * l2_normalize(b_BxD), axis=-1)
    if similarity == "dot":
        return xp.sum(a_BxD * b_BxD, axis=-1)
    if similarity in ("euclidean", "manhattan"):
        return -pairwise_distance(a_BxD, b_BxD, similarity)
    raise ValueError(f"unknown similarity {similarity!r}; valid: {SIMILARITIES}")


def pairwise_cosine(a_BxD, b_BxD):
    """[B] cosine similarity of matching rows (torch.cosine_similarity up to its eps handling)."""
    return pairwise_similarity(a_BxD, b_BxD, "cosine")


def pairwise_distance(a_BxD, b_BxD, metric: str):
    """[B] distance of matching rows: euclidean ||a-b||, manhattan |a-b|_1, cosine 1 - cos(a, b).

    Euclidean uses a zero-safe square root so identical rows get a zero (not NaN) gradient.
    """
    xp = _xp(a_BxD)
    if metric == "euclidean":
        return _safe_sqrt(xp.sum(xp.square(a_BxD - b_BxD), axis=-1))
    if metric == "manhattan":
        return xp.sum(xp.abs(a_BxD - b_BxD), axis=-1)
    if metric == "cosine":
        return 1.0 - pairwise_cosine(a_BxD, b_BxD)
    raise ValueError(f"unknown distance {metric!r}; valid: {DISTANCES}")


def distance_matrix(x_BxD, metric: str, y_MxD=None):
    """[B, M] distances between the rows of x and of y (default y = x), as in ST's
    BatchHardTripletLossDistanceFunction.

    Euclidean: the |x|^2 - 2 x.y + |y|^2 form clipped at 0, with sqrt(0) := 0 and a zero
    gradient there (ST adds 1e-16 under the root and masks it out, which is the same thing).
    """
    xp = _xp(x_BxD)
    y_MxD = x_BxD if y_MxD is None else y_MxD
    if metric == "euclidean":
        dot_BxM = x_BxD @ y_MxD.T
        sq_x_B = xp.diagonal(dot_BxM) if y_MxD is x_BxD else xp.sum(xp.square(x_BxD), axis=-1)
        sq_y_M = sq_x_B if y_MxD is x_BxD else xp.sum(xp.square(y_MxD), axis=-1)
        return _safe_sqrt(xp.maximum(sq_x_B[:, None] - 2.0 * dot_BxM + sq_y_M[None, :], 0.0))
    if metric == "cosine":
        return 1.0 - similarity_matrix(x_BxD, y_MxD, "cosine")
    if metric == "manhattan":
        return xp.sum(xp.abs(x_BxD[:, None, :] - y_MxD[None, :, :]), axis=-1)
    raise ValueError(f"unknown distance {metric!r}; valid: {DISTANCES}")


def pairwise_angle(a_BxD, b_BxD):
    """[B] AnglE similarity |cos(a, b) + sin(a, b)| (Li & Li 2024, ST's `pairwise_angle_sim`).

    After L2 normalisation each vector is read as a complex vector (first half real, second half
    imaginary); the "sine" term is sum(im_a * re_b - re_a * im_b). Odd D is zero-padded by one.
    """
    xp = _xp(a_BxD)
    if a_BxD.shape[-1] % 2:
        pad = [(0, 0)] * (a_BxD.ndim - 1) + [(0, 1)]
        a_BxD, b_BxD = xp.pad(a_BxD, pad), xp.pad(b_BxD, pad)
    a_BxD, b_BxD = l2_normalize(a_BxD), l2_normalize(b_BxD)
    cos_B = xp.sum(a_BxD * b_BxD, axis=-1)
    re_a, im_a = xp.split(a_BxD, 2, axis=-1)
    re_b, im_b = xp.split(b_BxD, 2, axis=-1)
    sin_B = xp.sum(im_a * re_b - re_a * im_b, axis=-1)
    return xp.abs(cos_B + sin_B)


def _safe_sqrt(x):
    """sqrt with value 0 and gradient 0 at x == 0 (plain sqrt has an infinite slope there)."""
    xp = _xp(x)
    positive = x > 0.0
    return xp.where(positive, xp.sqrt(xp.where(positive, x, 1.0)), 0.0)
