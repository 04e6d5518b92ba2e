"""The one row reader: every file kind (STS-b, SICK, csv, tsv, jsonl, txt) and a clear
`FILE:LINE` error for each kind of bad file, as every verb (train, eval, encode, search) sees it."""
import pathlib

import numpy as np
import pytest

from siamjax.data import (DataError, detect_format, read_labelled_pairs, read_scored_pairs, read_texts,
                          read_triplets)


def write(path: pathlib.Path, text: str) -> pathlib.Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_read_stsb_real_file_with_quote_characters(stsb_dir):
    data = read_scored_pairs(stsb_dir / "sts-test.csv")
    assert detect_format(stsb_dir / "sts-test.csv") == "stsb"
    assert len(data) == 1379 and data.labels.min() >= 0 and data.labels.max() <= 5
    assert any('"' in s for s in data.texts[0] + data.texts[1])  # quotes kept verbatim


def test_read_sick_csv_tsv_jsonl_with_column_mapping(tmp_path):
    sick = write(tmp_path / "SICK.txt", "pair_ID\tsentence_A\tsentence_B\trelatedness_score\tentailment_judgment\n"
                 "1\tA man plays.\tA person plays.\t4.5\tENTAILMENT\n2\tA dog runs.\tA cat sleeps.\t1.2\tNEUTRAL\n")
    d = read_scored_pairs(sick)
    assert detect_format(sick) == "sick" and d.texts[1] == ["A person plays.", "A cat sleeps."]
    np.testing.assert_allclose(d.labels, [4.5, 1.2])
    csv_file = write(tmp_path / "p.csv", 'text_a,text_b,label\n"Hello, world",Hi,0.5\nA,B,1\n')
    d = read_scored_pairs(csv_file, columns={"sentence1": "text_a", "sentence2": "text_b", "score": "label"})
    assert d.texts[0] == ["Hello, world", "A"]
    tsv = write(tmp_path / "p.tsv", 'sentence1\tsentence2\tscore\nHe said "hi"\tok\t3\n')
    assert read_scored_pairs(tsv).texts[0] == ['He said "hi"']
    jl = write(tmp_path / "p.jsonl", '\ufeff{"sentence1": "a", "sentence2": "b", "score": 1}\n\n'
               '{"sentence1": "c", "sentence2": "d", "score": 0.25}\n')
    np.testing.assert_allclose(read_scored_pairs(jl).labels, [1.0, 0.25])  # a BOM is dropped


BAD_FILES = [
    ("sts.csv", "x\tx\tx\tx\t1.0\ta\tb\nx\tx\tx\tx\t2.0\ta\n", {},
     r"sts\.csv:2: no column 6 for sentence2: the row has 6 field\(s\)"),
    ("sts.csv", "x\tx\tx\tx\t1.0\ta\tb\nx\tx\tx\tx\tNaN\ta\tb\n", {}, r"sts\.csv:2: score 'NaN' is not a finite number"),
    ("sts.csv", "x\tx\tx\tx\t1.0\ta\tb\nx\tx\tx\tx\t7.5\ta\tb\n", {}, r"sts\.csv:2: score 7\.5 out of range \[0\.0, 5\.0\]"),
    ("sts.csv", "x\tx\tx\tx\t1.0\ta\tb\n", {"format": "stsb", "columns": {"score": "s"}}, "fixed columns"),
    ("p.csv", "sentence1,sentence2,score\na,b,high\n", {}, r"p\.csv:2: score 'high' is not a number"),
    ("p.csv", "sentence1,sentence2,score\na,b,1\na,b\n", {}, r"p\.csv:3: no column 'score' for score"),
    ("p.csv", "sentence1,sentence2,score\na,,1\n", {}, r"p\.csv:2: column 'sentence2' is empty"),
    ("p.csv", "s1,s2,score\na,b,1\n", {}, r"p\.csv:1: no column 'sentence1' for sentence1 \(columns: s1, s2, score\)"),
    ("p.csv", "sentence1,sentence2,score\n", {}, r"p\.csv: no data rows"),
    ("p.csv", "", {}, r"p\.csv: file is empty"),
    ("p.jsonl", '{"sentence1": "a", "sentence2": "b", "score": 1}\n{"sentence1": "a",\n', {},
     r"p\.jsonl:2: invalid JSON"),
    ("p.jsonl", '["a", "b", 1]\n', {}, r"p\.jsonl:1: expected a JSON object"),
    ("p.jsonl", '{"sentence1": "a", "sentence2": 3, "score": 1}\n', {}, r"p\.jsonl:1: column 'sentence2' must be text"),
    ("p.jsonl", '{"sentence1": "a", "sentence2": null, "score": 1}\n', {}, r"p\.jsonl:1: column 'sentence2' is missing or null"),
    ("p.jsonl", '{"sentence1": "a", "score": 1}\n', {}, r"p\.jsonl:1: no column 'sentence2'"),
    ("p.jsonl", '{"sentence1": "a", "sentence2": "b", "score": true}\n', {}, r"p\.jsonl:1: score True is not a number"),
    ("p.csv", "sentence1,sentence2,score\na,b,1\nc,d,7.5\n", {}, r"p\.csv:3: score 7\.5 out of range \[0\.0, 5\.0\]"),
    ("p.csv", "sentence1,sentence2,score\na,b,-2\n", {"score_range": (-1.0, 1.0)}, r"p\.csv:2: score -2\.0 out of range"),
    ("p.xlsx", "sentence1,sentence2,score\na,b,1\n", {}, r"cannot tell the format from the unknown suffix '\.xlsx'"),
]


@pytest.mark.parametrize("name,text,kwargs,match", BAD_FILES)
def test_read_scored_pairs_bad_files(tmp_path, name, text, kwargs, match):
    with pytest.raises(DataError, match=match):
        read_scored_pairs(write(tmp_path / name, text), **kwargs)


def test_not_utf8_names_the_line(tmp_path):
    rows = {"latin1.csv": b"sentence1,sentence2,score\ncaf\xe9,b,1\n",
            "latin1.jsonl": b'{"sentence1": "a", "sentence2": "b", "score": 1}\n{"sentence1": "caf\xe9"}\n'}
    for name, content in rows.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(DataError, match=rf"{name}:2: not valid UTF-8"):
            read_scored_pairs(tmp_path / name)
    (tmp_path / "first.csv").write_bytes(b"\xff\xfe\n")
    with pytest.raises(DataError, match=r"first\.csv:1: not valid UTF-8"):
        read_scored_pairs(tmp_path / "first.csv")


def test_missing_file_and_bad_labels(tmp_path):
    with pytest.raises(DataError, match="nope.csv: no such file"):
        read_scored_pairs(tmp_path / "nope.csv")
    with pytest.raises(DataError, match=r"p\.csv:3: label 2 out of range \[0, 2\)"):
        read_labelled_pairs(write(tmp_path / "p.csv", "sentence1,sentence2,label\na,b,1\nc,d,2\n"))
    with pytest.raises(DataError, match="no column 'negative'"):
        read_triplets(write(tmp_path / "t.csv", "anchor,positive\na,b\n"))


def test_lines_end_only_at_newline(tmp_path):
    """A lone carriage return is text, not a row break; CRLF endings are one line end."""
    path = tmp_path / "t.txt"
    path.write_bytes(b"first\rstill first\r\nsecond\n\n")
    assert read_texts(path) == (["1", "2"], ["first\rstill first", "second"])
    tsv = tmp_path / "p.tsv"
    tsv.write_bytes(b"sentence1\tsentence2\tscore\r\na\rb\tc\t1\r\n")
    assert read_scored_pairs(tsv).texts[0] == ["a\rb"]


def test_read_texts_txt_and_jsonl(tmp_path):
    assert read_texts(write(tmp_path / "a.txt", "one\ntwo\n")) == (["1", "2"], ["one", "two"])
    jl = write(tmp_path / "c.jsonl", '{"_id": "x", "title": "T", "text": "body"}\n{"text": "plain"}\n')
    assert read_texts(jl) == (["x", "2"], ["T body", "plain"])
    with pytest.raises(DataError, match=r"b\.txt:2: empty line"):
        read_texts(write(tmp_path / "b.txt", "one\n\nthree\n"))
    with pytest.raises(DataError, match=r"n\.jsonl:1: expected an object with a non-empty string \"text\""):
        read_texts(write(tmp_path / "n.jsonl", '{"text": null}\n'))
    with pytest.raises(DataError, match=r"must end in \.txt"):
        read_texts(write(tmp_path / "x.csv", "a\n"))
