"""Loaded checkpoints against PyTorch sentence-transformers, computed in the same test run."""
import csv

import numpy as np
import pytest
import scipy.stats

import siamjax
from encoder_fixtures import build_tiny_roberta, varied_sentences


def _cosines(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.fixture(scope="module")
def minilm(minilm_dir):
    return siamjax.SentenceEncoder.from_pretrained(minilm_dir)


@pytest.fixture(scope="module")
def st_minilm(minilm_dir):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(minilm_dir), device="cpu")


@pytest.fixture(scope="module")
def sentences(stsb_dir):
    return varied_sentences(stsb_dir)


def test_minilm_matches_sentence_transformers(minilm, st_minilm, sentences):
    assert len(sentences) >= 200
    ours = minilm.encode(sentences, batch_size=32)
    theirs = st_minilm.encode(sentences, batch_size=32, convert_to_numpy=True)
    assert ours.shape == theirs.shape == (len(sentences), 384)
    assert ours.dtype == np.float32
    cos = _cosines(ours, theirs)
    assert cos.min() >= 0.9999, f"worst sentence {sentences[int(cos.argmin())]!r}: cos {cos.min()}"
    # long inputs really were truncated at max_seq_length, identically in both libraries
    assert minilm.max_seq_length == st_minilm.max_seq_length == 256
    assert len(minilm.token_ids([sentences[-3]])[0]) == 256


def test_encode_is_order_and_batch_invariant(minilm, sentences):
    subset = sentences[:40] + sentences[-5:]
    full = minilm.encode(subset, batch_size=64)
    small = minilm.encode(subset[::-1], batch_size=7)[::-1]
    np.testing.assert_allclose(full, small, atol=2e-5)
    one = minilm.encode(subset[3])
    np.testing.assert_allclose(one, full[3], atol=2e-5)


def test_tiny_roberta_matches_pytorch(tmp_path, sentences):
    from sentence_transformers import SentenceTransformer, models

    folder = build_tiny_roberta(tmp_path / "roberta", sentences[:150])
    texts = [s for s in sentences[:120] if s] + ["", "unseen wörds ☃"]
    ours = siamjax.SentenceEncoder.from_pretrained(folder, max_seq_length=64)
    assert ours.spec.transformer.model_type == "roberta" and ours.spec.transformer.position_offset == 2
    st = SentenceTransformer(modules=[models.Transformer(str(folder), max_seq_length=64),
                                      models.Pooling(32, "mean")], device="cpu")
    cos = _cosines(ours.encode(texts), st.encode(texts))
    assert cos.min() >= 0.9999


def test_round_trip_to_pytorch_and_back(minilm, st_minilm, sentences, tmp_path):
    from sentence_transformers import SentenceTransformer

    out = minilm.save(tmp_path / "saved")
    reloaded_st = SentenceTransformer(str(out), device="cpu")
    texts = sentences[:60] + sentences[-4:]
    cos = _cosines(reloaded_st.encode(texts), minilm.encode(texts))
    assert cos.min() >= 0.9999
    again = siamjax.SentenceEncoder.from_pretrained(out)
    flat_a = dict(_flat(minilm.params))
    flat_b = dict(_flat(again.params))
    assert flat_a.keys() == flat_b.keys()
    for key, value in flat_a.items():
        assert np.array_equal(np.asarray(value), np.asarray(flat_b[key])), key
    assert again.spec == minilm.spec and again.max_seq_length == minilm.max_seq_length


def test_dense_cls_model_round_trips_through_pytorch(tmp_path, minilm):
    """A model with Dense + CLS pooling + Normalize: saved by us, read by sentence-transformers."""
    from sentence_transformers import SentenceTransformer

    cfg = siamjax.BertConfig(vocab_size=minilm.tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                             num_attention_heads=4, intermediate_size=64, max_position_embeddings=64)
    model = siamjax.SentenceEncoder.from_config(cfg, minilm.tokenizer, pooling=("cls", "max"),
                                                normalize=True, dense_dim=16, seed=3)
    out = model.save(tmp_path / "dense")
    texts = ["a short one", "", "Another sentence with more words in it."]
    st = SentenceTransformer(str(out), device="cpu")
    cos = _cosines(model.encode(texts), st.encode(texts))
    assert model.encode(texts).shape == (3, 16)
    assert cos.min() >= 0.9999
    again = siamjax.SentenceEncoder.from_pretrained(out)
    np.testing.assert_array_equal(again.encode(texts), model.encode(texts))


def test_stsb_test_spearman_matches_published(minilm, stsb_dir):
    with open(stsb_dir / "sts-test.csv", encoding="utf-8") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    a = minilm.encode([r[5] for r in rows], batch_size=128)
    b = minilm.encode([r[6] for r in rows], batch_size=128)
    spearman = 100 * scipy.stats.spearmanr(_cosines(a, b), [float(r[4]) for r in rows]).statistic
    assert abs(spearman - 82.03) <= 0.05, spearman


def _flat(tree, prefix=()):
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield from _flat(v, prefix + (k,))
    else:
        yield prefix, tree
