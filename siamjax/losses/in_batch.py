"""In-batch-negative losses (InfoNCE / MNRL, SigLIP sigmoid) and their sharded forms.

One implementation serves both the single-device and the data-parallel case: the functions take
an optional `axis_name`. Without it they are the plain global losses. Called inside
`jax.shard_map` with the mesh's batch axes, each device all-gathers the candidates of the others
(`all_gather(tiled=True)`, whose transpose is a reduce-scatter, so remote candidates receive real
gradients), scores its `b_local` queries against the `B_global` candidates, finds its labels at
`axis_index * b_local + arange(b_local)` and averages with `pmean`: memory per device is
O(b_local * B_global) instead of O(B_global^2), and the result equals the global loss.
`sharded_infonce` / `sharded_sigmoid` wrap that in `shard_map` for globally sharded `[S, B, D]`
embeddings under `jax.jit`. InfoNCE covers sentence-transformers 6.x's MNRL options (the
directions, partition and hardness maths live in `siamjax.losses.directions`) and, with
`ring=True`, passes candidate blocks around the devices instead of gathering them
(`siamjax.losses.ring`).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from siamjax.losses import checks as chk
from siamjax.losses.directions import MnrlSpec, blocked_lse
from siamjax.losses.ring import ring_lse
from siamjax.parallel.batch import check_batch_divisible
from siamjax.similarity import prepare

AxisName = str | tuple[str, ...] | None


def learnable_scale(log_scale: jax.Array, max_scale: float = 100.0) -> jax.Array:
    """exp(clip(log_scale, 0, log(max_scale))): CLIP's learnable logit scale (Radford et al. 2021).

    Log-parameterised so the optimiser moves it multiplicatively; clipped (CLIP clamps at 100) so
    the temperature cannot collapse to zero and blow up the logits.
    """
    return jnp.exp(jnp.clip(jnp.asarray(log_scale, jnp.float32), 0.0, math.log(max_scale)))


def infonce_loss(
    anchors_BxD: jax.Array,
    positives_BxD: jax.Array,
    negatives_BxKxD: jax.Array | None = None,
    *,
    scale: float | jax.Array = 20.0,
    similarity: str = "cosine",
    symmetric: bool = False,
    directions: Sequence[str] | None = None,
    partition_mode: str | None = None,
    hardness_mode: str | None = None,
    hardness_strength: float = 0.0,
    text_ids_SxB: jax.Array | None = None,
    block_size: int | None = None,
    ring: bool = False,
    axis_name: AxisName = None,
) -> jax.Array:
    """InfoNCE / multiple-negatives ranking loss (van den Oord et al. 2018), as ST 6.x's MNRL.

    Default: loss = mean_i [ logsumexp_j(s * sim(a_i, c_j)) - s * sim(a_i, p_i) ], where the
    candidates c are all positives of the batch followed by all hard negatives ([B*(1+K)] of
    them) and s is the scale (1/temperature; 20 = temperature 0.05).
    directions / partition_mode / hardness_mode / hardness_strength: sentence-transformers
      6.x's options (`siamjax.losses.directions`): which interaction terms enter the softmax
      (query_to_doc, query_to_query, doc_to_query, doc_to_doc), one joint softmax or one per
      direction, and the alpha * stop_grad(sim) penalty on in-batch / hard / all negatives.
      `symmetric=True` is the symmetric InfoNCE shorthand (query_to_doc + doc_to_query,
      per_direction).
    text_ids_SxB: optional int ids of the texts of every side ([2+K, B]; equal ids = identical
      text, e.g. a hash). A candidate whose text equals the row's positive or the row's own query
      text is a false negative and is masked out (the row's own pair is kept).
    block_size: score the queries in blocks of this many rows under `jax.checkpoint`, so the
      live logits are [block, B*(1+K)] in the forward and backward pass (used with GradCache).
    ring: inside `shard_map`, pass candidate blocks around the devices (`ppermute`) with an
      online log-sum-exp instead of all-gathering them (`siamjax.losses.ring`): per-device
      logits [b_local, b_local*(1+K)] instead of [b_local, B*(1+K)]. Same value and gradients.
    axis_name: mesh axis name(s) of the batch when called inside `shard_map`; the inputs are then
      the local shards and the result is the global loss on every device.
    """
    where = "infonce_loss"
    spec = MnrlSpec.from_options(directions=directions, partition_mode=partition_mode, hardness_mode=hardness_mode,
                                 hardness_strength=hardness_strength, symmetric=symmetric)
    if ring and block_size is not None:
        raise ValueError(f"{where}: block_size tiles the all-gathered logits; ring=True already holds only "
                         f"[b_local, b_local*(1+K)] logits, so leave block_size unset")
    local = _local_block(where, anchors_BxD, positives_BxD, negatives_BxKxD, text_ids_SxB, similarity)
    b = local["q"].shape[0]
    if ring:
        lse_Pxb = ring_lse(local, scale, spec, axis_name)
    else:
        gather, offset = _gather_and_offset(axis_name, b)
        cands = jax.tree.map(gather, local)
        lse_Pxb = blocked_lse(local, offset + jnp.arange(b), cands, jnp.arange(cands["q"].shape[0]), scale,
                              spec, block_size)
    pos_b = scale * jnp.sum(local["q"] * local["p"], axis=-1)
    loss = jnp.mean(jnp.mean(lse_Pxb, axis=0) - pos_b)
    return loss if axis_name is None else jax.lax.pmean(loss, axis_name)


def _local_block(where, anchors_BxD, positives_BxD, negatives_BxKxD, text_ids_SxB, similarity) -> dict:
    """This device's rows as a candidate block (`siamjax.losses.directions`), inputs checked."""
    a_bxD = chk.check_float_array(where, "anchors_BxD", anchors_BxD, 2)
    p_bxD = chk.check_float_array(where, "positives_BxD", positives_BxD, 2)
    chk.check_same_shape(where, ("anchors_BxD", "positives_BxD"), (a_bxD, p_bxD))
    b, dim = a_bxD.shape
    local = {"q": prepare(a_bxD, similarity), "p": prepare(p_bxD, similarity)}
    if negatives_BxKxD is not None:
        n_bxKxD = chk.check_float_array(where, "negatives_BxKxD", negatives_BxKxD, 3)
        if (n_bxKxD.shape[0], n_bxKxD.shape[2]) != (b, dim):
            raise ValueError(f"{where}: negatives_BxKxD must be [{b}, K, {dim}], got {n_bxKxD.shape}")
        chk.check_finite(where, "negatives", n_bxKxD)
        local["n"] = prepare(n_bxKxD, similarity)
    ids_Sxb = _check_text_ids(where, text_ids_SxB, 2 + (local["n"].shape[1] if "n" in local else 0), b)
    if ids_Sxb is not None:
        local["ids"] = ids_Sxb.T
    chk.check_finite(where, "anchors", a_bxD)
    chk.check_finite(where, "positives", p_bxD)
    return local


def sigmoid_loss(
    anchors_BxD: jax.Array,
    positives_BxD: jax.Array,
    negatives_BxKxD: jax.Array | None = None,
    *,
    scale: float | jax.Array = 10.0,
    bias: float | jax.Array = -10.0,
    similarity: str = "cosine",
    axis_name: AxisName = None,
) -> jax.Array:
    """Pairwise sigmoid loss of SigLIP (Zhai et al. 2023).

    loss = -(1/B) sum_i sum_j log sigmoid(z_ij * (s * sim(a_i, c_j) + bias)), z_ij = +1 for
    the row's own positive and -1 for every other candidate (other rows' positives and all hard
    negatives). SigLIP initialises s = 10 (log-parameterised) and bias = -10.

    With `axis_name` (inside `shard_map`) this is SigLIP's chunked variant: no all-gather; the
    devices pass their candidate block around the ring (`ppermute`) n-1 times, so each device
    holds one [b_local, b_local*(1+K)] logit block at a time. The ring step is rematerialised
    in the backward pass, keeping memory O(b_local^2) rather than O(b_local * B_global).
    """
    where = "sigmoid_loss"
    a_bxD = chk.check_float_array(where, "anchors_BxD", anchors_BxD, 2)
    p_bxD = chk.check_float_array(where, "positives_BxD", positives_BxD, 2)
    chk.check_same_shape(where, ("anchors_BxD", "positives_BxD"), (a_bxD, p_bxD))
    b, dim = a_bxD.shape
    cands_CxD = prepare(p_bxD, similarity)
    if negatives_BxKxD is not None:
        n_bxKxD = chk.check_float_array(where, "negatives_BxKxD", negatives_BxKxD, 3)
        if (n_bxKxD.shape[0], n_bxKxD.shape[2]) != (b, dim):
            raise ValueError(f"{where}: negatives_BxKxD must be [{b}, K, {dim}], got {n_bxKxD.shape}")
        chk.check_finite(where, "negatives", n_bxKxD)
        cands_CxD = jnp.concatenate([cands_CxD, prepare(n_bxKxD, similarity).reshape(-1, dim)])
    chk.check_finite(where, "anchors", a_bxD)
    chk.check_finite(where, "positives", p_bxD)
    q_bxD = prepare(a_bxD, similarity)

    def block_nll(c_CxD, own: bool):
        logits_bxC = scale * (q_bxD @ c_CxD.T) + bias
        z_bxC = -jnp.ones_like(logits_bxC)
        if own:
            z_bxC = z_bxC.at[jnp.arange(b), jnp.arange(b)].set(1.0)
        return -jnp.sum(jax.nn.log_sigmoid(z_bxC * logits_bxC))

    total = block_nll(cands_CxD, own=True)
    if axis_name is not None:
        n_dev = jax.lax.axis_size(axis_name)
        if n_dev > 1:
            ring = [(j, (j + 1) % n_dev) for j in range(n_dev)]

            @jax.checkpoint
            def ring_step(c_CxD, _):
                c_CxD = jax.lax.ppermute(c_CxD, axis_name, ring)
                return c_CxD, block_nll(c_CxD, own=False)

            _, nll_steps = jax.lax.scan(ring_step, cands_CxD, length=n_dev - 1)
            total = total + jnp.sum(nll_steps)
        return jax.lax.pmean(total / b, axis_name)
    return total / b


def split_stacked(where: str, emb_SxBxD) -> tuple[jax.Array, jax.Array, jax.Array | None]:
    """[S, B, D] stacked sides -> (anchors [B, D], positives [B, D], hard negatives [B, S-2, D])."""
    emb = chk.check_float_array(where, "emb_SxBxD", emb_SxBxD, 3)
    if emb.shape[0] < 2:
        raise ValueError(f"{where}: needs S >= 2 sides (anchor, positive[, negatives...]), got {emb.shape}")
    negatives = jnp.moveaxis(emb[2:], 0, 1) if emb.shape[0] > 2 else None
    return emb[0], emb[1], negatives


def make_infonce_fn(
    *,
    scale: float = 20.0,
    learnable_scale_param: bool = False,
    max_scale: float = 100.0,
    similarity: str = "cosine",
    symmetric: bool = False,
    directions: Sequence[str] | None = None,
    partition_mode: str | None = None,
    hardness_mode: str | None = None,
    hardness_strength: float = 0.0,
    block_size: int | None = None,
    ring: bool = False,
    axis_name: AxisName = None,
) -> Callable:
    """LossFn(emb_SxBxD, labels_B=None, loss_params=None, text_ids_SxB=None) for InfoNCE/MNRL.

    With `learnable_scale_param`, the scale is `learnable_scale(loss_params["log_scale"])`.
    The MNRL options are checked here, when the loss is built, not at the first step.
    """
    options = dict(directions=directions, partition_mode=partition_mode, hardness_mode=hardness_mode,
                   hardness_strength=hardness_strength, symmetric=symmetric)
    MnrlSpec.from_options(**options)
    if ring and block_size is not None:
        raise ValueError("infonce: block_size tiles the all-gathered logits; with ring=True leave it unset")

    def loss_fn(emb_SxBxD, labels_B=None, loss_params=None, text_ids_SxB=None, guide_SxBxD=None):
        _no_labels("infonce", labels_B)
        _no_guide("infonce", guide_SxBxD)
        a, p, n = split_stacked("infonce", emb_SxBxD)
        s = _scale_from(loss_params, "infonce", scale, learnable_scale_param, max_scale)
        return infonce_loss(a, p, n, scale=s, similarity=similarity, text_ids_SxB=text_ids_SxB,
                            block_size=block_size, ring=ring, axis_name=axis_name, **options)

    return loss_fn


def make_sigmoid_fn(
    *,
    scale: float = 10.0,
    bias: float = -10.0,
    learnable_scale_param: bool = True,
    max_scale: float = 100.0,
    similarity: str = "cosine",
    axis_name: AxisName = None,
) -> Callable:
    """LossFn(emb_SxBxD, labels_B=None, loss_params=None) for SigLIP; learnable t and b by default."""

    def loss_fn(emb_SxBxD, labels_B=None, loss_params=None, text_ids_SxB=None, guide_SxBxD=None):
        _no_labels("sigmoid", labels_B)
        _no_guide("sigmoid", guide_SxBxD)
        if text_ids_SxB is not None:
            raise ValueError("sigmoid: text_ids_SxB (false-negative masking) is only supported by infonce")
        a, p, n = split_stacked("sigmoid", emb_SxBxD)
        s = _scale_from(loss_params, "sigmoid", scale, learnable_scale_param, max_scale)
        b = loss_params["bias"] if learnable_scale_param else bias
        return sigmoid_loss(a, p, n, scale=s, bias=b, similarity=similarity, axis_name=axis_name)

    return loss_fn


def shard_over_batch(local_loss_fn: Callable, mesh: Mesh, batch_axes: Sequence[str], name: str) -> Callable:
    """Wraps a LossFn written for local shards (using `axis_name=batch_axes`) in `jax.shard_map`.

    The result takes globally sharded (or unsharded: they are resharded) `[S, B, D]` embeddings,
    `[B, ...]` labels, replicated loss params, `[S, B]` text ids and `[S, B, G]` guide
    embeddings, and works eagerly or under jit on `Auto` or `Explicit` meshes. B must be a
    multiple of the number of batch shards.
    """
    axes = tuple(batch_axes)
    unknown = [a for a in axes if a not in mesh.axis_names]
    if not axes or unknown:
        raise ValueError(f"{name}: batch axes {axes} must name axes of the mesh {mesh.axis_names}")
    n_shards = math.prod(mesh.shape[a] for a in axes)
    specs = {"emb": P(None, axes, None), "labels": P(axes), "params": P(), "ids": P(None, axes),
             "guide": P(None, axes, None)}

    def body(args):
        extra = {"guide_SxBxD": args["guide"]} if "guide" in args else {}
        return local_loss_fn(args["emb"], args.get("labels"), args.get("params"), args.get("ids"), **extra)

    def loss_fn(emb_SxBxD, labels_B=None, loss_params=None, text_ids_SxB=None, guide_SxBxD=None):
        emb = chk.check_float_array(name, "emb_SxBxD", emb_SxBxD, 3)
        check_batch_divisible(emb.shape[1], n_shards, field=f"{name}: global batch B")
        chk.check_finite(name, "emb_SxBxD", emb)
        if loss_params is not None:
            loss_params = jax.tree.map(jnp.asarray, loss_params)  # python floats -> replicated arrays
        args = {"emb": emb, "labels": labels_B, "params": loss_params, "ids": text_ids_SxB, "guide": guide_SxBxD}
        args = {k: v for k, v in args.items() if v is not None}
        in_specs = {k: specs[k] for k in args}
        args = {k: _place(v, mesh, in_specs[k]) for k, v in args.items()}
        mapped = jax.shard_map(body, mesh=mesh, in_specs=(in_specs,), out_specs=P())
        return mapped(args)

    return loss_fn


def sharded_infonce(mesh: Mesh, batch_axes: Sequence[str] = ("data", "fsdp"), **kwargs) -> Callable:
    """The InfoNCE LossFn for `[S, B, D]` embeddings sharded over `batch_axes` of `mesh`.

    Usable inside `jax.jit`; equals the single-device loss in value and gradients. `kwargs` are
    those of `make_infonce_fn` (scale, learnable_scale_param, symmetric, block_size, ...).
    """
    local = make_infonce_fn(axis_name=tuple(batch_axes), **kwargs)
    return shard_over_batch(local, mesh, batch_axes, "sharded_infonce")


def sharded_sigmoid(mesh: Mesh, batch_axes: Sequence[str] = ("data", "fsdp"), **kwargs) -> Callable:
    """The SigLIP LossFn, chunked across the devices of `batch_axes` (ring of ppermutes)."""
    local = make_sigmoid_fn(axis_name=tuple(batch_axes), **kwargs)
    return shard_over_batch(local, mesh, batch_axes, "sharded_sigmoid")


def _gather_and_offset(axis_name: AxisName, b: int):
    if axis_name is None:
        return (lambda x: x), 0
    gather = lambda x: jax.lax.all_gather(x, axis_name, tiled=True)  # noqa: E731
    return gather, jax.lax.axis_index(axis_name) * b


def _check_text_ids(where, ids, num_sides, b):
    if ids is None:
        return None
    if ids.shape != (num_sides, b) or not jnp.issubdtype(ids.dtype, jnp.integer):
        raise ValueError(f"{where}: text_ids_SxB must be integer [{num_sides}, {b}], got {ids.dtype}{tuple(ids.shape)}")
    return jnp.asarray(ids)


def _no_guide(name, guide):
    if guide is not None:
        raise ValueError(f"{name}: takes no guide embeddings (guide_SxBxD is for 'gist'), got some")


def _no_labels(name, labels):
    if labels is not None:
        raise ValueError(f"{name}: takes no labels (positives are given by position), got labels")


def _scale_from(loss_params, name, scale, learnable, max_scale):
    if not learnable:
        return scale
    if not loss_params or "log_scale" not in loss_params:
        raise ValueError(f"{name}: learnable scale needs loss_params['log_scale'] (see init_loss_params)")
    return learnable_scale(loss_params["log_scale"], max_scale)


def _place(x, mesh: Mesh, spec: P):
    """On an all-Explicit mesh, reshard to `spec` (shard_map requires it); Auto meshes reshard themselves."""
    if all(t == AxisType.Explicit for t in mesh.axis_types):
        return jax.tree.map(lambda leaf: jax.reshard(leaf, NamedSharding(mesh, spec)), x)
    return x
