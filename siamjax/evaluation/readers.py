"""Readers for evaluation data: scored pairs (STS-b, SICK, generic csv/tsv/jsonl), labelled pairs,
triplets and BEIR retrieval folders.

Every reader fails on the first malformed row with `FILE:LINE: what is wrong`, and never drops a
row silently: a bad file should stop an evaluation, not quietly change its number.
"""
from __future__ import annotations

import csv
import dataclasses
import functools
import json
import pathlib
from collections.abc import Iterator, Mapping

import numpy as np

FORMATS = ("auto", "stsb", "sick", "csv", "tsv", "jsonl")
STS_FIELDS = {"sentence1": "sentence1", "sentence2": "sentence2", "score": "score"}
SICK_FIELDS = {"sentence1": "sentence_A", "sentence2": "sentence_B", "score": "relatedness_score"}
PAIR_FIELDS = {"sentence1": "sentence1", "sentence2": "sentence2", "label": "label"}
TRIPLET_FIELDS = {"anchor": "anchor", "positive": "positive", "negative": "negative"}
csv.field_size_limit(2**31 - 1)  # corpus documents can be long


class DataFormatError(ValueError):
    """A data file is missing, empty or malformed; the message names the file (and line)."""


@dataclasses.dataclass(frozen=True)
class ScoredPairs:
    """Sentence pairs with a graded similarity score (STS)."""
    sentences1: list[str]
    sentences2: list[str]
    scores: np.ndarray


@dataclasses.dataclass(frozen=True)
class LabelledPairs:
    """Sentence pairs with a 0/1 label (duplicate / paraphrase detection)."""
    sentences1: list[str]
    sentences2: list[str]
    labels: np.ndarray


@dataclasses.dataclass(frozen=True)
class Triplets:
    """(anchor, positive, negative) texts."""
    anchors: list[str]
    positives: list[str]
    negatives: list[str]


@dataclasses.dataclass(frozen=True)
class RetrievalData:
    """BEIR-style retrieval set: id -> text for queries and corpus, query id -> relevant doc ids."""
    queries: dict[str, str]
    corpus: dict[str, str]
    relevant_docs: dict[str, set[str]]


def _open(path: pathlib.Path):
    if not path.is_file():
        raise DataFormatError(f"{path}: no such file" if not path.exists() else f"{path}: not a file")
    try:
        return path.open(newline="", encoding="utf-8")
    except OSError as err:
        raise DataFormatError(f"{path}: cannot open ({err})") from err


def _named_decode_errors(rows_fn):
    """Re-raise a UnicodeDecodeError from a row generator as an error naming the file."""

    @functools.wraps(rows_fn)
    def wrapper(path, *args):
        try:
            yield from rows_fn(path, *args)
        except UnicodeDecodeError as err:
            raise DataFormatError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None

    return wrapper


def detect_format(path: str | pathlib.Path) -> str:
    """Guess the layout from the extension and the first line (STS-b files end in .csv but are TSV)."""
    path = pathlib.Path(path)
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        return "jsonl"
    with _open(path) as fh:
        try:
            first = fh.readline().rstrip("\r\n")
        except UnicodeDecodeError as err:
            raise DataFormatError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    if not first:
        raise DataFormatError(f"{path}: file is empty")
    fields = first.split("\t")
    if "sentence_A" in fields and "sentence_B" in fields:
        return "sick"
    if len(fields) >= 7:
        try:
            float(fields[4])
            return "stsb"
        except ValueError:
            pass
    return "tsv" if suffix == ".tsv" or ("\t" in first and "," not in first) else "csv"


@_named_decode_errors
def _rows_delimited(path: pathlib.Path, delimiter: str) -> Iterator[tuple[int, dict]]:
    """(line, row dict) of a header-first csv/tsv; TSV is read without quote handling."""
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    with _open(path) as fh:
        reader = csv.reader(fh, delimiter=delimiter, quoting=quoting)
        try:
            header = next(reader)
        except StopIteration:
            raise DataFormatError(f"{path}: file is empty") from None
        except csv.Error as err:
            raise DataFormatError(f"{path}:{reader.line_num}: {err}") from None
        header = [h.strip() for h in header]
        while True:
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as err:
                raise DataFormatError(f"{path}:{reader.line_num}: {err}") from None
            if not row or (len(row) == 1 and not row[0].strip()):
                continue  # blank line
            if len(row) != len(header):
                raise DataFormatError(
                    f"{path}:{reader.line_num}: expected {len(header)} fields like the header, got {len(row)}"
                )
            yield reader.line_num, dict(zip(header, row))


@_named_decode_errors
def _rows_jsonl(path: pathlib.Path) -> Iterator[tuple[int, dict]]:
    with _open(path) as fh:
        for line_no, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataFormatError(f"{path}:{line_no}: invalid JSON ({err.msg})") from None
            if not isinstance(row, dict):
                raise DataFormatError(f"{path}:{line_no}: expected a JSON object, got {type(row).__name__}")
            yield line_no, row


@_named_decode_errors
def _rows_stsb(path: pathlib.Path) -> Iterator[tuple[int, dict]]:
    """STS-b: tab-separated, no header, score in column 5, sentences in 6 and 7 (1-based)."""
    with _open(path) as fh:
        for line_no, row in enumerate(csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE), start=1):
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            if len(row) < 7:
                raise DataFormatError(
                    f"{path}:{line_no}: STS-b rows need at least 7 tab-separated fields, got {len(row)}"
                )
            yield line_no, {"score": row[4], "sentence1": row[5], "sentence2": row[6]}


def read_records(path, fields: Mapping[str, str], *, format: str = "auto") -> tuple[list[int], dict[str, list]]:
    """Read `fields` (our name -> the file's column / JSON key) from every row of a table file.

    Why: one loader for all evaluation files, so every evaluator gets the same errors.
    Returns (line numbers, {field: values}).
    """
    path = pathlib.Path(path)
    if format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {format!r}")
    fmt = detect_format(path) if format == "auto" else format
    rows = {
        "stsb": lambda: _rows_stsb(path),
        "sick": lambda: _rows_delimited(path, "\t"),
        "tsv": lambda: _rows_delimited(path, "\t"),
        "csv": lambda: _rows_delimited(path, ","),
        "jsonl": lambda: _rows_jsonl(path),
    }[fmt]()
    lines: list[int] = []
    out: dict[str, list] = {name: [] for name in fields}
    for line_no, row in rows:
        for name, column in fields.items():
            if column not in row:
                where = f"{path}:{line_no}" if fmt == "jsonl" else str(path)
                raise DataFormatError(
                    f"{where}: no column {column!r} for {name} (columns: {', '.join(map(str, row))}); "
                    f"map it with columns={{'{name}': '<column>'}} / --columns {name}=<column>"
                )
            value = row[column]
            if value is None or (isinstance(value, str) and not value.strip()):
                raise DataFormatError(f"{path}:{line_no}: empty {name} (column {column!r})")
            out[name].append(value)
        lines.append(line_no)
    if not lines:
        raise DataFormatError(f"{path}: no data rows")
    return lines, out


def _texts(path, lines, values, name) -> list[str]:
    for line_no, v in zip(lines, values):
        if not isinstance(v, str):
            raise DataFormatError(f"{path}:{line_no}: {name} must be text, got {type(v).__name__}")
    return list(values)


def _numbers(path, lines, values, name) -> np.ndarray:
    out = np.empty(len(values), np.float64)
    for i, (line_no, v) in enumerate(zip(lines, values)):
        try:
            out[i] = float(v)
        except (TypeError, ValueError):
            raise DataFormatError(f"{path}:{line_no}: {name} {v!r} is not a number") from None
        if not np.isfinite(out[i]):
            raise DataFormatError(f"{path}:{line_no}: {name} {v!r} is not finite")
    return out


def read_sts(path, *, format: str = "auto", columns: Mapping[str, str] | None = None) -> ScoredPairs:
    """Scored sentence pairs from STS-b, SICK, or a csv/tsv/jsonl with sentence1/sentence2/score
    (other names via `columns`, e.g. {"score": "label"})."""
    fmt = detect_format(path) if format == "auto" else format
    fields = dict(SICK_FIELDS if fmt == "sick" else STS_FIELDS)
    if columns:
        if fmt == "stsb":
            raise ValueError("STS-b files have fixed columns; `columns` applies to csv/tsv/jsonl/sick")
        fields.update(columns)
    lines, rec = read_records(path, fields, format=fmt)
    return ScoredPairs(_texts(path, lines, rec["sentence1"], "sentence1"),
                       _texts(path, lines, rec["sentence2"], "sentence2"),
                       _numbers(path, lines, rec["score"], "score"))


def read_labelled_pairs(path, *, format: str = "auto", columns: Mapping[str, str] | None = None) -> LabelledPairs:
    """Pairs with 0/1 labels from csv/tsv/jsonl (columns sentence1, sentence2, label by default)."""
    lines, rec = read_records(path, {**PAIR_FIELDS, **(columns or {})}, format=format)
    labels = _numbers(path, lines, rec["label"], "label")
    for line_no, v in zip(lines, labels):
        if v not in (0.0, 1.0):
            raise DataFormatError(f"{path}:{line_no}: label must be 0 or 1, got {v:g}")
    return LabelledPairs(_texts(path, lines, rec["sentence1"], "sentence1"),
                         _texts(path, lines, rec["sentence2"], "sentence2"), labels.astype(np.int64))


def read_triplets(path, *, format: str = "auto", columns: Mapping[str, str] | None = None) -> Triplets:
    """(anchor, positive, negative) rows from csv/tsv/jsonl."""
    lines, rec = read_records(path, {**TRIPLET_FIELDS, **(columns or {})}, format=format)
    return Triplets(*(_texts(path, lines, rec[f], f) for f in TRIPLET_FIELDS))


def _read_id_texts(path: pathlib.Path, with_title: bool) -> dict[str, str]:
    out: dict[str, str] = {}
    for line_no, row in _rows_jsonl(path):
        if "_id" not in row or "text" not in row:
            raise DataFormatError(f"{path}:{line_no}: BEIR rows need '_id' and 'text' keys")
        key = str(row["_id"])
        if key in out:
            raise DataFormatError(f"{path}:{line_no}: duplicate _id {key!r}")
        text = str(row["text"])
        if with_title and row.get("title"):
            text = f"{row['title']} {text}"
        out[key] = text.strip()
    if not out:
        raise DataFormatError(f"{path}: no rows")
    return out


def read_beir(directory, split: str = "test") -> RetrievalData:
    """A BEIR folder: corpus.jsonl (title + text), queries.jsonl, qrels/<split>.tsv.

    Qrels with score > 0 are relevant (binary relevance, as sentence-transformers evaluates).
    """
    directory = pathlib.Path(directory)
    if not directory.is_dir():
        raise DataFormatError(f"{directory}: not a directory (expected a BEIR folder)")
    qrels_path = directory / "qrels" / f"{split}.tsv"
    if not qrels_path.is_file():
        found = sorted(p.stem for p in (directory / "qrels").glob("*.tsv"))
        raise DataFormatError(f"{qrels_path}: no such file (splits found: {', '.join(found) or 'none'})")
    corpus = _read_id_texts(directory / "corpus.jsonl", with_title=True)
    queries = _read_id_texts(directory / "queries.jsonl", with_title=False)
    relevant: dict[str, set[str]] = {}
    for line_no, row in _rows_delimited(qrels_path, "\t"):
        try:
            qid, cid, score = row["query-id"], row["corpus-id"], row["score"]
        except KeyError as err:
            raise DataFormatError(f"{qrels_path}: header needs query-id, corpus-id, score; missing {err}") from None
        try:
            relevance = float(score)
        except ValueError:
            raise DataFormatError(f"{qrels_path}:{line_no}: score {score!r} is not a number") from None
        if qid not in queries:
            raise DataFormatError(f"{qrels_path}:{line_no}: query-id {qid!r} is not in queries.jsonl")
        if relevance > 0:
            relevant.setdefault(qid, set()).add(cid)
    if not relevant:
        raise DataFormatError(f"{qrels_path}: no relevant (score > 0) judgements")
    return RetrievalData(queries, corpus, relevant)
