"""Quantisation matches sentence-transformers bit for bit; quantised search matches numpy references."""
import numpy as np
import pytest

from siamjax import quantization as qz
from siamjax.search import quantized_search


@pytest.fixture
def emb():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 20)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("precision", ["float32", "int8", "uint8", "binary", "ubinary"])
def test_matches_sentence_transformers(emb, precision):
    from sentence_transformers.util.quantization import quantize_embeddings as st_quantize

    calib = np.random.default_rng(1).normal(size=(30, 20)).astype(np.float32) * 0.3
    ours = qz.quantize_embeddings(emb, precision, calibration=calib)
    ref = st_quantize(emb, precision, calibration_embeddings=calib)
    assert ours.dtype == ref.dtype and ours.shape == ref.shape
    np.testing.assert_array_equal(ours, ref)
    ranges = qz.calibration_ranges(calib)
    np.testing.assert_array_equal(qz.quantize_embeddings(emb, precision, ranges=ranges), ref)


def test_self_calibration_and_dequantisation_error(emb):
    q = qz.quantize_embeddings(emb, "int8")
    ranges = qz.calibration_ranges(emb)
    back = qz.dequantize_embeddings(q, "int8", ranges=ranges)
    step = (ranges[1] - ranges[0]) / 255
    assert np.all(np.abs(back - emb) <= step / 2 + 1e-6)
    bits = qz.dequantize_embeddings(qz.quantize_embeddings(emb, "binary"), "binary", dim=20)
    np.testing.assert_array_equal(bits, np.where(emb > 0, 1.0, -1.0))


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda e: qz.quantize_embeddings(e, "int4"), "precision must be"),
        (lambda e: qz.quantize_embeddings(e[0], "int8"), "2-D"),
        (lambda e: qz.quantize_embeddings(qz.quantize_embeddings(e, "int8"), "int8"), "must be float"),
        (lambda e: qz.quantize_embeddings(e, "uint8", ranges=np.zeros((2, 3))), r"shape \(2, 20\)"),
        (lambda e: qz.quantize_embeddings(e[:1], "int8"), "at least 2 rows"),
        (lambda e: qz.dequantize_embeddings(qz.quantize_embeddings(e, "int8"), "int8"), "calibration ranges"),
        (lambda e: quantized_search(e, qz.quantize_embeddings(e, "int8"), precision="int8"), "ranges"),
        (lambda e: quantized_search(e, e, precision="fp8"), "precision must be"),
    ],
)
def test_errors(emb, call, match):
    with pytest.raises(ValueError, match=match):
        call(emb)


def test_binary_search_without_rescore_is_hamming(emb):
    corpus = qz.quantize_embeddings(emb, "ubinary")
    queries = emb[:7] + 0.01
    dist, idx = quantized_search(queries, corpus, 5, precision="ubinary", rescore=False)
    qb = qz.quantize_embeddings(queries, "ubinary")
    d = np.unpackbits(qb[:, None] ^ corpus[None], axis=-1).sum(-1)
    ref = np.argsort(d, axis=1, kind="stable")[:, :5]
    np.testing.assert_array_equal(idx, ref)
    np.testing.assert_array_equal(dist, np.take_along_axis(d, ref, 1))


@pytest.mark.parametrize("precision", ["binary", "ubinary"])
def test_binary_rescoring(emb, precision):
    corpus = qz.quantize_embeddings(emb, precision)
    queries = emb[:6] * 0.9 + 0.1 * emb[6:12]
    # oversampling to the whole corpus + float re-scoring == exact float search
    s, i = quantized_search(queries, corpus, 5, precision=precision, rescore_multiplier=10,
                               rescore_corpus=emb)
    exact = queries @ emb.T
    ref = np.argsort(-exact, axis=1, kind="stable")[:, :5]
    np.testing.assert_array_equal(i, ref)
    np.testing.assert_allclose(s, np.take_along_axis(exact, ref, 1), atol=1e-6)
    # without a float corpus the candidates are re-scored against their +-1 bits
    s2, i2 = quantized_search(queries, corpus, 3, precision=precision, rescore_multiplier=2)
    _, cand = quantized_search(queries, corpus, 6, precision=precision, rescore=False)
    signs = np.where(emb > 0, 1.0, -1.0)
    cand_scores = np.einsum("qd,qmd->qm", queries, signs[cand])
    order = np.argsort(-cand_scores, axis=1, kind="stable")[:, :3]
    np.testing.assert_array_equal(i2, np.take_along_axis(cand, order, 1))
    np.testing.assert_allclose(s2, np.take_along_axis(cand_scores, order, 1), atol=1e-5)


@pytest.mark.parametrize("precision", ["int8", "uint8"])
def test_int8_search_scores_dequantised_corpus(emb, precision):
    ranges = qz.calibration_ranges(emb)
    corpus = qz.quantize_embeddings(emb, precision, ranges=ranges)
    queries = emb[:5] + 0.05
    s, i = quantized_search(queries, corpus, 4, precision=precision, ranges=ranges)
    deq = qz.dequantize_embeddings(corpus, precision, ranges=ranges)
    full = queries @ deq.T
    ref = np.argsort(-full, axis=1, kind="stable")[:, :4]
    np.testing.assert_array_equal(i, ref)
    np.testing.assert_allclose(s, np.take_along_axis(full, ref, 1), atol=1e-4)
    s3, i3 = quantized_search(queries, corpus, 4, precision=precision, ranges=ranges,
                                 rescore_corpus=emb, rescore_multiplier=20)
    exact = queries @ emb.T
    np.testing.assert_array_equal(i3, np.argsort(-exact, axis=1, kind="stable")[:, :4])


def test_float32_search_is_dot(emb):
    s, i = quantized_search(emb[:3], emb, 2, precision="float32")
    np.testing.assert_array_equal(i[:, 0], [0, 1, 2])
