"""Sharded, chunked top-k search against a brute-force numpy search on 1 and 8 fake devices."""
import jax
import numpy as np
import pytest

from siamjax import search


def brute_force(queries, corpus, k, score):
    """Full Q x N score matrix in float64, stable argsort (ties -> lower index)."""
    q = np.asarray(queries, np.float64)
    c = np.asarray(corpus, np.float64)
    if score == "cosine":
        q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
        c = c / np.maximum(np.linalg.norm(c, axis=1, keepdims=True), 1e-12)
    s = q @ c.T
    idx = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(s, idx, axis=1), idx


def hamming_brute_force(q_packed, c_packed, k):
    """Popcount of XOR, stable ascending."""
    d = np.unpackbits(q_packed[:, None, :] ^ c_packed[None, :, :], axis=-1).sum(-1)
    idx = np.argsort(d, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(d, idx, axis=1), idx


@pytest.fixture(params=[1, 8], ids=["1dev", "8dev"])
def mesh(request):
    return search.search_mesh(jax.devices()[: request.param])


def test_eight_fake_devices_present():
    assert len(jax.devices()) == 8


@pytest.mark.parametrize("n_corpus,chunk,k", [(37, 16, 5), (203, 64, 10), (5, 1024, 10), (101, 8, 3)])
def test_dot_exact_with_ties_matches_brute_force(mesh, n_corpus, chunk, k):
    # small integers: every dot product is exact in float32, and many scores tie
    rng = np.random.default_rng(n_corpus)
    corpus = rng.integers(-2, 3, size=(n_corpus, 6)).astype(np.float32)
    queries = rng.integers(-2, 3, size=(13, 6)).astype(np.float32)
    scores, idx = search.semantic_search(
        queries, corpus, k, score="dot", corpus_chunk_size=chunk, query_chunk_size=5, mesh=mesh
    )
    ref_s, ref_i = brute_force(queries, corpus, min(k, n_corpus), "dot")
    np.testing.assert_array_equal(idx, ref_i)
    np.testing.assert_array_equal(scores, ref_s.astype(np.float32))
    assert idx.dtype == np.int64 and scores.dtype == np.float32


def test_cosine_matches_brute_force(mesh):
    rng = np.random.default_rng(0)
    corpus = rng.normal(size=(301, 16)).astype(np.float32)
    queries = rng.normal(size=(7, 16)).astype(np.float32)
    scores, idx = search.semantic_search(queries, corpus, 10, corpus_chunk_size=48, mesh=mesh)
    ref_s, ref_i = brute_force(queries, corpus, 10, "cosine")
    np.testing.assert_array_equal(idx, ref_i)
    np.testing.assert_allclose(scores, ref_s, atol=1e-6)


def test_hamming_matches_popcount(mesh):
    rng = np.random.default_rng(1)
    corpus = np.packbits(rng.normal(size=(77, 20)) > 0, axis=-1)  # 20 bits -> 3 bytes, 4 pad bits
    queries = np.packbits(rng.normal(size=(6, 20)) > 0, axis=-1)
    dist, idx = search.semantic_search(queries, corpus, 9, score="hamming", corpus_chunk_size=24, mesh=mesh)
    ref_d, ref_i = hamming_brute_force(queries, corpus, 9)
    np.testing.assert_array_equal(idx, ref_i)
    np.testing.assert_array_equal(dist, ref_d)
    # signed 'binary' codes (packbits - 128) give the same answer
    d2, i2 = search.semantic_search(
        (queries.astype(np.int16) - 128).astype(np.int8), (corpus.astype(np.int16) - 128).astype(np.int8),
        9, score="hamming", corpus_chunk_size=24, mesh=mesh)
    np.testing.assert_array_equal(i2, ref_i)
    np.testing.assert_array_equal(d2, ref_d)


def test_memmap_corpus_and_default_mesh(tmp_path):
    rng = np.random.default_rng(2)
    corpus = rng.integers(-3, 4, size=(90, 4)).astype(np.float32)
    path = tmp_path / "c.npy"
    np.save(path, corpus)
    mm = np.load(path, mmap_mode="r")
    q = corpus[:4]
    s, i = search.semantic_search(q, mm, 4, score="dot", corpus_chunk_size=16)
    ref_s, ref_i = brute_force(q, corpus, 4, "dot")
    np.testing.assert_array_equal(i, ref_i)


@pytest.mark.parametrize(
    "queries,corpus,kwargs,match",
    [
        (np.ones((2, 3)), np.ones((4, 5)), {}, "dimension 3 but corpus has 5"),
        (np.ones(3), np.ones((4, 3)), {}, "2-D"),
        (np.ones((2, 3)), np.ones((0, 3)), {}, "empty"),
        (np.ones((2, 3)), np.ones((4, 3)), {"top_k": 0}, "top_k"),
        (np.ones((2, 3)), np.ones((4, 3)), {"score": "l2"}, "score must be"),
        (np.ones((2, 3)), np.ones((4, 3)), {"score": "hamming"}, "packed bits"),
    ],
)
def test_bad_inputs_raise_clear_errors(queries, corpus, kwargs, match):
    with pytest.raises(ValueError, match=match):
        search.semantic_search(queries, corpus, **kwargs)


def test_no_queries_returns_empty():
    s, i = search.semantic_search(np.zeros((0, 3)), np.ones((4, 3)), 2)
    assert s.shape == (0, 2) and i.shape == (0, 2)


def _reference_mining(emb, top_k, max_pairs):
    """All pairs i<j from a full similarity matrix; a pair counts if either end has the other in its top_k."""
    s, idx = brute_force(emb, emb, top_k + 1, "cosine")
    pairs = {}
    for i in range(len(emb)):
        neigh = [(j, v) for j, v in zip(idx[i], s[i]) if j != i][:top_k]
        for j, v in neigh:
            pairs.setdefault((min(i, j), max(i, j)), v)
    ranked = sorted(pairs.items(), key=lambda kv: (-kv[1], kv[0]))[:max_pairs]
    return [p for p, _ in ranked], [v for _, v in ranked]


def test_paraphrase_mining_matches_reference(mesh):
    rng = np.random.default_rng(3)
    emb = rng.normal(size=(60, 8)).astype(np.float32)
    got = search.paraphrase_mining_embeddings(emb, top_k=3, max_pairs=40, corpus_chunk_size=16, mesh=mesh)
    ref_pairs, ref_scores = _reference_mining(emb, 3, 40)
    assert [(i, j) for _, i, j in got] == ref_pairs
    np.testing.assert_allclose([s for s, _, _ in got], ref_scores, atol=1e-6)
    assert all(i < j for _, i, j in got)


def test_paraphrase_mining_from_sentences():
    table = {"a": [1.0, 0.0], "b": [0.9, 0.1], "c": [0.0, 1.0]}
    encode = lambda texts: np.array([table[t] for t in texts], np.float32)  # noqa: E731
    got = search.paraphrase_mining(encode, ["a", "b", "c"], top_k=1, max_pairs=1)
    assert [(i, j) for _, i, j in got] == [(0, 1)]


def test_community_detection_matches_sentence_transformers(mesh):
    torch = pytest.importorskip("torch")
    from sentence_transformers.util import community_detection as st_community_detection

    rng = np.random.default_rng(4)
    centres = rng.normal(size=(4, 16))
    sizes = [70, 12, 9, 3]  # first one forces k to grow past the initial 50
    emb = np.concatenate([c + 0.05 * rng.normal(size=(s, 16)) for c, s in zip(centres, sizes)])
    emb = np.concatenate([emb, rng.normal(size=(40, 16))]).astype(np.float32)
    got = search.community_detection(emb, threshold=0.8, min_community_size=5, corpus_chunk_size=32, mesh=mesh)
    ref = st_community_detection(torch.from_numpy(emb), threshold=0.8, min_community_size=5)
    assert [len(c) for c in got] == [70, 12, 9]
    assert [c[0] for c in got] == [c[0] for c in ref]
    assert [sorted(c) for c in got] == [sorted(c) for c in ref]


def test_community_detection_small_inputs():
    assert search.community_detection(np.zeros((0, 4))) == []
    assert search.community_detection(np.ones((3, 4)), min_community_size=5) == []
