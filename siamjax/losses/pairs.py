"""Losses over labelled pairs (u_i, v_i, y_i): regression on scores, ranking of scores,
margin losses on binary labels, SBERT's softmax classifier, and MegaBatchMargin (pairs whose
negatives are mined from the batch).

Each function is pure over float embeddings `[B, D]` and labels `[B]`, computes in float32, and
matches the sentence-transformers loss named in its docstring (same defaults).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from siamjax.losses import checks as chk
from siamjax.similarity import l2_normalize, pairwise_angle, pairwise_cosine, pairwise_distance


def _pair(where: str, u_BxD, v_BxD):
    u = chk.check_float_array(where, "u_BxD", u_BxD, 2)
    v = chk.check_float_array(where, "v_BxD", v_BxD, 2)
    chk.check_same_shape(where, ("u_BxD", "v_BxD"), (u, v))
    chk.check_finite(where, "u_BxD", u)
    chk.check_finite(where, "v_BxD", v)
    return u, v


def cosine_mse_loss(u_BxD: jax.Array, v_BxD: jax.Array, labels_B: jax.Array) -> jax.Array:
    """mean_i (cos(u_i, v_i) - y_i)^2: ST's CosineSimilarityLoss (SBERT paper, regression objective).

    Labels are similarity scores, usually rescaled to [0, 1] (STS-b: score / 5).
    """
    u, v = _pair("cosine_mse_loss", u_BxD, v_BxD)
    y = chk.check_labels("cosine_mse_loss", labels_B, u.shape[0], "float")
    return jnp.mean(jnp.square(pairwise_cosine(u, v) - y))


def _cosent_from_scores(s_B: jax.Array, y_B: jax.Array, scale: float) -> jax.Array:
    """log(1 + sum_{y_i < y_j} exp(scale * (s_i - s_j))): pairs ranked below must score below."""
    diff_BxB = scale * (s_B[:, None] - s_B[None, :])
    lower_BxB = y_B[:, None] < y_B[None, :]
    terms = jnp.where(lower_BxB, diff_BxB, -jnp.inf).reshape(-1)
    return jax.nn.logsumexp(jnp.concatenate([jnp.zeros((1,), jnp.float32), terms]))


def cosent_loss(u_BxD: jax.Array, v_BxD: jax.Array, labels_B: jax.Array, *, scale: float = 20.0) -> jax.Array:
    """CoSENT (Su 2022; Huang et al. 2024; ST's CoSENTLoss): a ranking loss on cosine scores.

    loss = log(1 + sum_{(i,j): y_i < y_j} exp(scale * (cos(u_i, v_i) - cos(u_j, v_j)))). Only the
    order of the labels matters, so any score scale works; it trains the cosine used at inference
    directly and converges faster than cosine MSE.
    """
    u, v = _pair("cosent_loss", u_BxD, v_BxD)
    y = chk.check_labels("cosent_loss", labels_B, u.shape[0], "float")
    return _cosent_from_scores(pairwise_cosine(u, v), y, scale)


def angle_loss(u_BxD: jax.Array, v_BxD: jax.Array, labels_B: jax.Array, *, scale: float = 20.0) -> jax.Array:
    """AnglE (Li & Li 2024; ST's AnglELoss): CoSENT on the angle similarity |cos + sin|.

    Reading embeddings as complex vectors and ranking angle differences avoids the vanishing
    gradient of cosine near +-1 (the saturation zones of cos).
    """
    u, v = _pair("angle_loss", u_BxD, v_BxD)
    y = chk.check_labels("angle_loss", labels_B, u.shape[0], "float")
    return _cosent_from_scores(pairwise_angle(u, v), y, scale)


def contrastive_loss(
    u_BxD: jax.Array,
    v_BxD: jax.Array,
    labels_B: jax.Array,
    *,
    margin: float = 0.5,
    distance: str = "cosine",
    size_average: bool = True,
) -> jax.Array:
    """Contrastive loss (Hadsell, Chopra & LeCun 2006; ST's ContrastiveLoss).

    l_i = 0.5 * (y_i * d_i^2 + (1 - y_i) * max(0, margin - d_i)^2), d = distance(u_i, v_i)
    (ST default: cosine distance, margin 0.5); mean over the batch (sum if not size_average).
    Similar pairs (y=1) are pulled together, dissimilar pairs pushed beyond the margin.
    """
    u, v = _pair("contrastive_loss", u_BxD, v_BxD)
    y = chk.check_labels("contrastive_loss", labels_B, u.shape[0], "binary")
    d = pairwise_distance(u, v, distance)
    losses = 0.5 * (y * jnp.square(d) + (1.0 - y) * jnp.square(jax.nn.relu(margin - d)))
    return jnp.mean(losses) if size_average else jnp.sum(losses)


def online_contrastive_loss(
    u_BxD: jax.Array,
    v_BxD: jax.Array,
    labels_B: jax.Array,
    *,
    margin: float = 0.5,
    distance: str = "cosine",
) -> jax.Array:
    """Online contrastive loss (ST's OnlineContrastiveLoss): the contrastive loss on hard pairs only.

    Hard negatives: negative pairs closer than the farthest positive pair; hard positives:
    positive pairs farther than the closest negative pair (with no pair of the other kind, the
    threshold is the mean distance of the own kind, as in ST). loss = sum over hard positives of
    d^2 + sum over hard negatives of max(0, margin - d)^2 (a sum, not a mean, like ST).
    """
    u, v = _pair("online_contrastive_loss", u_BxD, v_BxD)
    y = chk.check_labels("online_contrastive_loss", labels_B, u.shape[0], "binary")
    d = pairwise_distance(u, v, distance)
    pos, neg = y == 1.0, y == 0.0
    n_pos, n_neg = jnp.sum(pos), jnp.sum(neg)
    d_const = jax.lax.stop_gradient(d)  # thresholds only select pairs; torch compares, no gradient
    mean_pos = jnp.sum(jnp.where(pos, d_const, 0.0)) / jnp.maximum(n_pos, 1)
    mean_neg = jnp.sum(jnp.where(neg, d_const, 0.0)) / jnp.maximum(n_neg, 1)
    neg_threshold = jnp.where(n_pos > 0, jnp.max(jnp.where(pos, d_const, -jnp.inf)), mean_neg)
    pos_threshold = jnp.where(n_neg > 0, jnp.min(jnp.where(neg, d_const, jnp.inf)), mean_pos)
    hard_neg = neg & (d_const < neg_threshold)
    hard_pos = pos & (d_const > pos_threshold)
    positive_loss = jnp.sum(jnp.where(hard_pos, jnp.square(d), 0.0))
    negative_loss = jnp.sum(jnp.where(hard_neg, jnp.square(jax.nn.relu(margin - d)), 0.0))
    return chk.nan_if_nonfinite(positive_loss + negative_loss, d)


def softmax_features(
    u_BxD: jax.Array, v_BxD: jax.Array, *, concat_rep: bool = True, concat_diff: bool = True,
    concat_mul: bool = False,
) -> jax.Array:
    """[B, F] classifier input of SBERT: concat(u, v, |u - v|[, u * v]) as selected."""
    parts = []
    if concat_rep:
        parts += [u_BxD, v_BxD]
    if concat_diff:
        parts.append(jnp.abs(u_BxD - v_BxD))
    if concat_mul:
        parts.append(u_BxD * v_BxD)
    if not parts:
        raise ValueError("softmax_loss: at least one of concat_rep, concat_diff, concat_mul must be True")
    return jnp.concatenate(parts, axis=-1)


def init_softmax_head(
    rng: jax.Array, dim: int, num_labels: int, *, concat_rep: bool = True, concat_diff: bool = True,
    concat_mul: bool = False,
) -> dict:
    """{"kernel": [F, C], "bias": [C]} with torch nn.Linear's default init (U(+-1/sqrt(F))).

    The head is trained with the encoder (it lives in the loss params beside the encoder's) and
    thrown away after training, as in SBERT.
    """
    if num_labels is None or num_labels < 2:
        raise ValueError(f"softmax head: num_labels must be >= 2, got {num_labels}")
    n_vec = 2 * concat_rep + concat_diff + concat_mul
    if n_vec == 0:
        raise ValueError("softmax head: at least one of concat_rep, concat_diff, concat_mul must be True")
    fan_in = n_vec * dim
    bound = 1.0 / jnp.sqrt(fan_in)
    k_w, k_b = jax.random.split(rng)
    return {
        "kernel": jax.random.uniform(k_w, (fan_in, num_labels), jnp.float32, -bound, bound),
        "bias": jax.random.uniform(k_b, (num_labels,), jnp.float32, -bound, bound),
    }


def softmax_loss(
    u_BxD: jax.Array,
    v_BxD: jax.Array,
    labels_B: jax.Array,
    head: dict,
    *,
    concat_rep: bool = True,
    concat_diff: bool = True,
    concat_mul: bool = False,
) -> jax.Array:
    """SBERT's classification objective (Reimers & Gurevych 2019; ST's SoftmaxLoss).

    logits = W^T concat(u, v, |u - v|) + b; loss = mean cross-entropy with integer class labels
    (e.g. NLI entailment/neutral/contradiction). `head` comes from `init_softmax_head`.
    """
    where = "softmax_loss"
    u, v = _pair(where, u_BxD, v_BxD)
    y = chk.check_labels(where, labels_B, u.shape[0], "int")
    feats_BxF = softmax_features(u, v, concat_rep=concat_rep, concat_diff=concat_diff, concat_mul=concat_mul)
    if not isinstance(head, dict) or set(head) != {"kernel", "bias"}:
        raise ValueError(f"{where}: head must be {{'kernel', 'bias'}} from init_softmax_head, got {head!r:.80}")
    kernel, bias = head["kernel"], head["bias"]
    if kernel.shape[0] != feats_BxF.shape[1] or bias.shape != (kernel.shape[1],):
        raise ValueError(
            f"{where}: head kernel {kernel.shape} / bias {bias.shape} do not fit features of size "
            f"{feats_BxF.shape[1]} (embedding dim {u.shape[1]}); re-create it with init_softmax_head"
        )
    if chk.is_concrete(labels_B):
        y_np = np.asarray(labels_B)
        if np.any((y_np < 0) | (y_np >= kernel.shape[1])):
            raise ValueError(f"{where}: labels must lie in [0, {kernel.shape[1]}), got {np.unique(y_np).tolist()}")
    logits_BxC = feats_BxF @ kernel + bias
    logp_BxC = jax.nn.log_softmax(logits_BxC, axis=-1)
    return -jnp.mean(jnp.take_along_axis(logp_BxC, y[:, None], axis=1))


def mega_batch_margin_loss(u_BxD: jax.Array, v_BxD: jax.Array, labels_B=None, *, positive_margin: float = 0.8,
                           negative_margin: float = 0.3) -> jax.Array:
    """MegaBatchMargin (Wieting & Gimpel 2018; ST's MegaBatchMarginLoss) on (anchor, positive) pairs.

    loss = (1/B) sum_i relu(m+ - cos(u_i, v_i)) + relu(max_{j != i} cos(u_i, v_j) - m-): each
    anchor's hardest in-batch negative is mined from the other positives. (ST's mini-batched
    version computes the same value in chunks; here GradCache / jit handle the memory.)
    """
    if labels_B is not None:
        raise ValueError("mega_batch_margin: takes no labels (negatives are mined in the batch), got labels")
    u, v = _pair("mega_batch_margin_loss", u_BxD, v_BxD)
    cos_BxB = l2_normalize(u) @ l2_normalize(v).T
    b = u.shape[0]
    hardest_B = jnp.max(jnp.where(jnp.eye(b, dtype=bool), -jnp.inf, cos_BxB), axis=1)
    per_row = jax.nn.relu(positive_margin - jnp.diagonal(cos_BxB)) + jax.nn.relu(hardest_B - negative_margin)
    return jnp.sum(per_row) / b
