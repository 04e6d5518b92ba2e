"""Finding duplicates in one collection, built on the sharded exact search: paraphrase mining
(the most similar pairs) and community detection (groups of near-duplicates around a centre).

Neither builds an N x N matrix: every item only keeps its nearest neighbours from
`siamjax.search.exact.semantic_search`, which streams the collection in chunks over the devices.
"""
from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import numpy as np

from siamjax.search.exact import semantic_search


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
