"""GISTEmbed (Solatorio 2024; sentence-transformers' GISTEmbedLoss / CachedGISTEmbedLoss).

InfoNCE whose in-batch negatives are vetted by a frozen guide model: a candidate the guide
finds at least as similar to the anchor as the anchor's own positive (`absolute`: guide sim >
guide positive sim - margin; `relative`: > positive sim - |positive sim| * margin) is probably
a false negative and is dropped from the softmax. The softmax holds anchor-positive,
anchor-anchor (`contrast_anchors`), positive-positive (`contrast_positives`) and
anchor-negative similarities, all cosine, divided by `temperature`.

The guide's embeddings (`guide_SxBxD`) come from the train step, which runs the frozen guide
encoder on the same batch inside the same jitted step (`siamjax.train.step`); with GradCache
they are computed in the first, gradient-free pass, which is CachedGIST. Sharded (`axis_name`
inside `shard_map`), every device all-gathers the anchors, positives, negatives and their guide
embeddings, so the loss equals the single-device loss on the global batch. (sentence-
transformers' `gather_across_devices` keeps only the local anchors in the anchor-anchor term,
so its multi-GPU loss differs from its single-GPU loss; here they are the same.)
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from siamjax.losses import checks as chk
from siamjax.similarity import l2_normalize

MARGIN_STRATEGIES = ("absolute", "relative")


def gist_loss(
    emb_SxBxD: jax.Array,
    guide_SxBxG: jax.Array,
    *,
    temperature: float = 0.01,
    margin_strategy: str = "absolute",
    margin: float = 0.0,
    contrast_anchors: bool = True,
    contrast_positives: bool = True,
    axis_name=None,
) -> jax.Array:
    """GISTEmbed loss of stacked sides (anchor, positive, negatives...) and their guide embeddings.

    emb_SxBxD / guide_SxBxG: the trained model's and the guide's embeddings of the same S >= 2
      sides (the guide's width G may differ from D). Any number of negative columns is taken,
      as CachedGISTEmbedLoss does.
    axis_name: the batch axes inside `shard_map` (inputs are then the local shards).
    """
    where = "gist"
    check_gist_options(temperature, margin_strategy)
    emb = chk.check_float_array(where, "emb_SxBxD", emb_SxBxD, 3)
    guide = chk.check_float_array(where, "guide_SxBxD", guide_SxBxG, 3)
    if emb.shape[:2] != guide.shape[:2] or emb.shape[0] < 2:
        raise ValueError(f"{where}: model and guide embeddings must both be [S >= 2, B, ...] with the same S and B, "
                         f"got {tuple(emb.shape)} and {tuple(guide.shape)}")
    chk.check_finite(where, "emb_SxBxD", emb)
    chk.check_finite(where, "guide_SxBxD", guide)
    b = emb.shape[1]
    if axis_name is None:
        gather, offset = (lambda x: x), 0
    else:
        gather = lambda x: jax.lax.all_gather(x, axis_name, axis=1, tiled=True)  # noqa: E731
        offset = jax.lax.axis_index(axis_name) * b
    emb, guide = l2_normalize(emb), l2_normalize(jax.lax.stop_gradient(guide))
    all_emb, all_guide = gather(emb), gather(guide)
    target_b = offset + jnp.arange(b)
    guide_pos_bx1 = jnp.sum(guide[0] * guide[1], axis=-1)[:, None]
    if margin_strategy == "absolute":
        threshold_bx1 = guide_pos_bx1 - margin
    else:
        threshold_bx1 = guide_pos_bx1 - jnp.abs(guide_pos_bx1) * margin

    def masked(side_q, side_c, keep_target: bool):
        sim_bxB = emb[side_q] @ all_emb[side_c].T
        drop_bxB = guide[side_q] @ all_guide[side_c].T > threshold_bx1
        if keep_target:
            drop_bxB &= jnp.arange(all_emb.shape[1])[None, :] != target_b[:, None]
        return jnp.where(drop_bxB, -jnp.inf, sim_bxB)

    scores = [masked(0, 1, keep_target=True)]
    if contrast_anchors:
        scores.append(masked(0, 0, keep_target=False))
    if contrast_positives:
        scores.append(masked(1, 1, keep_target=False))
    scores += [masked(0, s, keep_target=False) for s in range(2, emb.shape[0])]
    logits_bxC = jnp.concatenate(scores, axis=1) / temperature
    pos_b = jnp.sum(emb[0] * emb[1], axis=-1) / temperature
    loss = jnp.mean(jax.nn.logsumexp(logits_bxC, axis=1) - pos_b)
    return loss if axis_name is None else jax.lax.pmean(loss, axis_name)


def check_gist_options(temperature, margin_strategy) -> None:
    """GIST's option checks, run when the loss is built and again when it is called."""
    if margin_strategy not in MARGIN_STRATEGIES:
        raise ValueError(f"gist: margin_strategy={margin_strategy!r}; use one of {MARGIN_STRATEGIES}")
    if not temperature > 0:
        raise ValueError(f"gist: temperature={temperature} must be > 0")
