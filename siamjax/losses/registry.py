"""The loss library: every training signal for siamese encoders, and a registry by name.

The functions themselves live by family: in-batch negatives (InfoNCE/MNRL with sentence-
transformers 6.x's directions, SigLIP) and their sharded and ring forms in
`siamjax.losses.in_batch` (maths in `directions`, `ring`), GISTEmbed in `gist`, labelled pairs
in `pairs`, triplets in `triplets`, distillation from teacher data in `distill`, GOR in
`regularizers`. The training step does not call them directly; it asks the registry for a
uniform `LossFn`:

    loss_fn = get_loss("mnrl", learnable_scale=True, mesh=mesh, batch_axes=("data", "fsdp"))
    loss_params = init_loss_params("mnrl", dim, None, rng, learnable_scale=True)
    loss = loss_fn(emb_SxBxD, labels_B, loss_params)          # scalar, jit/grad friendly

`emb_SxBxD` are the stacked sides from `jax.vmap(encode_fn, in_axes=(None, 0))`; `labels_B` is
None or the per-pair labels; `loss_params` is the pytree from `init_loss_params` (learnable
logit scale, SBERT softmax head, distillation projection, or `{}`). An optional fourth
argument `text_ids_SxB` (int ids, equal = identical text) masks false negatives in InfoNCE; a
fifth, `guide_SxBxD`, carries a frozen guide encoder's embeddings of the same batch (GIST).
For the distillation losses `labels_B` is the teacher data (`[B]`, `[B, K]`, `[B, T]`,
`[B, S, T]`).
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from siamjax.losses import checks as chk
from siamjax.losses.in_batch import (
    make_infonce_fn, make_sigmoid_fn, shard_over_batch,
)
from siamjax.losses.distill import distill_kl_div_loss, embed_distill_loss, init_projection, margin_mse_loss
from siamjax.losses.gist import check_gist_options, gist_loss
from siamjax.losses.pairs import (
    angle_loss, contrastive_loss, cosent_loss, cosine_mse_loss, init_softmax_head, mega_batch_margin_loss,
    online_contrastive_loss, softmax_loss,
)
from siamjax.losses.regularizers import gor_loss
from siamjax.losses.triplets import (
    batch_all_triplet_loss, batch_hard_triplet_loss, batch_semi_hard_triplet_loss, triplet_loss,
)
from siamjax.similarity import l2_normalize

# LossFn(emb_SxBxD, labels_B | None, loss_params, text_ids_SxB=None, guide_SxBxD=None) -> float32 scalar
LossFn = Callable[..., jax.Array]
# Losses that score the batch with a second, frozen encoder's embeddings too (`guide_SxBxD`).
GUIDED_LOSSES = ("gist",)
# Losses whose `labels` are teacher data (margins, score lists or embeddings; data role 'teacher').
TEACHER_LOSSES = ("margin_mse", "distill_kl_div", "mse", "embed_distill")



@dataclasses.dataclass(frozen=True)
class _Spec:
    """How a registry name becomes a LossFn: its options (with defaults), builder and params."""

    options: dict[str, Any]
    build: Callable[[dict[str, Any], Any, tuple[str, ...]], LossFn]
    init: Callable[[dict[str, Any], int, int | None, Any], dict] = lambda kw, dim, n, rng: {}


def _sides(where: str, emb_SxBxD, num_sides: int | None) -> jax.Array:
    emb = chk.check_float_array(where, "emb_SxBxD", emb_SxBxD, 3)
    if num_sides is not None and emb.shape[0] != num_sides:
        raise ValueError(f"{where}: expects S={num_sides} stacked sides [S, B, D], got {emb.shape}")
    return emb


def _no_extras(where, text_ids_SxB, guide_SxBxD=None):
    if text_ids_SxB is not None:
        raise ValueError(f"{where}: text_ids_SxB (false-negative masking) is only supported by infonce/mnrl")
    if guide_SxBxD is not None:
        raise ValueError(f"{where}: guide_SxBxD (a guide model's embeddings) is only used by {GUIDED_LOSSES}")


def _pair_builder(name: str, fn: Callable):
    """LossFn over S=2 sides for a loss fn(u, v, labels, **options)."""

    def build(kw, mesh, axes):
        def loss_fn(emb_SxBxD, labels_B=None, loss_params=None, text_ids_SxB=None, guide_SxBxD=None):
            _no_extras(name, text_ids_SxB, guide_SxBxD)
            emb = _sides(name, emb_SxBxD, 2)
            return fn(emb[0], emb[1], labels_B, **kw)
        return loss_fn

    return build


def _triplet_build(kw, mesh, axes):
    def loss_fn(emb_SxBxD, labels_B=None, loss_params=None, text_ids_SxB=None, guide_SxBxD=None):
        _no_extras("triplet", text_ids_SxB, guide_SxBxD)
        if labels_B is not None:
            raise ValueError("triplet: takes no labels (sides are anchor, positive, negative), got labels")
        emb = _sides("triplet", emb_SxBxD, 3)
        return triplet_loss(emb[0], emb[1], emb[2], **kw)
    return loss_fn


def _mining_builder(name: str, fn: Callable):
    """Label-mined triplet losses: all S sides are pooled, each side sharing its row's label.

    With S = 1 (single sentences with a class) this is exactly ST's loss; with pairs, both
    sentences of row i carry label i.
    """

    def build(kw, mesh, axes):
        def loss_fn(emb_SxBxD, labels_B=None, loss_params=None, text_ids_SxB=None, guide_SxBxD=None):
            _no_extras(name, text_ids_SxB, guide_SxBxD)
            emb = _sides(name, emb_SxBxD, None)
            s, b, d = emb.shape
            labels = chk.check_labels(name, labels_B, b, "int")
            return fn(emb.reshape(s * b, d), jnp.tile(labels, s), **kw)
        return loss_fn

    return build


def _softmax_build(kw, mesh, axes):
    def loss_fn(emb_SxBxD, labels_B=None, loss_params=None, text_ids_SxB=None, guide_SxBxD=None):
        _no_extras("softmax", text_ids_SxB, guide_SxBxD)
        emb = _sides("softmax", emb_SxBxD, 2)
        if not loss_params or "softmax_head" not in loss_params:
            raise ValueError("softmax: loss_params['softmax_head'] is missing; create it with "
                             "init_loss_params('softmax', dim, num_labels, rng)")
        return softmax_loss(emb[0], emb[1], labels_B, loss_params["softmax_head"], **kw)
    return loss_fn


def _softmax_init(kw, dim, num_labels, rng):
    if rng is None:
        raise ValueError("init_loss_params('softmax', ...): needs an rng to initialise the head")
    return {"softmax_head": init_softmax_head(rng, dim, num_labels, **kw)}


def _in_batch_build(name: str, make_fn):
    """InfoNCE/SigLIP: plain, or sharded over the mesh's batch axes when a mesh is given."""

    def build(kw, mesh, axes):
        kw = {("learnable_scale_param" if k == "learnable_scale" else k): v for k, v in kw.items()}
        if mesh is None:
            return make_fn(**kw)
        return shard_over_batch(make_fn(axis_name=axes, **kw), mesh, axes, f"sharded_{name}")

    return build


def _gist_build(kw, mesh, axes):
    """GISTEmbed on stacked sides + the guide's embeddings; all-gathered over the mesh if given."""
    check_gist_options(kw["temperature"], kw["margin_strategy"])

    def make(axis_name):
        def loss_fn(emb_SxBxD, labels_B=None, loss_params=None, text_ids_SxB=None, guide_SxBxD=None):
            if labels_B is not None:
                raise ValueError("gist: takes no labels (positives are given by position), got labels")
            _no_extras("gist", text_ids_SxB)
            if guide_SxBxD is None:
                raise ValueError("gist: needs the guide model's embeddings guide_SxBxD (set loss.guide)")
            return gist_loss(emb_SxBxD, guide_SxBxD, axis_name=axis_name, **kw)
        return loss_fn

    return make(None) if mesh is None else shard_over_batch(make(axes), mesh, axes, "sharded_gist")


def _teacher_builder(name: str, fn: Callable, fixed: dict | None = None):
    """Distillation LossFn: `labels` hold the teacher data; `projection_dim` adds a learnable
    projection (loss_params['projection'])."""

    def build(kw, mesh, axes):
        kw = {k: v for k, v in kw.items() if k != "projection_dim"} | (fixed or {})

        def loss_fn(emb_SxBxD, labels_B=None, loss_params=None, text_ids_SxB=None, guide_SxBxD=None):
            _no_extras(name, text_ids_SxB, guide_SxBxD)
            extra = {}
            if loss_params and "projection" in loss_params:
                extra["projection"] = loss_params["projection"]
            return fn(emb_SxBxD, labels_B, **extra, **kw)
        return loss_fn

    return build


def _projection_init(kw, dim, num_labels, rng):
    if kw.get("projection_dim") is None:
        return {}
    if rng is None:
        raise ValueError("init_loss_params(..., projection_dim=...): needs an rng to initialise the projection")
    return {"projection": init_projection(rng, dim, kw["projection_dim"])}


def _whole_batch_builder(name: str, fn: Callable):
    """A loss of all stacked sides that takes no labels (GOR)."""

    def build(kw, mesh, axes):
        def loss_fn(emb_SxBxD, labels_B=None, loss_params=None, text_ids_SxB=None, guide_SxBxD=None):
            _no_extras(name, text_ids_SxB, guide_SxBxD)
            if labels_B is not None:
                raise ValueError(f"{name}: takes no labels, got labels")
            return fn(emb_SxBxD, **kw)
        return loss_fn

    return build


def _scale_init(keys):
    def init(kw, dim, num_labels, rng):
        if not kw["learnable_scale"]:
            return {}
        params = {"log_scale": jnp.asarray(math.log(kw["scale"]), jnp.float32)}
        if "bias" in keys:
            params["bias"] = jnp.asarray(kw["bias"], jnp.float32)
        return params
    return init


_INFONCE = _Spec(
    options=dict(scale=20.0, learnable_scale=False, max_scale=100.0, similarity="cosine",
                 symmetric=False, directions=None, partition_mode=None, hardness_mode=None,
                 hardness_strength=0.0, block_size=None, ring=False),
    build=_in_batch_build("infonce", make_infonce_fn),
    init=_scale_init(("log_scale",)),
)
_DISTANCE = dict(margin=5.0, distance="euclidean")
_REGISTRY: dict[str, _Spec] = {
    "mnrl": _INFONCE,
    "infonce": _INFONCE,
    "sigmoid": _Spec(
        options=dict(scale=10.0, bias=-10.0, learnable_scale=True, max_scale=100.0, similarity="cosine"),
        build=_in_batch_build("sigmoid", make_sigmoid_fn),
        init=_scale_init(("log_scale", "bias")),
    ),
    "cosent": _Spec(dict(scale=20.0), _pair_builder("cosent", cosent_loss)),
    "angle": _Spec(dict(scale=20.0), _pair_builder("angle", angle_loss)),
    "cosine_mse": _Spec({}, _pair_builder("cosine_mse", cosine_mse_loss)),
    "contrastive": _Spec(dict(margin=0.5, distance="cosine", size_average=True),
                         _pair_builder("contrastive", contrastive_loss)),
    "online_contrastive": _Spec(dict(margin=0.5, distance="cosine"),
                                _pair_builder("online_contrastive", online_contrastive_loss)),
    "triplet": _Spec(dict(_DISTANCE), _triplet_build),
    "batch_hard_triplet": _Spec(dict(_DISTANCE), _mining_builder("batch_hard_triplet", batch_hard_triplet_loss)),
    "batch_semi_hard_triplet": _Spec(dict(_DISTANCE), _mining_builder("batch_semi_hard_triplet",
                                                                      batch_semi_hard_triplet_loss)),
    "batch_all_triplet": _Spec(dict(_DISTANCE), _mining_builder("batch_all_triplet", batch_all_triplet_loss)),
    "softmax": _Spec(dict(concat_rep=True, concat_diff=True, concat_mul=False), _softmax_build, _softmax_init),
    "mega_batch_margin": _Spec(dict(positive_margin=0.8, negative_margin=0.3),
                               _pair_builder("mega_batch_margin", mega_batch_margin_loss)),
    "gist": _Spec(dict(temperature=0.01, margin_strategy="absolute", margin=0.0, contrast_anchors=True,
                       contrast_positives=True), _gist_build),
    "margin_mse": _Spec(dict(similarity="dot"), _teacher_builder("margin_mse", margin_mse_loss)),
    "distill_kl_div": _Spec(dict(similarity="dot", temperature=1.0, student_temperature=None,
                                 teacher_temperature=None), _teacher_builder("distill_kl_div", distill_kl_div_loss)),
    "mse": _Spec(dict(projection_dim=None), _teacher_builder("mse", embed_distill_loss, dict(metric="mse")),
                 _projection_init),
    "embed_distill": _Spec(dict(metric="cosine", projection_dim=None),
                           _teacher_builder("embed_distill", embed_distill_loss), _projection_init),
    "gor": _Spec(dict(mean_weight=1.0, second_moment_weight=1.0, aggregation="mean", similarity="cosine"),
                 _whole_batch_builder("gor", gor_loss)),
}
LOSS_NAMES = tuple(sorted(_REGISTRY))
_COMMON = ("matryoshka_dims", "matryoshka_weights", "matryoshka_normalize", "mesh", "batch_axes")


def _resolve(name: str, kwargs: dict) -> tuple[_Spec, dict, dict]:
    if name not in _REGISTRY:
        raise ValueError(f"unknown loss {name!r}; valid names: {', '.join(LOSS_NAMES)}")
    spec = _REGISTRY[name]
    unknown = sorted(set(kwargs) - set(spec.options) - set(_COMMON))
    if unknown:
        valid = sorted(spec.options) + list(_COMMON)
        raise TypeError(f"loss {name!r}: unknown option(s) {unknown}; valid options: {valid}")
    options = {**spec.options, **{k: v for k, v in kwargs.items() if k in spec.options}}
    common = {k: kwargs.get(k) for k in _COMMON}
    return spec, options, common


def get_loss(name: str, **kwargs) -> LossFn:
    """The LossFn `(emb_SxBxD, labels_B | None, loss_params, text_ids_SxB=None) -> scalar` for `name`.

    Options are those of the underlying loss (e.g. scale, symmetric, margin, distance) plus:
    matryoshka_dims / matryoshka_weights / matryoshka_normalize: wrap in `matryoshka`;
    mesh / batch_axes: for "mnrl"/"infonce"/"sigmoid"/"gist", the sharded form over the mesh's
      batch axes (shard_map + all_gather, or the ring with `ring=True`); the other losses are
      per-pair or O(B^2) on small batches and are partitioned automatically by jit, so they
      ignore the mesh.
    Under jit a NaN/Inf anywhere in `emb_SxBxD` makes the loss NaN (the loop stops on it);
    eagerly it raises a ValueError.
    """
    spec, options, common = _resolve(name, kwargs)
    if common["batch_axes"] is not None and common["mesh"] is None:
        raise ValueError(f"loss {name!r}: batch_axes={common['batch_axes']} given without a mesh")
    axes = tuple(common["batch_axes"] or ("data", "fsdp"))
    loss_fn = spec.build(options, common["mesh"], axes)
    if common["matryoshka_dims"] is not None:
        if name == "softmax":
            raise ValueError("loss 'softmax' cannot be wrapped in matryoshka: its head is sized for one dim")
        loss_fn = matryoshka(loss_fn, common["matryoshka_dims"], common["matryoshka_weights"],
                             normalize=common["matryoshka_normalize"] is not False)
    elif common["matryoshka_weights"] is not None:
        raise ValueError(f"loss {name!r}: matryoshka_weights given without matryoshka_dims")

    def checked(emb_SxBxD, labels_B=None, loss_params=None, text_ids_SxB=None, guide_SxBxD=None):
        extra = {} if guide_SxBxD is None else {"guide_SxBxD": guide_SxBxD}
        loss = loss_fn(emb_SxBxD, labels_B, loss_params, text_ids_SxB, **extra)
        return chk.nan_if_nonfinite(loss, emb_SxBxD)

    checked.__name__ = checked.__qualname__ = f"{name}_loss_fn"
    checked.__doc__ = f"Registry LossFn for {name!r} with options {options}."
    return checked


def init_loss_params(name: str, dim: int, num_labels: int | None = None, rng=None, **kwargs) -> dict:
    """Trainable loss parameters for `get_loss(name, **kwargs)`: `{}` for most losses,
    `{"log_scale"}` for a learnable InfoNCE scale, `{"log_scale", "bias"}` for SigLIP,
    `{"softmax_head": {"kernel", "bias"}}` for SBERT's classifier. Takes the same kwargs as
    get_loss so one config dict serves both.
    """
    spec, options, _ = _resolve(name, kwargs)
    if not isinstance(dim, int) or dim <= 0:
        raise ValueError(f"init_loss_params({name!r}): dim must be a positive int, got {dim!r}")
    return spec.init(options, dim, num_labels, rng)


def matryoshka(
    loss_fn: LossFn,
    dims: Sequence[int],
    weights: Sequence[float] | None = None,
    *,
    normalize: bool = True,
) -> LossFn:
    """Matryoshka representation learning (Kusupati et al. 2022; ST's MatryoshkaLoss).

    loss = sum_k w_k * loss_fn(shrink(emb, d_k)), shrink = keep the first d_k dims and (like ST)
    L2-normalise them, so every prefix of the embedding is itself a usable embedding. Weights
    default to 1. Loss params (e.g. a learnable scale) are shared by all dims.
    """
    dims = tuple(int(d) for d in dims)
    if not dims or any(d <= 0 for d in dims):
        raise ValueError(f"matryoshka: dims must be positive ints, got {dims}")
    weights = (1.0,) * len(dims) if weights is None else tuple(float(w) for w in weights)
    if len(weights) != len(dims):
        raise ValueError(f"matryoshka: {len(weights)} weights for {len(dims)} dims")

    def loss_fn_m(emb_SxBxD, labels_B=None, loss_params=None, text_ids_SxB=None, guide_SxBxD=None):
        emb = chk.check_float_array("matryoshka", "emb_SxBxD", emb_SxBxD, 3)
        if max(dims) > emb.shape[-1]:
            raise ValueError(f"matryoshka: dims {dims} exceed the embedding dim {emb.shape[-1]}")
        total = jnp.zeros((), jnp.float32)
        for d, w in zip(dims, weights):
            small = emb[..., :d]
            small = l2_normalize(small) if normalize else small
            extra = {} if guide_SxBxD is None else {"guide_SxBxD": guide_SxBxD}
            total = total + w * loss_fn(small, labels_B, loss_params, text_ids_SxB, **extra)
        return total

    return loss_fn_m
