"""Reading table files row by row: the one low-level reader behind every verb.

Training, every evaluator, `siamjax encode`/`search` and the tfds builders read their files here,
so a file gets the same treatment and the same `FILE:LINE: what is wrong` message everywhere:
- bytes are read whole (`.gz` is decompressed) and a UTF-8 byte-order mark is dropped;
- lines end at `\\n` (a `\\r\\n` ending counts as one); a lone `\\r` is text, never a new row;
- bytes that are not UTF-8 are kept as surrogates, so only the rows that hold them are rejected;
- formats: jsonl (one JSON object per line), tsv (tab-split, quotes are literal, as in STS-b),
  csv (RFC 4180 quoting, fields may span lines), txt (one text per line).
Rows come back as (first line number, fields): a dict for jsonl and for csv/tsv read with their
header, a list of strings for csv/tsv without a header, the line itself for txt.
"""
from __future__ import annotations

import csv
import gzip
import json
import os
import pathlib
from collections.abc import Callable, Iterator

from siamjax.data.records import BadRowError, DataError

# reject(line, reason): raises BadRowError, or records the row as skipped and returns.
Reject = Callable[[int, str], None]

FORMATS = ("jsonl", "csv", "tsv", "txt")
_SUFFIX_FORMATS = {".jsonl": "jsonl", ".json": "jsonl", ".csv": "csv", ".tsv": "tsv", ".txt": "txt"}
QUOTING = ("none", "minimal")
csv.field_size_limit(2**31 - 1)  # corpus documents can be long


def suffix_format(path: str | os.PathLike) -> str | None:
    """The format its suffix names (".gz" ignored), or None."""
    suffixes = [s.lower() for s in pathlib.Path(path).suffixes if s.lower() != ".gz"]
    return _SUFFIX_FORMATS.get(suffixes[-1]) if suffixes else None


def read_lines(path: str | os.PathLike) -> list[tuple[int, str]]:
    """(line number from 1, text without its line ending) of every line of a text file."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file" if not path.exists() else f"{path}: not a file")
    try:
        with (gzip.open if path.suffix.lower() == ".gz" else open)(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as err:
        raise DataError(f"{path}: cannot read ({err})") from err
    text = data.decode("utf-8", errors="surrogateescape").removeprefix("\ufeff")
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the final newline ends the last line; it does not start a new one
    return [(n, line.removesuffix("\r")) for n, line in enumerate(lines, start=1)]


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


def jsonl_rows(lines: list[tuple[int, str]], reject: Reject) -> Iterator[tuple[int, dict]]:
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


def delimited_rows(path: str, lines: list[tuple[int, str]], fmt: str, reject: Reject,
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
    numbers = [n for n, _ in lines]
    reader = csv.reader((line + "\n" for _, line in lines), delimiter=delimiter, quoting=csv.QUOTE_MINIMAL)
    while True:
        start = numbers[reader.line_num] if reader.line_num < len(numbers) else None
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


def table_rows(path: str | os.PathLike, fmt: str, *, header: bool = True, quoting: str | None = None,
               reject: Reject | None = None) -> tuple[list[str] | None, Iterator[tuple[int, dict | list | str]]]:
    """(header names or None, rows) of a file in format `fmt` (see the module docstring).

    csv/tsv read `header=True` give their first record's names and rows as {column: value};
    bad rows go to `reject` (default: `BadRowError` naming file and line).
    """
    if fmt not in FORMATS:
        raise DataError(f"{path}: format must be one of {FORMATS}, got {fmt!r}")
    path_str, lines = str(path), read_lines(path)
    reject = reject or raise_bad_row(path_str)
    if not any(line.strip() for _, line in lines):
        raise DataError(f"{path_str}: file is empty")
    if fmt == "jsonl":
        return None, jsonl_rows(lines, reject)
    if fmt == "txt":
        return None, iter(lines)
    rows = delimited_rows(path_str, lines, fmt, reject, quoting)
    if not header:
        return None, rows
    first = next(rows, None)
    if first is None:
        raise DataError(f"{path_str}: no header row")
    names = [f.strip() for f in first[1]]
    return names, ((n, dict(zip(names, values))) for n, values in rows)
