"""Reading table files row by row: the one low-level reader behind every verb.

Training, every evaluator, `siamjax encode`/`search`, `siamjax data prepare` and the tfds builders
read their files here, so a file gets the same treatment and the same `FILE:LINE: what is wrong`
message everywhere:
- files are streamed line by line (`.gz` is decompressed), never held whole, so a prepared
  dataset can be made from a file larger than memory; a UTF-8 byte-order mark is dropped;
- lines end at `\\n` (a `\\r\\n` ending counts as one); a lone `\\r` is text, never a new row;
- bytes that are not UTF-8 are kept as surrogates, so only the rows that hold them are rejected;
- formats: jsonl (one JSON object per line), tsv (tab-split, quotes are literal, as in STS-b),
  csv (RFC 4180 quoting, fields may span lines), txt (one text per line), parquet (read in
  record batches with pyarrow, the format of Hugging Face datasets; a row's "line" is its row
  number from 1).
Rows come back as (first line number, fields): a dict for jsonl, parquet and csv/tsv read with
their header, a list of strings for csv/tsv without a header, the line itself for txt.
"""
from __future__ import annotations

import csv
import gzip
import itertools
import json
import os
import pathlib
from collections.abc import Callable, Iterable, Iterator

import pyarrow.parquet as pq

from siamjax.data.records import BadRowError, DataError

# reject(line, reason): raises BadRowError, or records the row as skipped and returns.
Reject = Callable[[int, str], None]

FORMATS = ("jsonl", "csv", "tsv", "txt", "parquet")
_SUFFIX_FORMATS = {".jsonl": "jsonl", ".json": "jsonl", ".csv": "csv", ".tsv": "tsv", ".txt": "txt",
                   ".parquet": "parquet"}
_PARQUET_BATCH_ROWS = 4096  # rows decoded at a time: bounded memory whatever the file size
QUOTING = ("none", "minimal")
csv.field_size_limit(2**31 - 1)  # corpus documents can be long


def suffix_format(path: str | os.PathLike) -> str | None:
    """The format its suffix names (".gz" ignored), or None."""
    suffixes = [s.lower() for s in pathlib.Path(path).suffixes if s.lower() != ".gz"]
    return _SUFFIX_FORMATS.get(suffixes[-1]) if suffixes else None


def read_lines(path: str | os.PathLike) -> list[tuple[int, str]]:
    """(line number from 1, text without its line ending) of every line of a text file."""
    return list(iter_lines(path))


def _check_file(path: pathlib.Path) -> None:
    if not path.is_file():
        raise DataError(f"{path}: no such file" if not path.exists() else f"{path}: not a file")


def iter_lines(path: str | os.PathLike) -> Iterator[tuple[int, str]]:
    """`read_lines`, streamed: one line at a time, so memory does not grow with the file.

    The file is checked (exists, is a file) when this is called, not on the first `next`.
    """
    path = pathlib.Path(path)
    _check_file(path)
    return _stream_lines(path)


def _stream_lines(path: pathlib.Path) -> Iterator[tuple[int, str]]:
    try:
        with (gzip.open if path.suffix.lower() == ".gz" else open)(path, "rb") as f:
            for n, raw in enumerate(f, start=1):  # binary files split on b"\n" only
                line = raw.decode("utf-8", errors="surrogateescape")
                if n == 1:
                    line = line.removeprefix("\ufeff")
                yield n, line.removesuffix("\n").removesuffix("\r")
    except (OSError, EOFError) as err:
        raise DataError(f"{path}: cannot read ({err})") from err


def first_line(path: str | os.PathLike) -> tuple[int, str] | None:
    """The first non-blank line (number, text) of a text file, or None; reads no further."""
    return next(((n, line) for n, line in iter_lines(path) if line.strip()), None)


def utf8_error(text: str) -> str | None:
    """Why `text` (from `read_lines`) is not valid UTF-8, or None when it is."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        return f"not valid UTF-8 (byte {err.start} of the line)"
    return None


def raise_bad_row(path: str) -> Reject:
    """The default `reject`: every bad row is an error naming its file and line."""
    def reject(line: int, reason: str) -> None:
        raise BadRowError(path, line, reason)
    return reject


def jsonl_rows(lines: Iterable[tuple[int, str]], reject: Reject) -> Iterator[tuple[int, dict]]:
    """(line, object) of every non-blank jsonl line; bad lines go to `reject`."""
    for line_no, line in lines:
        if not line.strip():
            continue
        reason = utf8_error(line)
        if reason is None:
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                reason = f"invalid JSON: {err.msg} at column {err.colno}"
            else:
                if isinstance(record, dict):
                    yield line_no, record
                    continue
                reason = f"expected a JSON object, got {type(record).__name__}"
        reject(line_no, reason)


def delimited_rows(path: str, lines: Iterable[tuple[int, str]], fmt: str, reject: Reject,
                   quoting: str | None = None) -> Iterator[tuple[int, list[str]]]:
    """(first line, fields) of every non-blank csv/tsv record; rows that are not UTF-8 go to
    `reject`.

    `quoting` "none" splits each line on the delimiter, quotes kept as text (the default for
    tsv); "minimal" parses RFC 4180 quotes, so a quoted field may hold delimiters and newlines
    (the default for csv). A record the csv parser cannot read raises `BadRowError` (its quotes
    leave the rest of the file unreadable too).
    """
    quoting = quoting or ("none" if fmt == "tsv" else "minimal")
    if quoting not in QUOTING:
        raise DataError(f"{path}: quoting must be one of {QUOTING}, got {quoting!r}")
    delimiter = "\t" if fmt == "tsv" else ","
    if quoting == "none":
        for line_no, line in lines:
            if line.strip():
                reason = utf8_error(line)
                if reason:
                    reject(line_no, reason)
                    continue
                yield line_no, line.split(delimiter)
        return
    numbers: list[int] = []  # line numbers the csv reader has consumed (only the last is kept)

    def feed():
        for n, line in lines:
            numbers[:] = [n]
            yield line + "\n"

    reader = csv.reader(feed(), delimiter=delimiter, quoting=csv.QUOTE_MINIMAL)
    while True:
        start = numbers[0] + 1 if numbers else 1  # the record starts on the line after the last one read
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as err:
            raise BadRowError(path, start, f"unreadable {fmt} row: {err}") from None
        if any(f.strip() for f in fields):
            reason = utf8_error("".join(fields))
            if reason:
                reject(start, reason)
                continue
            yield start, fields


def parquet_rows(path: str | os.PathLike) -> tuple[list[str], Iterator[tuple[int, dict]]]:
    """(column names, (row number from 1, {column: value})) of a parquet file, streamed in
    record batches so memory stays bounded however large the file is."""
    _check_file(pathlib.Path(path))
    try:
        parquet = pq.ParquetFile(path)
    except Exception as err:  # pyarrow raises ArrowInvalid/OSError for a file that is not parquet
        raise DataError(f"{path}: cannot read parquet ({err})") from err
    names = list(parquet.schema_arrow.names)
    if parquet.metadata.num_rows == 0:
        raise DataError(f"{path}: file is empty")

    def rows():
        n = 0
        for batch in parquet.iter_batches(batch_size=_PARQUET_BATCH_ROWS):
            for record in batch.to_pylist():
                n += 1
                yield n, record

    return names, rows()


def table_rows(path: str | os.PathLike, fmt: str, *, header: bool = True, quoting: str | None = None,
               reject: Reject | None = None) -> tuple[list[str] | None, Iterator[tuple[int, dict | list | str]]]:
    """(header names or None, rows) of a file in format `fmt` (see the module docstring).

    csv/tsv read `header=True` give their first record's names and rows as {column: value};
    bad rows go to `reject` (default: `BadRowError` naming file and line). Rows are streamed.
    """
    if fmt not in FORMATS:
        raise DataError(f"{path}: format must be one of {FORMATS}, got {fmt!r}")
    if fmt == "parquet":
        return parquet_rows(path)
    path_str, lines = str(path), iter_lines(path)
    reject = reject or raise_bad_row(path_str)
    head = []  # blank lines before the first text, then that line
    for item in lines:
        head.append(item)
        if item[1].strip():
            break
    else:
        raise DataError(f"{path_str}: file is empty")
    lines = itertools.chain(head, lines)
    if fmt == "jsonl":
        return None, jsonl_rows(lines, reject)
    if fmt == "txt":
        return None, lines
    rows = delimited_rows(path_str, lines, fmt, reject, quoting)
    if not header:
        return None, rows
    first = next(rows, None)
    if first is None:
        raise DataError(f"{path_str}: no header row")
    names = [f.strip() for f in first[1]]
    return names, ((n, dict(zip(names, values))) for n, values in rows)
