"""Knowledge distillation from teacher data that rides in the batch's `labels` column.

sentence-transformers keeps teacher signals in the dataset's label column, computed once
offline: score margins (MarginMSE, Hofstaetter et al. 2020), score lists over the candidates
(DistillKLDiv, as in the RankGPT/Rank-DistiLLM line), or teacher embeddings (MSE for
multilingual distillation, Reimers & Gurevych 2020; EmbedDistill, Kim et al. 2023). siamjax
does the same: a data file's `teacher` column becomes float32 `labels` of shape `[B]`,
`[B, K]`, `[B, T]` or `[B, S, T]` (`siamjax.data.records`), sharded over the batch like any
per-pair array (`siamjax.parallel.batch`). All functions take the stacked sides `[S, B, D]`.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from siamjax.losses import checks as chk
from siamjax.similarity import l2_normalize, pairwise_distance, pairwise_similarity

EMBED_METRICS = ("mse", "l2", "cosine")


def margin_mse_loss(emb_SxBxD: jax.Array, labels: jax.Array, *, similarity: str = "dot") -> jax.Array:
    """MarginMSE: mean_{i,k} ((sim(q_i, p_i) - sim(q_i, n_ik)) - margin_ik)^2.

    Sides: query, positive, K >= 1 negatives. `labels` are the teacher's margins `[B]` (K = 1)
    or `[B, K]`, or its scores `[B, 1 + K]` (positive first; margins are taken here).
    `similarity` is sentence-transformers' default pairwise dot product, or "cosine".
    """
    where = "margin_mse"
    emb = _sides(where, emb_SxBxD, 3)
    s, b = emb.shape[:2]
    k = s - 2
    teacher = check_teacher(where, labels, b)
    if teacher.shape == (b, k + 1):
        teacher = teacher[:, :1] - teacher[:, 1:]
    if teacher.shape == (b,):
        teacher = teacher[:, None]
    if teacher.shape != (b, k):
        raise ValueError(f"{where}: teacher labels must be margins [{b}, {k}] (or [{b}] for one negative) or "
                         f"scores [{b}, {k + 1}], got {tuple(labels.shape)}")
    pos_B = pairwise_similarity(emb[0], emb[1], similarity)
    negs_KxB = jax.vmap(lambda n_BxD: pairwise_similarity(emb[0], n_BxD, similarity))(emb[2:])
    return jnp.mean(jnp.square(pos_B[:, None] - negs_KxB.T - teacher))


def distill_kl_div_loss(emb_SxBxD: jax.Array, labels: jax.Array, *, similarity: str = "dot",
                        temperature: float = 1.0, student_temperature: float | None = None,
                        teacher_temperature: float | None = None) -> jax.Array:
    """DistillKLDiv: KL(softmax(teacher / T_t) || softmax(student / T_s)) per query, times T_s^2.

    Sides: query and N >= 2 candidates; `labels` are the teacher's scores `[B, N]`, student
    scores are sim(q, c_n). The batch mean and the T_s^2 factor follow sentence-transformers.
    """
    where = "distill_kl_div"
    emb = _sides(where, emb_SxBxD, 3)
    s, b = emb.shape[:2]
    t_student = temperature if student_temperature is None else student_temperature
    t_teacher = temperature if teacher_temperature is None else teacher_temperature
    for name, value in (("temperature", temperature), ("student_temperature", t_student),
                        ("teacher_temperature", t_teacher)):
        if not 0 < value < math.inf:
            raise ValueError(f"{where}: {name}={value} must be a positive finite number")
    teacher = check_teacher(where, labels, b)
    if teacher.shape != (b, s - 1):
        raise ValueError(f"{where}: teacher scores must be [{b}, {s - 1}] (one per candidate column), "
                         f"got {tuple(labels.shape)}")
    student_BxN = jax.vmap(lambda c_BxD: pairwise_similarity(emb[0], c_BxD, similarity), out_axes=1)(emb[1:])
    log_student = jax.nn.log_softmax(student_BxN / t_student, axis=1)
    log_teacher = jax.nn.log_softmax(teacher / t_teacher, axis=1)
    kl = jnp.sum(jnp.exp(log_teacher) * (log_teacher - log_student)) / b
    return kl * t_student ** 2


def embed_distill_loss(emb_SxBxD: jax.Array, labels: jax.Array, projection: dict | None = None, *,
                       metric: str = "cosine") -> jax.Array:
    """EmbedDistill / MSE: mean over sides of the distance between student and teacher embeddings.

    `labels` are the teacher embeddings `[B, T]` (one target for every side: multilingual
    distillation, where a sentence and its translation both match the teacher's source
    embedding) or `[B, S, T]` (one per side). `projection` {"kernel" [D, T], "bias" [T]}
    maps the student into the teacher's space when their widths differ. metric: "mse" (mean
    squared error, sentence-transformers' MSELoss), "l2" (mean Euclidean distance) or "cosine".
    """
    where = "embed_distill"
    if metric not in EMBED_METRICS:
        raise ValueError(f"{where}: metric={metric!r}; use one of {EMBED_METRICS}")
    emb = _sides(where, emb_SxBxD, 1)
    s, b, _ = emb.shape
    teacher = check_teacher(where, labels, b)
    if teacher.ndim == 2:
        teacher = jnp.broadcast_to(teacher[:, None], (b, s, teacher.shape[-1]))
    if teacher.ndim != 3 or teacher.shape[1] != s:
        raise ValueError(f"{where}: teacher embeddings must be [{b}, T] or [{b}, {s}, T] for {s} text "
                         f"column(s), got {tuple(labels.shape)}")
    if projection is not None:
        emb = emb @ projection["kernel"] + projection["bias"]
    if emb.shape[-1] != teacher.shape[-1]:
        raise ValueError(f"{where}: student width {emb.shape[-1]} != teacher width {teacher.shape[-1]}; "
                         f"set projection_dim={teacher.shape[-1]}")
    student_SxBxT, teacher_SxBxT = emb, jnp.moveaxis(teacher, 1, 0).astype(emb.dtype)
    if metric == "mse":
        per_side = jnp.mean(jnp.square(student_SxBxT - teacher_SxBxT), axis=(1, 2))
    elif metric == "l2":
        per_side = jnp.mean(jax.vmap(lambda u, v: pairwise_distance(u, v, "euclidean"))(student_SxBxT, teacher_SxBxT), 1)
    else:
        per_side = jnp.mean(1.0 - jnp.sum(l2_normalize(student_SxBxT) * l2_normalize(teacher_SxBxT), -1), 1)
    return jnp.mean(per_side)


def init_projection(rng, dim: int, projection_dim: int) -> dict:
    """A Linear(dim -> projection_dim) initialised like torch's nn.Linear: U(+-1/sqrt(dim))."""
    if not isinstance(projection_dim, int) or projection_dim <= 0:
        raise ValueError(f"embed_distill: projection_dim must be a positive int, got {projection_dim!r}")
    k_w, k_b = jax.random.split(rng)
    bound = 1.0 / math.sqrt(dim)
    return {"kernel": jax.random.uniform(k_w, (dim, projection_dim), jnp.float32, -bound, bound),
            "bias": jax.random.uniform(k_b, (projection_dim,), jnp.float32, -bound, bound)}


def check_teacher(where: str, labels, batch: int) -> jax.Array:
    """Teacher data: a float array whose leading axis is the batch (at least float32)."""
    if labels is None:
        raise ValueError(f"{where}: needs teacher data in `labels` (a data column with the 'teacher' role), got None")
    if not hasattr(labels, "shape") or not jnp.issubdtype(labels.dtype, jnp.number):
        raise TypeError(f"{where}: teacher labels must be a numeric array, got {type(labels).__name__}")
    if labels.ndim == 0 or labels.shape[0] != batch:
        raise ValueError(f"{where}: teacher labels must have the batch ({batch}) as leading axis, "
                         f"got shape {tuple(labels.shape)}")
    chk.check_finite(where, "labels", labels)
    labels = jnp.asarray(labels)
    return labels.astype(jnp.promote_types(labels.dtype, jnp.float32))


def _sides(where: str, emb_SxBxD, min_sides: int) -> jax.Array:
    emb = chk.check_float_array(where, "emb_SxBxD", emb_SxBxD, 3)
    if emb.shape[0] < min_sides:
        raise ValueError(f"{where}: needs at least {min_sides} sides, got {emb.shape[0]} ({tuple(emb.shape)})")
    chk.check_finite(where, "emb_SxBxD", emb)
    return emb
