"""Local jsonl / csv / tsv files -> `PairDataset`, through a declared column mapping.

The mapping names the role of each file column: text sides in order (e.g. "anchor",
"positive", "negative" or "sentence1", "sentence2") plus at most one label role — "score"
(float, optionally range-checked and normalised to [0, 1]), "label" (int class) or
"nli_label" (entailment / neutral / contradiction). Columns are named by header name (csv/tsv
with a header, jsonl keys) or 0-based index (csv/tsv without a header).
"""
from __future__ import annotations

import csv
import gzip
import io
import json
import os
import pathlib
from collections.abc import Mapping

from siamjax.data.records import BadRowError, PairDataset, RowParser, split_roles

FORMATS = ("jsonl", "csv", "tsv")
_SUFFIX_FORMATS = {".jsonl": "jsonl", ".json": "jsonl", ".csv": "csv", ".tsv": "tsv"}
_QUOTING = {"none": csv.QUOTE_NONE, "minimal": csv.QUOTE_MINIMAL}


def infer_format(path: str | os.PathLike) -> str:
    """The format from the file suffix (".gz" ignored); explicit `format=` is needed otherwise."""
    suffixes = [s.lower() for s in pathlib.Path(path).suffixes if s.lower() != ".gz"]
    if not suffixes or suffixes[-1] not in _SUFFIX_FORMATS:
        raise ValueError(f"{path}: cannot infer the format from the suffix; pass format= one "
                         f"of {FORMATS}")
    return _SUFFIX_FORMATS[suffixes[-1]]


def _read_bytes(path: pathlib.Path) -> bytes:
    if not path.is_file():
        raise FileNotFoundError(f"data file not found: {path}")
    opener = gzip.open if path.suffix.lower() == ".gz" else open
    with opener(path, "rb") as f:
        return f.read()


def read_pairs(
    path: str | os.PathLike,
    *,
    columns: Mapping[str, str | int],
    format: str | None = None,  # noqa: A002 - mirrors the config field name
    header: bool | None = None,
    quoting: str | None = None,
    score_range: tuple[float, float] | None = None,
    normalize_scores: bool = False,
    num_classes: int | None = None,
    on_bad_row: str = "error",
    name: str | None = None,
) -> PairDataset:
    """Read a local pair/triplet/scored-pair file into a validated in-memory `PairDataset`.

    Why a declared mapping: files in the wild name and order their columns differently; the
    mapping says which column plays which role, so the rest of the pipeline sees one shape.
    `header=None` means "has a header unless every column is given by index"; `quoting`
    defaults to "none" for tsv (STS-b style, quotes are literal) and "minimal" for csv.
    `normalize_scores=True` maps `score_range` linearly to [0, 1] (STS-b: (0, 5) -> score/5).
    Malformed rows raise `BadRowError` naming file and line, or are skipped and counted with
    `on_bad_row="skip"` (see `PairDataset.bad_rows`).
    """
    path = pathlib.Path(path)
    fmt = format or infer_format(path)
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    sides, label_role = split_roles(columns)
    parser = RowParser(str(path), sides, label_role, score_range, normalize_scores,
                       num_classes, on_bad_row)
    refs = [columns[s] for s in sides] + ([columns[label_role]] if label_role else [])
    data = _read_bytes(path)
    if fmt == "jsonl":
        rows = _jsonl_rows(data, parser, refs)
    else:
        rows = _delimited_rows(data, parser, refs, fmt, header, quoting)
    return parser.finish(name or path.name, rows)


def _jsonl_rows(data: bytes, parser: RowParser, refs: list) -> list:
    if not all(isinstance(r, str) for r in refs):
        raise ValueError(f"{parser.path}: jsonl columns must be key names, got {refs}")
    rows = []
    for line_no, raw in enumerate(data.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw.decode("utf-8-sig"))
        except UnicodeDecodeError as err:
            parser.reject(line_no, f"not valid UTF-8 ({err.reason} at byte {err.start})")
            continue
        except json.JSONDecodeError as err:
            parser.reject(line_no, f"invalid JSON: {err.msg} at column {err.colno}")
            continue
        if not isinstance(record, dict):
            parser.reject(line_no, f"expected a JSON object, got {type(record).__name__}")
            continue
        missing = [r for r in refs if r not in record]
        if missing:
            parser.reject(line_no, f"missing column(s) {missing}")
            continue
        values = [record[r] for r in refs]
        parsed = parser.parse_columns(line_no, values)
        if parsed is not None:
            rows.append(parsed)
    return rows


def _delimited_rows(data: bytes, parser: RowParser, refs: list, fmt: str,
                    header: bool | None, quoting: str | None) -> list:
    if header is None:
        header = not all(isinstance(r, int) for r in refs)
    quoting = quoting or ("none" if fmt == "tsv" else "minimal")
    if quoting not in _QUOTING:
        raise ValueError(f"quoting must be one of {tuple(_QUOTING)}, got {quoting!r}")
    # surrogateescape keeps going past bad bytes; RowParser rejects the affected rows by line.
    text = data.decode("utf-8-sig", errors="surrogateescape")
    reader = csv.reader(io.StringIO(text, newline=""), delimiter="\t" if fmt == "tsv" else ",",
                        quoting=_QUOTING[quoting])
    indices = None if header else _index_refs(parser.path, refs)
    rows, line_no = [], 0
    while True:
        start = line_no + 1
        try:
            fields = next(reader)
        except StopIteration:
            break
        except csv.Error as err:
            raise BadRowError(parser.path, reader.line_num, f"unreadable {fmt} row: {err}") from None
        line_no = reader.line_num
        if not any(f.strip() for f in fields):
            continue
        if indices is None:
            indices = _header_refs(parser.path, start, refs, fields)
            continue
        if max(indices) >= len(fields):
            need = [r for r, i in zip(refs, indices) if i >= len(fields)]
            parser.reject(start, f"missing column(s) {need}: row has {len(fields)} field(s)")
            continue
        values = [fields[i] for i in indices]
        parsed = parser.parse_columns(start, values)
        if parsed is not None:
            rows.append(parsed)
    return rows


def _index_refs(path: str, refs: list) -> list[int]:
    bad = [r for r in refs if not isinstance(r, int) or r < 0]
    if bad:
        raise ValueError(f"{path}: without a header, columns must be 0-based indices; got {bad}")
    return list(refs)


def _header_refs(path: str, line: int, refs: list, fields: list[str]) -> list[int]:
    names = [f.strip() for f in fields]
    indices = []
    for ref in refs:
        if isinstance(ref, int):
            indices.append(ref)
        elif ref in names:
            indices.append(names.index(ref))
        else:
            raise ValueError(f"{path}:{line}: column {ref!r} is not in the header {names}")
    return indices


def read_stsb_split(path: str | os.PathLike, *, normalize_scores: bool = True,
                    on_bad_row: str = "error") -> PairDataset:
    """One STS benchmark csv (tab-separated, no header, score in column 4, sentences 5 and 6).

    Why a helper: the file format is odd (".csv" but tab-separated, literal quotes, some
    rows carry two extra source columns), and STS-b is the quickstart dataset.
    `normalize_scores=True` gives labels in [0, 1] (score / 5) for CoSENT / cosine losses.
    """
    return read_pairs(path, format="tsv", header=False, quoting="none",
                      columns={"sentence1": 5, "sentence2": 6, "score": 4},
                      score_range=(0.0, 5.0), normalize_scores=normalize_scores,
                      on_bad_row=on_bad_row)
