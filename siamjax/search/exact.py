"""Exact top-k semantic search over a corpus sharded across devices.

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

from siamjax.similarity import l2_normalize

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
    return l2_normalize(x_NxD) if score == "cosine" else x_NxD


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


def _padded_chunks(x_NxD, rows: int, sharding: NamedSharding) -> list[jax.Array]:
    """`x` cut into chunks of `rows` rows (the last zero-padded), each placed with `sharding`."""
    chunks = []
    for start in range(0, x_NxD.shape[0], rows):
        chunk = np.asarray(x_NxD[start:start + rows])
        chunks.append(jax.device_put(np.pad(chunk, ((0, rows - len(chunk)), (0, 0))), sharding))
    return chunks


def _scan_corpus(step, q_chunks, corpus, chunk_rows: int, k: int, mesh, show_progress: bool):
    """Streams the corpus chunk by chunk through `step`: the running (scores, indices) per query chunk."""
    replicated = NamedSharding(mesh, P())
    q_rows = q_chunks[0].shape[0]
    running = [(jnp.full((q_rows, k), -jnp.inf, jnp.float32, device=replicated),
                jnp.full((q_rows, k), -1, jnp.int32, device=replicated)) for _ in q_chunks]
    n_total = jnp.int32(corpus.shape[0])
    starts = range(0, corpus.shape[0], chunk_rows)
    for start in tqdm(starts, desc="search", unit="chunk", disable=not show_progress):
        (c,) = _padded_chunks(corpus[start:start + chunk_rows], chunk_rows, NamedSharding(mesh, P(_AXIS)))
        previous = running[:]
        for qi, q in enumerate(q_chunks):
            running[qi] = step(*running[qi], q, c, jnp.int32(start), n_total)
        # At most two corpus chunks in flight: async dispatch must not stage the whole corpus.
        jax.block_until_ready(previous)
    return running


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
    q_chunks = _padded_chunks(queries, min(max(query_chunk_size, 1), n_queries), NamedSharding(mesh, P()))
    step = _chunk_step(mesh, score, min(k, chunk_rows // n_dev), k)
    running = _scan_corpus(step, q_chunks, corpus, chunk_rows, k, mesh, show_progress)
    scores = np.concatenate([np.asarray(v) for v, _ in running])[:n_queries]
    indices = np.concatenate([np.asarray(i) for _, i in running])[:n_queries].astype(np.int64)
    if score == "hamming":
        n_bits = 8 * corpus.shape[1]
        scores = ((n_bits - scores) / 2).astype(np.float32)
    return scores, indices
