"""BEIR retrieval folders: corpus.jsonl (with titles), queries.jsonl and qrels/<split>.tsv,
read through the same row reader as every other data file."""
from __future__ import annotations

import dataclasses
import os
import pathlib

from siamjax.data.files import table_rows
from siamjax.data.records import BadRowError, DataError


@dataclasses.dataclass(frozen=True)
class RetrievalData:
    """BEIR-style retrieval set: id -> text for queries and corpus, query id -> relevant doc ids."""

    queries: dict[str, str]
    corpus: dict[str, str]
    relevant_docs: dict[str, set[str]]


def _read_id_texts(path: pathlib.Path, with_title: bool) -> dict[str, str]:
    out: dict[str, str] = {}
    _, rows = table_rows(path, "jsonl")
    for line_no, row in rows:
        if "_id" not in row or not isinstance(row.get("text"), str):
            raise BadRowError(str(path), line_no, "BEIR rows need an '_id' and a string 'text'")
        key = str(row["_id"])
        if key in out:
            raise BadRowError(str(path), line_no, f"duplicate _id {key!r}")
        text = row["text"]
        if with_title and row.get("title"):
            text = f"{row['title']} {text}"
        out[key] = text.strip()
    if not out:
        raise DataError(f"{path}: no rows")
    return out


def _read_qrels(path: pathlib.Path, queries: dict[str, str]) -> dict[str, set[str]]:
    names, rows = table_rows(path, "tsv")
    missing = [c for c in ("query-id", "corpus-id", "score") if c not in names]
    if missing:
        raise DataError(f"{path}: header needs query-id, corpus-id, score; missing {missing}")
    relevant: dict[str, set[str]] = {}
    for line_no, row in rows:
        qid, cid, score = (row.get(c) for c in ("query-id", "corpus-id", "score"))
        try:
            relevance = float(score)
        except (TypeError, ValueError):
            raise BadRowError(str(path), line_no, f"score {score!r} is not a number") from None
        if qid not in queries:
            raise BadRowError(str(path), line_no, f"query-id {qid!r} is not in queries.jsonl")
        if relevance > 0:
            relevant.setdefault(qid, set()).add(cid)
    if not relevant:
        raise DataError(f"{path}: no relevant (score > 0) judgements")
    return relevant


def read_beir(directory: str | os.PathLike, split: str = "test") -> RetrievalData:
    """A BEIR folder: corpus.jsonl (title + text), queries.jsonl, qrels/<split>.tsv.

    Qrels with score > 0 are relevant (binary relevance, as sentence-transformers evaluates).
    """
    directory = pathlib.Path(directory)
    if not directory.is_dir():
        raise DataError(f"{directory}: not a directory (expected a BEIR folder)")
    qrels_path = directory / "qrels" / f"{split}.tsv"
    if not qrels_path.is_file():
        found = sorted(p.stem for p in (directory / "qrels").glob("*.tsv"))
        raise DataError(f"{qrels_path}: no such file (splits found: {', '.join(found) or 'none'})")
    corpus = _read_id_texts(directory / "corpus.jsonl", with_title=True)
    queries = _read_id_texts(directory / "queries.jsonl", with_title=False)
    return RetrievalData(queries, corpus, _read_qrels(qrels_path, queries))
