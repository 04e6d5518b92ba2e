"""BEIR retrieval folders: corpus.jsonl (with titles), queries.jsonl and qrels/<split>.tsv,
read through the same row reader as every other data file."""
from __future__ import annotations

import dataclasses
import os
import pathlib

from siamjax.data.files import table_rows
from siamjax.data.records import BadRow, BadRowError, DataError, check_on_bad_row


@dataclasses.dataclass(frozen=True)
class RetrievalData:
    """BEIR-style retrieval set: id -> text for queries and corpus, query id -> relevant doc ids."""

    queries: dict[str, str]
    corpus: dict[str, str]
    relevant_docs: dict[str, set[str]]
    bad_rows: list[BadRow] = dataclasses.field(default_factory=list)  # qrels skipped (on_bad_row="skip")


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


def _read_qrels(path: pathlib.Path, queries: dict[str, str], corpus: dict[str, str],
                on_bad_row: str) -> tuple[dict[str, set[str]], list[BadRow]]:
    """query id -> relevant corpus ids; a judgement naming an unknown query or document is an
    error (it would silently score 0), or skipped and counted with on_bad_row="skip"."""
    names, rows = table_rows(path, "tsv")
    missing = [c for c in ("query-id", "corpus-id", "score") if c not in names]
    if missing:
        raise DataError(f"{path}: header needs query-id, corpus-id, score; missing {missing}")
    relevant: dict[str, set[str]] = {}
    skipped: list[BadRow] = []
    for line_no, row in rows:
        qid, cid, score = (row.get(c) for c in ("query-id", "corpus-id", "score"))
        try:
            relevance = float(score)
        except (TypeError, ValueError):
            raise BadRowError(str(path), line_no, f"score {score!r} is not a number") from None
        reason = (f"query-id {qid!r} is not in queries.jsonl" if qid not in queries else
                  f"corpus-id {cid!r} is not in corpus.jsonl" if cid not in corpus else None)
        if reason is not None:
            if on_bad_row == "error":
                raise BadRowError(str(path), line_no, reason)
            skipped.append(BadRow(str(path), line_no, reason))
            continue
        if relevance > 0:
            relevant.setdefault(qid, set()).add(cid)
    if not relevant:
        counted = f" ({len(skipped)} judgement(s) skipped)" if skipped else ""
        raise DataError(f"{path}: no relevant (score > 0) judgements{counted}")
    return relevant, skipped


def read_beir(directory: str | os.PathLike, split: str = "test", *, on_bad_row: str = "error") -> RetrievalData:
    """A BEIR folder: corpus.jsonl (title + text), queries.jsonl, qrels/<split>.tsv.

    Qrels with score > 0 are relevant (binary relevance, as sentence-transformers evaluates).
    A qrels line whose query or corpus id does not exist raises `BadRowError`, or with
    `on_bad_row="skip"` is left out and listed in `RetrievalData.bad_rows`.
    """
    check_on_bad_row(on_bad_row)
    directory = pathlib.Path(directory)
    if not directory.is_dir():
        raise DataError(f"{directory}: not a directory (expected a BEIR folder)")
    qrels_path = directory / "qrels" / f"{split}.tsv"
    if not qrels_path.is_file():
        found = sorted(p.stem for p in (directory / "qrels").glob("*.tsv"))
        raise DataError(f"{qrels_path}: no such file (splits found: {', '.join(found) or 'none'})")
    corpus = _read_id_texts(directory / "corpus.jsonl", with_title=True)
    queries = _read_id_texts(directory / "queries.jsonl", with_title=False)
    relevant, skipped = _read_qrels(qrels_path, queries, corpus, on_bad_row)
    return RetrievalData(queries, corpus, relevant, skipped)
