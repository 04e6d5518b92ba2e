"""Similarities and distances between embeddings, the vocabulary every loss is written in.

Matrix forms (`*_matrix`, `[N, D] x [M, D] -> [N, M]`) serve in-batch losses; row-wise forms
(`pairwise_*`, `[B, D] x [B, D] -> [B]`) serve pair/triplet losses. Definitions follow
sentence-transformers (`sentence_transformers.util`), so losses built on them match ST's.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

SIMILARITIES = ("cosine", "dot")
DISTANCES = ("euclidean", "cosine", "manhattan")


def l2_normalize(x_NxD: jax.Array, eps: float = 1e-12) -> jax.Array:
    """x / max(||x||, eps), like torch.nn.functional.normalize (a zero vector stays zero)."""
    norm_N1 = jnp.sqrt(jnp.sum(jnp.square(x_NxD), axis=-1, keepdims=True))
    return x_NxD / jnp.maximum(norm_N1, eps)


def prepare(x_NxD: jax.Array, similarity: str) -> jax.Array:
    """Maps embeddings into the space where a dot product is the requested similarity.

    Normalising once per array (not per pair) lets the sharded InfoNCE gather already-normalised
    candidates, so every device sees exactly the values the single-device loss sees.
    """
    if similarity == "cosine":
        return l2_normalize(x_NxD)
    if similarity == "dot":
        return x_NxD
    raise ValueError(f"unknown similarity {similarity!r}; valid: {SIMILARITIES}")


def similarity_matrix(a_NxD: jax.Array, b_MxD: jax.Array, similarity: str = "cosine") -> jax.Array:
    """[N, M] cosine or dot-product similarities between every row of a and every row of b."""
    return prepare(a_NxD, similarity) @ prepare(b_MxD, similarity).T


def pairwise_cosine(a_BxD: jax.Array, b_BxD: jax.Array) -> jax.Array:
    """[B] cosine similarity of matching rows (torch.cosine_similarity up to its eps handling)."""
    return jnp.sum(l2_normalize(a_BxD) * l2_normalize(b_BxD), axis=-1)


def pairwise_distance(a_BxD: jax.Array, b_BxD: jax.Array, metric: str) -> jax.Array:
    """[B] distance of matching rows: euclidean ||a-b||, manhattan |a-b|_1, cosine 1 - cos(a, b).

    Euclidean uses a zero-safe square root so identical rows get a zero (not NaN) gradient.
    """
    if metric == "euclidean":
        return _safe_sqrt(jnp.sum(jnp.square(a_BxD - b_BxD), axis=-1))
    if metric == "manhattan":
        return jnp.sum(jnp.abs(a_BxD - b_BxD), axis=-1)
    if metric == "cosine":
        return 1.0 - pairwise_cosine(a_BxD, b_BxD)
    raise ValueError(f"unknown distance {metric!r}; valid: {DISTANCES}")


def distance_matrix(x_BxD: jax.Array, metric: str) -> jax.Array:
    """[B, B] distances between all rows of x, as in ST's BatchHardTripletLossDistanceFunction.

    Euclidean: the |x|^2 - 2 x.y + |y|^2 form clipped at 0, with sqrt(0) := 0 and a zero
    gradient there (ST adds 1e-16 under the root and masks it out, which is the same thing).
    """
    if metric == "euclidean":
        dot_BxB = x_BxD @ x_BxD.T
        sq_B = jnp.diagonal(dot_BxB)
        d2_BxB = jnp.maximum(sq_B[None, :] - 2.0 * dot_BxB + sq_B[:, None], 0.0)
        return _safe_sqrt(d2_BxB)
    if metric == "cosine":
        return 1.0 - similarity_matrix(x_BxD, x_BxD, "cosine")
    if metric == "manhattan":
        return jnp.sum(jnp.abs(x_BxD[:, None, :] - x_BxD[None, :, :]), axis=-1)
    raise ValueError(f"unknown distance {metric!r}; valid: {DISTANCES}")


def pairwise_angle(a_BxD: jax.Array, b_BxD: jax.Array) -> jax.Array:
    """[B] AnglE similarity |cos(a, b) + sin(a, b)| (Li & Li 2024, ST's `pairwise_angle_sim`).

    After L2 normalisation each vector is read as a complex vector (first half real, second half
    imaginary); the "sine" term is sum(im_a * re_b - re_a * im_b). Odd D is zero-padded by one.
    """
    if a_BxD.shape[-1] % 2:
        pad = [(0, 0)] * (a_BxD.ndim - 1) + [(0, 1)]
        a_BxD, b_BxD = jnp.pad(a_BxD, pad), jnp.pad(b_BxD, pad)
    a_BxD, b_BxD = l2_normalize(a_BxD), l2_normalize(b_BxD)
    cos_B = jnp.sum(a_BxD * b_BxD, axis=-1)
    re_a, im_a = jnp.split(a_BxD, 2, axis=-1)
    re_b, im_b = jnp.split(b_BxD, 2, axis=-1)
    sin_B = jnp.sum(im_a * re_b - re_a * im_b, axis=-1)
    return jnp.abs(cos_B + sin_B)


def _safe_sqrt(x: jax.Array) -> jax.Array:
    """sqrt with value 0 and gradient 0 at x == 0 (plain sqrt has an infinite slope there)."""
    positive = x > 0.0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, x, 1.0)), 0.0)
