"""The multiple-negatives ranking family of sentence-transformers 6.x as masked logit blocks.

sentence-transformers 6.x's `MultipleNegativesRankingLoss` scores each anchor row i along up
to four *directions*: its query against every document (`query_to_doc`: all positives and
hard negatives; the row's own positive is the target), against every other query
(`query_to_query`), its positive document against every query (`doc_to_query`) and against
every document not of its own row (`doc_to_doc`). `partition_mode` says whether all selected
directions share one softmax ("joint", GTE's improved contrastive loss) or each has its own
and their log-partitions are averaged ("per_direction", symmetric InfoNCE). The hardness
penalty (`hardness_mode`, `hardness_strength` = alpha) adds alpha * stop_grad(sim) to the
chosen negatives' query_to_doc logits (Lan et al. 2025; EmbeddingGemma), so hard negatives
weigh more in the denominator without changing what the gradient flows through.

Why blocks: the same per-row loss is computed three ways — on one device, with every device's
candidates all-gathered (`siamjax.losses.in_batch`), and ring-passed block by block
(`siamjax.losses.ring`). All three build their logits with `block_logits` (local anchor rows
against one block of candidate rows, masks from global row indices) and reduce them with
`partition_lse`, so the masks and penalties are defined once. A block is a dict of prepared
embeddings `q [m, D]`, `p [m, D]`, optional hard negatives `n [m, K, D]` and optional text
ids `ids [m, S]` (equal ids = identical text: such candidates are false negatives and masked).
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from siamjax.losses import checks as chk

DIRECTIONS = ("query_to_doc", "query_to_query", "doc_to_query", "doc_to_doc")
PARTITION_MODES = ("joint", "per_direction")
HARDNESS_MODES = ("in_batch_negatives", "hard_negatives", "all_negatives")
SYMMETRIC = ("query_to_doc", "doc_to_query")


@dataclasses.dataclass(frozen=True)
class MnrlSpec:
    """Which directions, how they are normalised and which negatives get the hardness penalty.

    Validated like sentence-transformers' constructor: query_to_doc is required (it holds the
    positive), and per_direction cannot take the same-type directions (their softmax would not
    contain the positive).
    """

    directions: tuple[str, ...] = ("query_to_doc",)
    partition_mode: str = "joint"
    hardness_mode: str | None = None
    hardness_strength: float = 0.0

    def __post_init__(self):
        where = "mnrl"
        dirs = tuple(self.directions)
        object.__setattr__(self, "directions", dirs)
        unknown = [d for d in dirs if d not in DIRECTIONS]
        if not dirs or unknown:
            raise ValueError(f"{where}: directions {list(dirs)} invalid; choose from {DIRECTIONS}")
        if len(set(dirs)) != len(dirs):
            raise ValueError(f"{where}: directions {list(dirs)} repeat a direction")
        if "query_to_doc" not in dirs:
            raise ValueError(f"{where}: directions must include 'query_to_doc' (it holds the positive pair)")
        if self.partition_mode not in PARTITION_MODES:
            raise ValueError(f"{where}: partition_mode={self.partition_mode!r}; use one of {PARTITION_MODES}")
        if self.partition_mode == "per_direction" and set(dirs) & {"query_to_query", "doc_to_doc"}:
            raise ValueError(f"{where}: partition_mode='per_direction' needs every direction to contain the "
                             f"positive; 'query_to_query'/'doc_to_doc' do not, use partition_mode='joint'")
        if self.hardness_mode is not None and self.hardness_mode not in HARDNESS_MODES:
            raise ValueError(f"{where}: hardness_mode={self.hardness_mode!r}; use None or one of {HARDNESS_MODES}")
        if not self.hardness_strength >= 0.0:
            raise ValueError(f"{where}: hardness_strength={self.hardness_strength} must be >= 0")

    @classmethod
    def from_options(cls, *, directions=None, partition_mode=None, hardness_mode=None,
                     hardness_strength: float = 0.0, symmetric: bool = False) -> "MnrlSpec":
        """The spec for loss options; `symmetric=True` is shorthand for sentence-transformers'
        symmetric InfoNCE (query_to_doc + doc_to_query, per_direction)."""
        if symmetric:
            if directions not in (None, SYMMETRIC) or partition_mode not in (None, "per_direction"):
                raise ValueError("mnrl: symmetric=True means directions=('query_to_doc', 'doc_to_query') with "
                                 "partition_mode='per_direction'; give either symmetric or directions/partition_mode")
            directions, partition_mode = SYMMETRIC, "per_direction"
        return cls(tuple(directions or ("query_to_doc",)), partition_mode or "joint", hardness_mode,
                   float(hardness_strength))

    @property
    def partitions(self) -> tuple[tuple[str, ...], ...]:
        """The directions of each softmax: one group (joint) or one per direction."""
        if self.partition_mode == "joint":
            return (self.directions,)
        return tuple((d,) for d in self.directions)

    @property
    def penalised(self) -> bool:
        return self.hardness_mode is not None and self.hardness_strength > 0.0


def block_logits(rows: dict, row_b: jax.Array, cands: dict, cand_row_m: jax.Array, scale, spec: MnrlSpec) -> dict:
    """Masked logits `{direction: [b, M_direction]}` of anchor rows against one candidate block.

    rows / cands: blocks (module doc); `row_b` / `cand_row_m` their global row indices, which
    decide what is "own row" (the target, the self-similarity, the row's own documents).
    Dropped candidates are -inf: the q2q self-similarity, the d2d documents of the row itself,
    and (with text ids) any candidate whose text is the row's query or positive text, except
    the row's own pair.
    """
    q_bxD, p_bxD = rows["q"], rows["p"]
    m = cands["q"].shape[0]
    k = cands["n"].shape[1] if "n" in cands else 0
    docs_MxD = cands["p"] if not k else jnp.concatenate([cands["p"], cands["n"].reshape(m * k, -1)])
    doc_row_M = jnp.concatenate([cand_row_m, jnp.repeat(cand_row_m, k)])
    is_neg_M = jnp.arange(m * (1 + k)) >= m
    dup = _duplicate_fn(rows, cands)
    own_doc_bxM = doc_row_M[None, :] == row_b[:, None]
    own_query_bxm = cand_row_m[None, :] == row_b[:, None]
    out = {}
    for direction in spec.directions:
        if direction == "query_to_doc":
            sim = q_bxD @ docs_MxD.T
            target = own_doc_bxM & ~is_neg_M[None, :]
            logits = scale * sim + _hardness(spec, sim, own_doc_bxM, is_neg_M, target)
            drop = dup("docs") & ~target
        elif direction == "query_to_query":
            sim, drop = q_bxD @ cands["q"].T, own_query_bxm | dup("queries")
            logits = scale * sim
        elif direction == "doc_to_query":
            sim, drop = p_bxD @ cands["q"].T, dup("queries") & ~own_query_bxm
            logits = scale * sim
        else:  # doc_to_doc
            sim, drop = p_bxD @ docs_MxD.T, own_doc_bxM | dup("docs")
            logits = scale * sim
        out[direction] = jnp.where(drop, -jnp.inf, logits)
    return out


def partition_lse(logits: dict, spec: MnrlSpec) -> jax.Array:
    """`[P, b]` log-partition per softmax group (P = 1 joint, else one per direction)."""
    return jnp.stack([
        jax.nn.logsumexp(jnp.concatenate([logits[d] for d in group], axis=1), axis=1)
        for group in spec.partitions
    ])


def blocked_lse(rows: dict, row_b, cands: dict, cand_row_m, scale, spec: MnrlSpec,
                block_size: int | None) -> jax.Array:
    """`partition_lse` of the rows against `cands`, the rows scored `block_size` at a time.

    Each block runs under `jax.checkpoint` inside a scan, so only a `[block, M]` slice of the
    logits is live in the forward and the backward pass (used with GradCache's chunks).
    """
    n = rows["q"].shape[0]
    if block_size is None or block_size >= n:
        return partition_lse(block_logits(rows, row_b, cands, cand_row_m, scale, spec), spec)
    chk.check_divisible("infonce_loss", "local batch", n, block_size, "block_size")
    tiles = jax.tree.map(lambda x: x.reshape(n // block_size, block_size, *x.shape[1:]),
                         {k: v for k, v in rows.items() if k != "n"} | {"row": row_b})

    @jax.checkpoint
    def step(_, tile):
        rows_t = {k: v for k, v in tile.items() if k != "row"}
        return None, partition_lse(block_logits(rows_t, tile["row"], cands, cand_row_m, scale, spec), spec)

    _, lse_TxPxb = jax.lax.scan(step, None, tiles)
    return jnp.moveaxis(lse_TxPxb, 1, 0).reshape(lse_TxPxb.shape[1], n)


def _hardness(spec: MnrlSpec, sim_bxM, own_doc_bxM, is_neg_M, target_bxM):
    """alpha * stop_grad(sim) on the penalised negatives (0 elsewhere), sentence-transformers' masks."""
    if not spec.penalised:
        return 0.0
    chosen = {"in_batch_negatives": ~own_doc_bxM,
              "hard_negatives": own_doc_bxM & is_neg_M[None, :],
              "all_negatives": ~target_bxM}[spec.hardness_mode]
    return spec.hardness_strength * jnp.where(chosen, jax.lax.stop_gradient(sim_bxM), 0.0)


def _duplicate_fn(rows: dict, cands: dict):
    """dup(kind) -> [b, M] True where a candidate's text is the row's query or positive text."""
    if "ids" not in rows:
        return lambda kind: jnp.zeros((), bool)
    q_ids, p_ids = rows["ids"][:, 0], rows["ids"][:, 1]
    cand_ids = {"queries": cands["ids"][:, 0],
                "docs": jnp.concatenate([cands["ids"][:, 1], cands["ids"][:, 2:].reshape(-1)])}

    def dup(kind):
        ids_M = cand_ids[kind]
        return (ids_M[None, :] == q_ids[:, None]) | (ids_M[None, :] == p_ids[:, None])

    return dup
