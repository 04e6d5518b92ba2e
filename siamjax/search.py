"""Exact top-k semantic search over a corpus sharded across devices, plus paraphrase mining and
near-duplicate grouping built on it.

The corpus is streamed in chunks: each chunk is split evenly over a 1-D device mesh, every device
scores the queries against its slice and keeps a local `jax.lax.top_k`, the local winners are
all-gathered and merged into a running global top-k. Memory per device is
O(query_chunk * (chunk / n_devices + n_devices * k)), so a 10M x 384 float32 corpus never has to
fit on one device (nor on all of them at once); no query x corpus (let alone N x N) matrix exists.

Ties are broken towards the lower corpus index, exactly as a stable numpy argsort would, because
`jax.lax.top_k` keeps the lower-index element first and every merge concatenates candidates in
ascending corpus order.
"""
from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from tqdm.auto import tqdm

SCORES = ("cosine", "dot", "hamming")
_AXIS = "corpus"
_MAX_ROWS = 2**31 - 1  # global corpus indices are int32 on device


def search_mesh(devices: Sequence[jax.Device] | None = None) -> jax.sharding.Mesh:
    """A 1-D mesh named 'corpus' over `devices` (default: all devices) to shard the corpus on."""
    devices = list(jax.devices() if devices is None else devices)
    return jax.make_mesh((len(devices),), (_AXIS,), devices=devices)


def _unpack_sign_bits(packed_NxB: jax.Array) -> jax.Array:
    """Packed bits (np.packbits order) -> +-1 float32 [N, 8B]; int8 'binary' input is u - 128."""
    if packed_NxB.dtype == jnp.int8:
        packed_NxB = jax.lax.bitcast_convert_type(packed_NxB, jnp.uint8) ^ jnp.uint8(0x80)
    shifts_8 = jnp.arange(7, -1, -1, dtype=jnp.uint8)
    bits_NxBx8 = (packed_NxB[:, :, None] >> shifts_8) & jnp.uint8(1)
    bits_NxD = bits_NxBx8.reshape(packed_NxB.shape[0], -1)
    return bits_NxD.astype(jnp.float32) * 2.0 - 1.0


def _prepare(x_NxD: jax.Array, score: str) -> jax.Array:
    """Cast to float32 and apply the score's normalisation (unit rows for cosine, +-1 for hamming)."""
    if score == "hamming":
        return _unpack_sign_bits(x_NxD)
    x_NxD = x_NxD.astype(jnp.float32)
    if score == "cosine":
        norm_Nx1 = jnp.linalg.norm(x_NxD, axis=-1, keepdims=True)
        x_NxD = x_NxD / jnp.maximum(norm_Nx1, 1e-12)
    return x_NxD


@functools.lru_cache(maxsize=64)
def _chunk_step(mesh: jax.sharding.Mesh, score: str, k_local: int, k_out: int) -> Callable:
    """Compiled step: merge one corpus chunk's top-k into the running top-k of one query chunk."""

    def local_top_k(q_QxD, c_CxD, chunk_start, n_total):
        rows = c_CxD.shape[0]
        s_QxC = jnp.einsum(
            "qd,cd->qc", q_QxD, _prepare(c_CxD, score),
            precision=jax.lax.Precision.HIGHEST, preferred_element_type=jnp.float32,
        )
        gidx_C = chunk_start + jax.lax.axis_index(_AXIS) * rows + jnp.arange(rows, dtype=jnp.int32)
        s_QxC = jnp.where(gidx_C[None, :] < n_total, s_QxC, -jnp.inf)  # padded rows never win
        v_QxK, pos_QxK = jax.lax.top_k(s_QxC, k_local)
        i_QxK = gidx_C[pos_QxK]
        gather = functools.partial(jax.lax.all_gather, axis_name=_AXIS, axis=1, tiled=True, to="invarying")
        return gather(v_QxK), gather(i_QxK)  # device order == ascending corpus index

    sharded = jax.shard_map(
        local_top_k, mesh=mesh, in_specs=(P(), P(_AXIS), P(), P()), out_specs=(P(), P())
    )

    def step(run_v_QxK, run_i_QxK, q_QxD, c_CxD, chunk_start, n_total):
        v_QxM, i_QxM = sharded(_prepare(q_QxD, score), c_CxD, chunk_start, n_total)
        # Running entries come first: they all have lower corpus indices than this chunk's.
        v_QxM = jnp.concatenate([run_v_QxK, v_QxM], axis=1)
        i_QxM = jnp.concatenate([run_i_QxK, i_QxM], axis=1)
        top_v_QxK, pos_QxK = jax.lax.top_k(v_QxM, k_out)
        return top_v_QxK, jnp.take_along_axis(i_QxM, pos_QxK, axis=1)

    replicated = NamedSharding(mesh, P())
    return jax.jit(step, out_shardings=(replicated, replicated))


def _check_inputs(queries, corpus, top_k: int, score: str) -> None:
    """Fail early with a readable message instead of an XLA shape error."""
    if score not in SCORES:
        raise ValueError(f"score must be one of {SCORES}, got {score!r}")
    if queries.ndim != 2 or corpus.ndim != 2:
        raise ValueError(
            f"queries and corpus must be 2-D [N, D]; got shapes {queries.shape} and {corpus.shape}"
        )
    if queries.shape[1] != corpus.shape[1]:
        raise ValueError(
            f"queries have dimension {queries.shape[1]} but corpus has {corpus.shape[1]}"
        )
    if corpus.shape[0] == 0:
        raise ValueError("corpus is empty: nothing to search")
    if corpus.shape[0] > _MAX_ROWS:
        raise ValueError(f"corpus has {corpus.shape[0]} rows; at most {_MAX_ROWS} are supported")
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    if score == "hamming":
        for name, arr in (("queries", queries), ("corpus", corpus)):
            if arr.dtype not in (np.uint8, np.int8):
                raise ValueError(
                    f"hamming search needs packed bits (uint8 'ubinary' or int8 'binary'); "
                    f"{name} has dtype {arr.dtype}"
                )


def semantic_search(
    queries,
    corpus,
    top_k: int = 10,
    *,
    score: str = "cosine",
    corpus_chunk_size: int = 65536,
    query_chunk_size: int = 1024,
    mesh: jax.sharding.Mesh | None = None,
    show_progress: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k of every query over the corpus, sharded over devices and streamed in chunks.

    Why: a bi-encoder is only useful if its embeddings can be searched at corpus scale; this is
    the exact (brute-force) search, distributed so the corpus can exceed one device's memory.

    Args:
      queries: [Q, D] array (numpy, memmap or jax); packed uint8/int8 bits for score="hamming".
      corpus: [N, D] array of the same kind; read one chunk at a time (a np.memmap works).
      top_k: results per query (clipped to N).
      score: "cosine", "dot", or "hamming" (binary codes; the distance is returned).
      corpus_chunk_size: corpus rows per step over all devices (rounded up to the device count).
      query_chunk_size: queries scored together in one step.
      mesh: 1-D mesh with axis 'corpus'; default `search_mesh()` over all devices.
    Returns:
      (scores [Q, k] float32, indices [Q, k] int64), best first; ties go to the lower index.
      For "hamming" the scores are Hamming distances (ascending).
    """
    queries = queries if isinstance(queries, jax.Array) else np.asarray(queries)
    corpus = corpus if isinstance(corpus, (jax.Array, np.ndarray)) else np.asarray(corpus)
    _check_inputs(queries, corpus, top_k, score)
    mesh = search_mesh() if mesh is None else mesh
    if mesh.axis_names != (_AXIS,):
        raise ValueError(f"search mesh must be 1-D with axis {_AXIS!r}; got axes {mesh.axis_names}")
    n_dev, n_corpus, n_queries = mesh.devices.size, corpus.shape[0], queries.shape[0]
    k = min(top_k, n_corpus)
    if n_queries == 0:
        return np.zeros((0, k), np.float32), np.zeros((0, k), np.int64)

    round_up = lambda x, m: -(-x // m) * m  # noqa: E731
    chunk_rows = min(round_up(max(corpus_chunk_size, 1), n_dev), round_up(n_corpus, n_dev))
    k_local = min(k, chunk_rows // n_dev)
    q_rows = min(max(query_chunk_size, 1), n_queries)
    step = _chunk_step(mesh, score, k_local, k)
    corpus_sharding = NamedSharding(mesh, P(_AXIS))
    replicated = NamedSharding(mesh, P())

    q_chunks = []
    for start in range(0, n_queries, q_rows):
        q = np.asarray(queries[start:start + q_rows])
        q = np.pad(q, ((0, q_rows - len(q)), (0, 0)))
        q_chunks.append(jax.device_put(q, replicated))
    running = [
        (jnp.full((q_rows, k), -jnp.inf, jnp.float32, device=replicated),
         jnp.full((q_rows, k), -1, jnp.int32, device=replicated))
        for _ in q_chunks
    ]
    n_total = jnp.int32(n_corpus)
    starts = range(0, n_corpus, chunk_rows)
    for start in tqdm(starts, desc="search", unit="chunk", disable=not show_progress):
        c = np.asarray(corpus[start:start + chunk_rows])
        if len(c) < chunk_rows:
            c = np.pad(c, ((0, chunk_rows - len(c)), (0, 0)))
        c = jax.device_put(c, corpus_sharding)
        previous = running[:]
        for qi, q in enumerate(q_chunks):
            running[qi] = step(*running[qi], q, c, jnp.int32(start), n_total)
        # At most two corpus chunks in flight: async dispatch must not stage the whole corpus.
        jax.block_until_ready(previous)

    scores = np.concatenate([np.asarray(v) for v, _ in running])[:n_queries]
    indices = np.concatenate([np.asarray(i) for _, i in running])[:n_queries].astype(np.int64)
    if score == "hamming":
        n_bits = 8 * corpus.shape[1]
        scores = ((n_bits - scores) / 2).astype(np.float32)
    return scores, indices


def paraphrase_mining_embeddings(
    embeddings,
    *,
    top_k: int = 100,
    max_pairs: int = 500_000,
    score: str = "cosine",
    corpus_chunk_size: int = 65536,
    query_chunk_size: int = 1024,
    mesh: jax.sharding.Mesh | None = None,
    show_progress: bool = False,
) -> list[tuple[float, int, int]]:
    """The `max_pairs` most similar pairs (score, i, j), i < j, best first.

    Why: finding paraphrases / duplicates in a collection is an all-pairs problem; here every
    item only keeps its `top_k` nearest neighbours from the sharded search, so memory is
    O(N * top_k) and no N x N matrix is ever built.
    """
    emb = np.asarray(embeddings)
    n = emb.shape[0]
    if n < 2:
        return []
    scores_NxK, idx_NxK = semantic_search(
        emb, emb, top_k + 1, score=score, corpus_chunk_size=corpus_chunk_size,
        query_chunk_size=query_chunk_size, mesh=mesh, show_progress=show_progress,
    )
    i_NxK = np.broadcast_to(np.arange(n)[:, None], idx_NxK.shape)
    not_self = idx_NxK != i_NxK
    # keep the first top_k non-self neighbours of each row (self may be absent among exact ties)
    keep = not_self & (np.cumsum(not_self, axis=1) <= top_k)
    s, i, j = scores_NxK[keep], i_NxK[keep], idx_NxK[keep]
    lo, hi = np.minimum(i, j), np.maximum(i, j)
    order = np.lexsort((hi, lo, -s))  # best score first, then by pair for determinism
    keys = lo[order] * n + hi[order]
    _, first = np.unique(keys, return_index=True)
    first = np.sort(first)[:max_pairs]  # positions in `order`: unique pairs, best first
    picked = order[first]
    return [(float(s[p]), int(lo[p]), int(hi[p])) for p in picked]


def paraphrase_mining(encode, sentences: Sequence[str], **kwargs) -> list[tuple[float, int, int]]:
    """Embed `sentences` with `encode` (a texts -> [N, D] callable, or a model with `.encode`) and
    mine paraphrase pairs (score, i, j); kwargs as in `paraphrase_mining_embeddings`."""
    encode = getattr(encode, "encode", encode)
    return paraphrase_mining_embeddings(np.asarray(encode(list(sentences))), **kwargs)


def community_detection(
    embeddings,
    threshold: float = 0.75,
    min_community_size: int = 10,
    *,
    corpus_chunk_size: int = 65536,
    query_chunk_size: int = 1024,
    mesh: jax.sharding.Mesh | None = None,
    show_progress: bool = False,
) -> list[list[int]]:
    """Group near-duplicates: communities of items whose cosine similarity to a centre is >= threshold.

    Why: deduplicating or clustering a collection needs every item's full neighbourhood above a
    threshold, not a fixed top-k. Each item's neighbourhood is found with the sharded top-k
    search, doubling k only for the items whose k-th neighbour still passes the threshold, so no
    N x N matrix is built. Same algorithm and output order as sentence-transformers'
    `community_detection`: the centre comes first, then its members by decreasing similarity;
    larger communities first; an item belongs to at most one community.
    """
    emb = np.asarray(embeddings, dtype=np.float32)
    n = emb.shape[0]
    if n == 0 or n < min_community_size:
        return []
    search = functools.partial(
        semantic_search, score="cosine", corpus_chunk_size=corpus_chunk_size,
        query_chunk_size=query_chunk_size, mesh=mesh, show_progress=show_progress,
    )
    k = min(max(2 * min_community_size, 50), n)
    scores_NxK, idx_NxK = search(emb, emb, k)
    candidates = np.nonzero(scores_NxK[:, min_community_size - 1] >= threshold)[0]
    members: dict[int, np.ndarray] = {}
    pending = candidates
    while len(pending):
        s, idx = search(emb[pending], emb, k) if k > scores_NxK.shape[1] else (
            scores_NxK[pending], idx_NxK[pending])
        full = (s[:, -1] < threshold) | (k >= n)
        for row in np.nonzero(full)[0]:
            members[int(pending[row])] = idx[row][s[row] >= threshold]
        pending = pending[~full]
        k = min(2 * k, n)

    extracted = sorted(((c, members[c]) for c in candidates), key=lambda x: len(x[1]), reverse=True)
    used = np.zeros(n, dtype=bool)
    communities = []
    for centre, community in extracted:
        if used[centre]:
            continue
        free = community[~used[community]]
        if len(free) >= min_community_size:
            group = [centre] + [int(m) for m in free if m != centre]
            communities.append(group)
            used[group] = True
    return sorted(communities, key=len, reverse=True)
