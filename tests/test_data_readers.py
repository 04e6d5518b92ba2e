"""Local file readers (jsonl/csv/tsv + column mapping), STS-b, and NLI -> triplets."""
import gzip
import json

import numpy as np
import pytest

from siamjax.data import nli_to_triplets, read_pairs, read_stsb_split
from siamjax.data.files import suffix_format


def test_jsonl_triplets_follow_the_declared_mapping(tmp_path):
    path = tmp_path / "t.jsonl"
    rows = [{"q": f"query {i}", "pos": f"doc {i}", "neg": f"other {i}", "extra": 1}
            for i in range(3)]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    data = read_pairs(path, columns={"anchor": "q", "positive": "pos", "negative": "neg"})
    assert data.sides == ("anchor", "positive", "negative") and data.num_sides == 3
    assert data[1].texts == ("query 1", "doc 1", "other 1") and data[1].label is None
    assert data.labels is None and data.label_kind is None and data.name == "t.jsonl"


def test_csv_header_names_in_any_order_with_quotes(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text('score,b,a\n4,"second, with comma","first ""quoted"""\n0,y,x\n')
    data = read_pairs(path, columns={"sentence1": "a", "sentence2": "b", "score": "score"},
                      score_range=(0, 5), normalize_scores=True)
    assert data[0].texts == ('first "quoted"', "second, with comma")
    np.testing.assert_allclose(data.labels, [0.8, 0.0])
    assert data.labels.dtype == np.float32 and data.label_kind == "score"


def test_tsv_by_index_without_header_keeps_literal_quotes(tmp_path):
    path = tmp_path / "p.tsv"
    path.write_text('1\t"He said\tok"\n0\tx\ty\n')
    data = read_pairs(path, columns={"s1": 1, "s2": 2, "label": 0})
    assert data.texts == (['"He said', "x"], ['ok"', "y"])
    assert data.labels.tolist() == [1, 0] and data.labels.dtype == np.int32


def test_gzip_and_format_inference(tmp_path):
    path = tmp_path / "p.jsonl.gz"
    with gzip.open(path, "wt") as f:
        f.write(json.dumps({"a": "x", "b": "y", "label": "contradiction"}) + "\n")
    data = read_pairs(path, columns={"premise": "a", "hypothesis": "b", "nli_label": "label"})
    assert suffix_format(path) == "jsonl" and data.labels.tolist() == [2]
    assert data.label_kind == "nli"
    (tmp_path / "data.dat").write_text("no delimiter here\n")
    with pytest.raises(ValueError, match="cannot tell the format"):
        read_pairs(tmp_path / "data.dat", columns={"s1": "a"})


def test_mapping_errors_are_explicit(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"a": "x", "b": "y", "s": 1}\n')
    with pytest.raises(ValueError, match="at most one of"):
        read_pairs(path, columns={"s1": "a", "score": "s", "label": "s"})
    with pytest.raises(ValueError, match="no text column"):
        read_pairs(path, columns={"score": "s"})
    with pytest.raises(ValueError, match="normalize_scores=True needs score_range"):
        read_pairs(path, columns={"s1": "a", "s2": "b", "score": "s"}, normalize_scores=True)
    with pytest.raises(ValueError, match="columns must be key names"):
        read_pairs(path, columns={"s1": 0, "s2": 1})
    with pytest.raises(ValueError, match="missing.jsonl: no such file"):
        read_pairs(tmp_path / "missing.jsonl", columns={"s1": "a"})


def test_real_stsb_splits(stsb_dir):
    train = read_stsb_split(stsb_dir / "sts-train.csv")
    assert len(train) == 5749 and train.num_bad_rows == 0
    assert train[0].texts == ("A plane is taking off.", "An air plane is taking off.")
    assert train.labels.min() == 0.0 and train.labels.max() == 1.0  # normalised score / 5
    raw = read_stsb_split(stsb_dir / "sts-dev.csv", normalize_scores=False)
    assert len(raw) == 1500 and raw.labels.max() == 5.0
    assert len(read_stsb_split(stsb_dir / "sts-test.csv")) == 1379
    # Sentences containing quote characters survive intact (QUOTE_NONE).
    assert any('"' in s for s in train.texts[0] + train.texts[1])


def _nli(tmp_path, rows):
    path = tmp_path / "nli.jsonl"
    path.write_text("\n".join(json.dumps({"p": p, "h": h, "l": l}) for p, h, l in rows))
    return read_pairs(path, columns={"premise": "p", "hypothesis": "h", "nli_label": "l"})


NLI_ROWS = [
    ("A man plays.", "A person plays.", "entailment"),
    ("A man plays.", "Someone is playing.", "entailment"),
    ("A man plays.", "A man sleeps.", "contradiction"),
    ("A man plays.", "A man plays well.", "neutral"),
    ("Two dogs run.", "Animals move.", "entailment"),
    ("Two dogs run.", "Dogs sit still.", "contradiction"),
    ("Two dogs run.", "Cats sleep.", "contradiction"),
    ("A kid eats.", "A child eats.", "entailment"),  # no contradiction: no triplet
    ("A car honks.", "A car is silent.", "contradiction"),  # no entailment
]


def test_nli_to_triplets_pairs_entailment_with_contradiction(tmp_path):
    triplets = nli_to_triplets(_nli(tmp_path, NLI_ROWS), seed=0)
    assert triplets.sides == ("anchor", "positive", "negative") and triplets.labels is None
    got = list(zip(*triplets.texts))
    assert got[:2] == [("A man plays.", "A person plays.", "A man sleeps."),
                       ("A man plays.", "Someone is playing.", "A man sleeps.")]
    assert got[2][:2] == ("Two dogs run.", "Animals move.")
    assert got[2][2] in ("Dogs sit still.", "Cats sleep.")
    assert len(got) == 3
    assert triplets.info == {"nli_rows": 9, "triplets": 3, "neutral_rows_unused": 1,
                             "entailments_without_contradiction": 1,
                             "contradictions_without_entailment": 1}


def test_nli_negative_choice_is_reproducible_and_seeded(tmp_path):
    rows = [("P", f"e{i}", "entailment") for i in range(20)]
    rows += [("P", f"c{i}", "contradiction") for i in range(5)]
    data = _nli(tmp_path, rows)
    first = nli_to_triplets(data, seed=3).texts[2]
    assert first == nli_to_triplets(data, seed=3).texts[2]
    assert first != nli_to_triplets(data, seed=4).texts[2]
    assert set(first) <= {f"c{i}" for i in range(5)}


def test_nli_symmetric_uses_hypotheses_as_anchors(tmp_path):
    rows = [("P", "E", "entailment"), ("P", "C", "contradiction"),
            ("E", "X", "contradiction")]
    triplets = nli_to_triplets(_nli(tmp_path, rows), symmetric=True)
    assert set(zip(*triplets.texts)) == {("P", "E", "C"), ("E", "P", "X")}


def test_nli_to_triplets_rejects_non_nli_data(tmp_path, stsb_dir):
    with pytest.raises(ValueError, match="needs 2 text sides and NLI labels"):
        nli_to_triplets(read_stsb_split(stsb_dir / "sts-dev.csv"))
    with pytest.raises(ValueError, match="no premise has both"):
        nli_to_triplets(_nli(tmp_path, [("P", "E", "entailment")]))
