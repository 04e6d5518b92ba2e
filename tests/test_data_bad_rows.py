"""Malformed rows: an error naming file and line by default, counted skips with "skip".

Each case is a small file whose one bad row sits between good rows; the same case is run in
both modes, so a reader that silently dropped or mis-numbered a row would fail.
"""
import json
import logging

import pytest

from siamjax.data import BadRowError, read_pairs

PAIR = {"sentence1": "s1", "sentence2": "s2"}
SCORED = {"sentence1": "s1", "sentence2": "s2", "score": "score"}
CSV_SCORED = {"sentence1": "s1", "sentence2": "s2", "score": "score"}
NLI = {"premise": "p", "hypothesis": "h", "nli_label": "label"}
CLASS = {"sentence1": "s1", "sentence2": "s2", "label": "label"}


def _jsonl(*rows) -> bytes:
    return b"\n".join(r if isinstance(r, bytes) else json.dumps(r).encode() for r in rows) + b"\n"


GOOD_PAIR = {"s1": "a cat", "s2": "a dog"}
GOOD_SCORED = {"s1": "a cat", "s2": "a dog", "score": 3.5}
GOOD_NLI = {"p": "a cat sits", "h": "an animal sits", "label": "entailment"}
GOOD_CLASS = {"s1": "a cat", "s2": "a dog", "label": 1}
CSV_HEAD = b"s1,s2,score\n"

# (id, file suffix, content, read_pairs kwargs, bad line number, expected reason fragment)
CASES = [
    ("jsonl-missing-column", "jsonl", _jsonl(GOOD_PAIR, {"s1": "x"}, GOOD_PAIR),
     dict(columns=PAIR), 2, "no column 's2' for sentence2"),
    ("jsonl-null-text", "jsonl", _jsonl(GOOD_PAIR, {"s1": None, "s2": "x"}, GOOD_PAIR),
     dict(columns=PAIR), 2, "'sentence1' is missing or null"),
    ("jsonl-empty-text", "jsonl", _jsonl(GOOD_PAIR, {"s1": "x", "s2": ""}, GOOD_PAIR),
     dict(columns=PAIR), 2, "'sentence2' is empty"),
    ("jsonl-whitespace-text", "jsonl", _jsonl(GOOD_PAIR, {"s1": " \t ", "s2": "y"}, GOOD_PAIR),
     dict(columns=PAIR), 2, "'sentence1' is empty"),
    ("jsonl-number-as-text", "jsonl", _jsonl(GOOD_PAIR, {"s1": 12, "s2": "y"}, GOOD_PAIR),
     dict(columns=PAIR), 2, "must be text, got int"),
    ("jsonl-invalid-json", "jsonl", _jsonl(GOOD_PAIR, b'{"s1": "x", "s2": ', GOOD_PAIR),
     dict(columns=PAIR), 2, "invalid JSON"),
    ("jsonl-not-an-object", "jsonl", _jsonl(GOOD_PAIR, ["x", "y"], GOOD_PAIR),
     dict(columns=PAIR), 2, "expected a JSON object, got list"),
    ("jsonl-non-utf8", "jsonl", _jsonl(GOOD_PAIR, b'{"s1": "caf\xe9", "s2": "y"}', GOOD_PAIR),
     dict(columns=PAIR), 2, "not valid UTF-8"),
    ("jsonl-lone-surrogate", "jsonl", _jsonl(GOOD_PAIR, b'{"s1": "x\\ud800", "s2": "y"}',
                                             GOOD_PAIR),
     dict(columns=PAIR), 2, "non-UTF-8"),
    ("jsonl-score-not-number", "jsonl",
     _jsonl(GOOD_SCORED, {"s1": "x", "s2": "y", "score": "high"}, GOOD_SCORED),
     dict(columns=SCORED, score_range=(0, 5)), 2, "score 'high' is not a number"),
    ("jsonl-score-out-of-range", "jsonl",
     _jsonl(GOOD_SCORED, {"s1": "x", "s2": "y", "score": 7}, GOOD_SCORED),
     dict(columns=SCORED, score_range=(0, 5)), 2, "score 7.0 out of range [0, 5]"),
    ("jsonl-score-nan", "jsonl",
     _jsonl(GOOD_SCORED, b'{"s1": "x", "s2": "y", "score": NaN}', GOOD_SCORED),
     dict(columns=SCORED), 2, "not a finite number"),
    ("jsonl-score-bool", "jsonl",
     _jsonl(GOOD_SCORED, {"s1": "x", "s2": "y", "score": True}, GOOD_SCORED),
     dict(columns=SCORED), 2, "score True is not a number"),
    ("jsonl-score-null", "jsonl",
     _jsonl(GOOD_SCORED, {"s1": "x", "s2": "y", "score": None}, GOOD_SCORED),
     dict(columns=SCORED), 2, "'score' is missing or empty"),
    ("jsonl-unknown-nli-label", "jsonl",
     _jsonl(GOOD_NLI, {"p": "x", "h": "y", "label": "maybe"}, GOOD_NLI),
     dict(columns=NLI), 2, "unknown NLI label 'maybe'"),
    ("jsonl-nli-label-3", "jsonl", _jsonl(GOOD_NLI, {"p": "x", "h": "y", "label": 3}, GOOD_NLI),
     dict(columns=NLI), 2, "unknown NLI label 3"),
    ("jsonl-class-out-of-range", "jsonl",
     _jsonl(GOOD_CLASS, {"s1": "x", "s2": "y", "label": 4}, GOOD_CLASS),
     dict(columns=CLASS, num_classes=2), 2, "label 4 out of range [0, 2)"),
    ("jsonl-class-negative", "jsonl",
     _jsonl(GOOD_CLASS, {"s1": "x", "s2": "y", "label": -1}, GOOD_CLASS),
     dict(columns=CLASS), 2, "label -1 out of range"),
    ("jsonl-class-fractional", "jsonl",
     _jsonl(GOOD_CLASS, {"s1": "x", "s2": "y", "label": 1.5}, GOOD_CLASS),
     dict(columns=CLASS), 2, "label 1.5 is not an integer"),
    ("csv-short-row", "csv", CSV_HEAD + b"a,b,1\nonly one field\nc,d,2\n",
     dict(columns=CSV_SCORED), 3, "no column 's2', 'score' for sentence2, score"),
    ("csv-empty-text", "csv", CSV_HEAD + b"a,b,1\n,d,2\nc,d,2\n",
     dict(columns=CSV_SCORED), 3, "'sentence1' is empty"),
    ("csv-non-utf8", "csv", CSV_HEAD + b"a,b,1\nna\xefve,d,2\nc,d,2\n",
     dict(columns=CSV_SCORED), 3, "not valid UTF-8"),
    ("csv-score-not-number", "csv", CSV_HEAD + b"a,b,1\nc,d,two\nc,d,2\n",
     dict(columns=CSV_SCORED), 3, "score 'two' is not a number"),
    ("csv-score-empty", "csv", CSV_HEAD + b"a,b,1\nc,d,\nc,d,2\n",
     dict(columns=CSV_SCORED), 3, "'score' is missing or empty"),
    ("csv-score-inf", "csv", CSV_HEAD + b"a,b,1\nc,d,inf\nc,d,2\n",
     dict(columns=CSV_SCORED), 3, "not a finite number"),
    ("csv-after-multiline-quoted-field", "csv",
     CSV_HEAD + b'"line one\nline two",b,1\nc,d,x\ne,f,2\n',
     dict(columns=CSV_SCORED), 4, "score 'x' is not a number"),
    ("tsv-stsb-score-out-of-range", "tsv",
     b'g\tf\t2012\t1\t4.0\tA "quoted" one.\tB\ng\tf\t2012\t2\t5.5\tA\tB\n'
     b"g\tf\t2012\t3\t1.0\tC\tD\n",
     dict(columns={"sentence1": 5, "sentence2": 6, "score": 4}, score_range=(0, 5)), 2,
     "score 5.5 out of range [0, 5]"),
    ("tsv-unknown-nli-label", "tsv",
     b"p\th\tlabel\nx\ty\tneutral\nx\tz\t-\nx\tw\tcontradiction\n",
     dict(columns=NLI), 3, "unknown NLI label '-'"),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_row_raises_with_file_and_line(tmp_path, case):
    _, suffix, content, kwargs, line, reason = case
    path = tmp_path / f"data.{suffix}"
    path.write_bytes(content)
    with pytest.raises(BadRowError) as info:
        read_pairs(path, **kwargs)
    assert info.value.line == line
    assert info.value.path == str(path)
    assert str(info.value).startswith(f"{path}:{line}: ")
    assert reason in str(info.value)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_row_skipped_and_counted(tmp_path, case, caplog):
    _, suffix, content, kwargs, line, reason = case
    path = tmp_path / f"data.{suffix}"
    path.write_bytes(content)
    with caplog.at_level(logging.WARNING, logger="siamjax.data.records"):
        data = read_pairs(path, on_bad_row="skip", **kwargs)
    assert data.num_bad_rows == 1
    assert data.bad_rows[0].line == line and reason in data.bad_rows[0].reason
    assert len(data) == 2  # the good rows around the bad one are all kept
    assert "skipped 1 bad row(s)" in caplog.text and str(path) in caplog.text


def test_skip_counts_every_bad_row_and_keeps_order(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_bytes(_jsonl({"s1": "a", "s2": "b"}, {"s1": ""}, {"s1": "c", "s2": "d"},
                            b"not json", {"s1": "e", "s2": None}, {"s1": "f", "s2": "g"}))
    data = read_pairs(path, columns=PAIR, on_bad_row="skip")
    assert [b.line for b in data.bad_rows] == [2, 4, 5]
    assert data.texts == (["a", "c", "f"], ["b", "d", "g"])


def test_all_rows_bad_is_an_error_even_when_skipping(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_bytes(_jsonl({"s1": ""}, {"s2": "x"}))
    with pytest.raises(ValueError, match=r"d\.jsonl: no data rows \(2 bad row\(s\) skipped\)"):
        read_pairs(path, columns=PAIR, on_bad_row="skip")


def test_header_without_the_declared_column_names_it(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("a,b,score\nx,y,1\n")
    with pytest.raises(ValueError, match=r"d.csv:1: no column 's1' for sentence1 \(columns: a, b, score\)"):
        read_pairs(path, columns=CSV_SCORED)


def test_unknown_on_bad_row_value_is_rejected(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_bytes(_jsonl(GOOD_PAIR))
    with pytest.raises(ValueError, match="on_bad_row must be one of"):
        read_pairs(path, columns=PAIR, on_bad_row="ignore")


def test_blank_lines_are_not_rows(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_bytes(b'\n{"s1": "a", "s2": "b"}\n\n  \n{"s1": "c", "s2": "d"}\n')
    data = read_pairs(path, columns=PAIR)
    assert len(data) == 2 and data.num_bad_rows == 0
