"""Triplet losses: explicit (anchor, positive, negative) triplets, and the label-mined variants
that build triplets inside a batch of labelled sentences (batch-hard, batch-semi-hard, batch-all).

All follow sentence-transformers (TripletLoss, BatchHardTripletLoss, BatchSemiHardTripletLoss,
BatchAllTripletLoss): euclidean distance and margin 5 by default; pure, float32, static shapes.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from siamjax.losses import checks as chk
from siamjax.similarity import distance_matrix, pairwise_distance


def triplet_loss(
    anchors_BxD: jax.Array,
    positives_BxD: jax.Array,
    negatives_BxD: jax.Array,
    *,
    margin: float = 5.0,
    distance: str = "euclidean",
) -> jax.Array:
    """mean_i max(0, d(a_i, p_i) - d(a_i, n_i) + margin) (Schroff et al. 2015; ST's TripletLoss).

    distance: "euclidean" (ST default, margin 5), "cosine" (1 - cos; use a margin < 1) or
    "manhattan".
    """
    where = "triplet_loss"
    fields = ("anchors_BxD", "positives_BxD", "negatives_BxD")
    arrays = [chk.check_float_array(where, f, x, 2) for f, x in zip(fields, (anchors_BxD, positives_BxD, negatives_BxD))]
    chk.check_same_shape(where, fields, arrays)
    for f, x in zip(fields, arrays):
        chk.check_finite(where, f, x)
    a, p, n = arrays
    d_pos, d_neg = pairwise_distance(a, p, distance), pairwise_distance(a, n, distance)
    return jnp.mean(jax.nn.relu(d_pos - d_neg + margin))


def _mining_inputs(where: str, emb_BxD, labels_B):
    emb = chk.check_float_array(where, "emb_BxD", emb_BxD, 2)
    chk.check_finite(where, "emb_BxD", emb)
    labels = chk.check_labels(where, labels_B, emb.shape[0], "int")
    same_BxB = labels[:, None] == labels[None, :]
    return emb, same_BxB


def batch_hard_triplet_loss(
    emb_BxD: jax.Array, labels_B: jax.Array, *, margin: float = 5.0, distance: str = "euclidean"
) -> jax.Array:
    """Batch-hard triplet loss (Hermans, Beyer & Leibe 2017; ST's BatchHardTripletLoss).

    For each anchor: hardest positive = farthest same-label example, hardest negative = closest
    other-label example; loss = mean_a max(0, d_hardest_pos - d_hardest_neg + margin). As in ST,
    an anchor with no positive uses d_pos = 0 and one with no negative uses its largest distance.
    """
    emb, same_BxB = _mining_inputs("batch_hard_triplet_loss", emb_BxD, labels_B)
    d_BxB = distance_matrix(emb, distance)
    pos_mask = same_BxB & ~jnp.eye(emb.shape[0], dtype=bool)
    hardest_pos_B = jnp.max(jnp.where(pos_mask, d_BxB, 0.0), axis=1)
    row_max_B1 = jnp.max(d_BxB, axis=1, keepdims=True)
    hardest_neg_B = jnp.min(d_BxB + row_max_B1 * same_BxB, axis=1)
    loss = jnp.mean(jax.nn.relu(hardest_pos_B - hardest_neg_B + margin))
    return chk.nan_if_nonfinite(loss, emb)


def batch_semi_hard_triplet_loss(
    emb_BxD: jax.Array, labels_B: jax.Array, *, margin: float = 5.0, distance: str = "euclidean"
) -> jax.Array:
    """Batch-semi-hard triplet loss (Schroff, Kalenichenko & Philbin 2015, FaceNet; ST's
    BatchSemiHardTripletLoss, itself TF-Addons' triplet_semihard_loss).

    For every positive pair (a, p): the negative is the closest other-label n with
    d(a, n) > d(a, p) (semi-hard); if there is none, the farthest negative of a. Loss = sum over
    positive pairs of max(0, d(a, p) - d(a, n) + margin) / number of positive pairs (0 if none).
    Uses a sort per row, so memory is O(B^2), not O(B^3).
    """
    emb, same_BxB = _mining_inputs("batch_semi_hard_triplet_loss", emb_BxD, labels_B)
    b = emb.shape[0]
    d_BxB = distance_matrix(emb, distance)
    neg_mask = ~same_BxB
    sorted_neg_BxB = jnp.sort(jnp.where(neg_mask, d_BxB, jnp.inf), axis=1)
    # first negative strictly farther than d(a, p): searchsorted(side="right") per anchor row
    pos_idx_BxB = jax.vmap(lambda row, q: jnp.searchsorted(row, q, side="right"))(
        jax.lax.stop_gradient(sorted_neg_BxB), jax.lax.stop_gradient(d_BxB))
    outside_BxB = jnp.take_along_axis(sorted_neg_BxB, jnp.minimum(pos_idx_BxB, b - 1), axis=1)
    # TF's masked maximum: max over negatives, computed as max((d - rowmin) * mask) + rowmin
    row_min_B1 = jnp.min(d_BxB, axis=1, keepdims=True)
    inside_B1 = jnp.max((d_BxB - row_min_B1) * neg_mask, axis=1, keepdims=True) + row_min_B1
    semi_hard_BxB = jnp.where(jnp.isfinite(outside_BxB), outside_BxB, inside_B1)
    loss_BxB = d_BxB - semi_hard_BxB + margin
    pos_mask = (same_BxB & ~jnp.eye(b, dtype=bool)).astype(jnp.float32)
    num_pos = jnp.sum(pos_mask)
    loss = jnp.sum(jnp.maximum(loss_BxB * pos_mask, 0.0)) / jnp.maximum(num_pos, 1e-16)
    return chk.nan_if_nonfinite(loss, emb)


def batch_all_triplet_loss(
    emb_BxD: jax.Array, labels_B: jax.Array, *, margin: float = 5.0, distance: str = "euclidean"
) -> jax.Array:
    """Batch-all triplet loss (Hermans, Beyer & Leibe 2017; ST's BatchAllTripletLoss).

    Every valid triplet (a, p, n) of the batch (a != p same label, n other label) contributes
    max(0, d(a, p) - d(a, n) + margin); the sum is divided by the number of triplets with a
    positive loss (+1e-16), so easy triplets do not dilute the signal. Memory O(B^3).
    """
    emb, same_BxB = _mining_inputs("batch_all_triplet_loss", emb_BxD, labels_B)
    b = emb.shape[0]
    d_BxB = distance_matrix(emb, distance)
    pos_mask_BxB = same_BxB & ~jnp.eye(b, dtype=bool)
    valid_BxBxB = pos_mask_BxB[:, :, None] & ~same_BxB[:, None, :]
    loss_BxBxB = d_BxB[:, :, None] - d_BxB[:, None, :] + margin
    loss_BxBxB = jax.nn.relu(jnp.where(valid_BxBxB, loss_BxBxB, 0.0))
    num_active = jnp.sum(loss_BxBxB > 1e-16)
    loss = jnp.sum(loss_BxBxB) / (num_active + 1e-16)
    return chk.nan_if_nonfinite(loss, emb)
