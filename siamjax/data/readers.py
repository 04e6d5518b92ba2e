"""Data files -> validated datasets, through a declared column mapping: the one reader that
training, every evaluator and `siamjax encode`/`search` use.

The mapping names the role of each file column: text sides in order (e.g. "anchor",
"positive", "negative" or "sentence1", "sentence2") plus at most one label role — "score"
(float, optionally range-checked and normalised to [0, 1]), "label" (int class) or
"nli_label" (entailment / neutral / contradiction). Columns are named by header name (csv/tsv
with a header, jsonl keys) or 0-based index (csv/tsv without a header).

Besides the plain formats (`siamjax.data.files`), two layouts are known by name: "stsb" (the STS
benchmark's tab-separated files: no header, score in column 4, sentences in 5 and 6, scores
0-5) and "sick" (SICK.txt: tab-separated with a header). `format="auto"` picks one from the
suffix and the first line, so the same file reads the same way in every verb.
"""
from __future__ import annotations

import dataclasses
import os
import pathlib
from collections.abc import Mapping

from siamjax.data.files import FORMATS, read_lines, suffix_format, table_rows, utf8_error
from siamjax.data.records import BadRowError, DataError, PairDataset, RowParser, split_roles


@dataclasses.dataclass(frozen=True)
class Layout:
    """A named file layout: how to read it and what its columns are."""

    format: str
    header: bool
    quoting: str
    columns: dict
    score_range: tuple[float, float] | None = None


LAYOUTS = {
    "stsb": Layout("tsv", False, "none", {"sentence1": 5, "sentence2": 6, "score": 4}, (0.0, 5.0)),
    "sick": Layout("tsv", True, "none", {"sentence1": "sentence_A", "sentence2": "sentence_B",
                                         "score": "relatedness_score"}, (1.0, 5.0)),
}
# What `read_pairs(format=...)` takes: a table format or a named layout ("txt" holds no columns).
PAIR_FORMATS = ("auto",) + tuple(f for f in FORMATS if f != "txt") + tuple(LAYOUTS)
# Default role -> column of the evaluation file kinds (csv/tsv headers, jsonl keys).
SCORED_PAIR_COLUMNS = {"sentence1": "sentence1", "sentence2": "sentence2", "score": "score"}
LABELLED_PAIR_COLUMNS = {"sentence1": "sentence1", "sentence2": "sentence2", "label": "label"}
TRIPLET_COLUMNS = {"anchor": "anchor", "positive": "positive", "negative": "negative"}
STS_SCORE_RANGE = (0.0, 5.0)  # the default range of STS scores in csv/tsv/jsonl evaluation files


def detect_format(path: str | os.PathLike) -> str:
    """The format of a file from its suffix and first line (STS-b files end in .csv but are TSV).

    A suffix that names no known format (".parquet", ".dat") is an error rather than a guess from
    the first line: a jsonl line holds commas too, and a wrong guess reads as missing columns."""
    fmt = suffix_format(path)
    if fmt == "jsonl":
        return fmt
    suffixes = [x for x in pathlib.Path(path).suffixes if x.lower() != ".gz"]
    if fmt is None and suffixes:
        raise DataError(f"{path}: cannot tell the format from the unknown suffix {suffixes[-1]!r}; give it "
                        f"(one of {', '.join(PAIR_FORMATS[1:])}: data.*.format in a config, --format in eval)")
    lines = read_lines(path)
    first = next((line for _, line in lines if line.strip()), None)
    if first is None:
        raise DataError(f"{path}: file is empty")
    if utf8_error(first):
        raise DataError(f"{path}:1: {utf8_error(first)}")
    fields = first.split("\t")
    if "sentence_A" in fields and "sentence_B" in fields:
        return "sick"
    if len(fields) >= 7 and _is_number(fields[4]):
        return "stsb"
    if fmt is not None:
        return fmt
    if "\t" in first and "," not in first:
        return "tsv"
    if "," in first:
        return "csv"
    raise DataError(f"{path}: cannot tell the format from the suffix or the first line; "
                    f"give it (one of {PAIR_FORMATS[1:]})")


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def read_pairs(
    path: str | os.PathLike,
    *,
    columns: Mapping[str, str | int] | None = None,
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
    `format` None or "auto" detects it (`detect_format`); a named layout ("stsb", "sick")
    supplies its own reading options, columns and score range, which explicit arguments
    override. `header=None` means "has a header unless every column is given by index";
    `quoting` defaults to "none" for tsv (quotes are literal) and "minimal" for csv.
    `normalize_scores=True` maps `score_range` linearly to [0, 1] (STS-b: (0, 5) -> score/5).
    Malformed rows raise `BadRowError` naming file and line, or are skipped and counted with
    `on_bad_row="skip"` (see `PairDataset.bad_rows`).
    """
    fmt = detect_format(path) if format in (None, "", "auto") else format
    if fmt not in PAIR_FORMATS:
        raise DataError(f"{path}: format must be one of {PAIR_FORMATS}, got {fmt!r}")
    layout = LAYOUTS.get(fmt)
    if layout is not None:
        fmt = layout.format
        header = layout.header if header is None else header
        quoting = quoting or layout.quoting
        columns = dict(layout.columns) if columns is None else columns
        score_range = layout.score_range if score_range is None else score_range
    if not columns:
        raise DataError(f"{path}: no column mapping given (role -> column)")
    sides, label_role = split_roles(columns)
    roles = list(sides) + ([label_role] if label_role else [])
    refs = [columns[r] for r in roles]
    if header is None:
        header = fmt != "jsonl" and not all(isinstance(r, int) for r in refs)
    parser = RowParser(str(path), sides, label_role, score_range, normalize_scores, num_classes, on_bad_row)
    names, records = table_rows(path, fmt, header=header, quoting=quoting, reject=parser.reject)
    _check_refs(path, fmt, header, names, roles, refs)
    rows = []
    for line_no, record in records:
        values, missing = _select(record, refs)
        if missing:
            n = len(record)
            parser.reject(line_no, f"no column {', '.join(repr(m) for m in missing)} for "
                          f"{', '.join(roles[refs.index(m)] for m in missing)}"
                          + (f": the row has {n} field(s)" if isinstance(record, list) else ""))
            continue
        parsed = parser.parse_columns(line_no, values)
        if parsed is not None:
            rows.append(parsed)
    return parser.finish(name or pathlib.Path(path).name, rows)


def _check_refs(path, fmt: str, header: bool, names: list[str] | None, roles: list[str], refs: list) -> None:
    """Columns must be names (jsonl, csv/tsv with a header) or 0-based indices (without one)."""
    if fmt == "jsonl" or header:
        bad = [r for r in refs if not isinstance(r, str)]
        if bad:
            raise DataError(f"{path}: columns must be {'key' if fmt == 'jsonl' else 'header'} names, got {bad}")
        if names is not None:
            for role, ref in zip(roles, refs):
                if ref not in names:
                    raise DataError(f"{path}:1: no column {ref!r} for {role} (columns: {', '.join(names)})")
        return
    bad = [r for r in refs if not isinstance(r, int) or isinstance(r, bool) or r < 0]
    if bad:
        raise DataError(f"{path}: without a header, columns must be 0-based indices; got {bad}")


def _select(record, refs: list) -> tuple[list, list]:
    """(values of `refs` in `record`, the refs it lacks)."""
    if isinstance(record, dict):
        missing = [r for r in refs if r not in record]
    else:
        missing = [r for r in refs if r >= len(record)]
    return ([] if missing else [record[r] for r in refs]), missing


def _eval_columns(path, fmt: str, defaults: dict, columns: Mapping | None) -> dict | None:
    """An evaluation file's role -> column mapping: the layout's own, or defaults + overrides."""
    if fmt not in LAYOUTS:
        return {**defaults, **(columns or {})}
    if columns:
        raise DataError(f"{path}: {fmt} files have fixed columns; `columns` applies to csv/tsv/jsonl")
    if set(LAYOUTS[fmt].columns) != set(defaults):
        raise DataError(f"{path}: a {fmt} file has no {', '.join(defaults)} columns")
    return None


def read_scored_pairs(path, *, format: str = "auto", columns: Mapping | None = None,  # noqa: A002
                      score_range: tuple[float, float] | None = None) -> PairDataset:
    """Sentence pairs with a graded score (STS): STS-b, SICK, or csv/tsv/jsonl with sentence1,
    sentence2 and score columns (other names via `columns`, e.g. {"score": "label"}).

    Scores are range-checked as in training, so a typo such as 7.5 in a 0-5 file is an error
    naming its line: STS-b and SICK by their layout, other files by `score_range` (default
    `STS_SCORE_RANGE`, the STS convention 0-5, which 0-1 scores also fit)."""
    fmt = detect_format(path) if format == "auto" else format
    if score_range is None and fmt not in LAYOUTS:
        score_range = STS_SCORE_RANGE
    return read_pairs(path, format=fmt, columns=_eval_columns(path, fmt, SCORED_PAIR_COLUMNS, columns),
                      score_range=score_range)


def read_labelled_pairs(path, *, format: str = "auto", columns: Mapping | None = None) -> PairDataset:  # noqa: A002
    """Pairs with 0/1 labels (duplicate detection) from csv/tsv/jsonl (sentence1, sentence2, label)."""
    fmt = detect_format(path) if format == "auto" else format
    return read_pairs(path, format=fmt, num_classes=2,
                      columns=_eval_columns(path, fmt, LABELLED_PAIR_COLUMNS, columns))


def read_triplets(path, *, format: str = "auto", columns: Mapping | None = None) -> PairDataset:  # noqa: A002
    """(anchor, positive, negative) rows from csv/tsv/jsonl."""
    fmt = detect_format(path) if format == "auto" else format
    return read_pairs(path, format=fmt, columns=_eval_columns(path, fmt, TRIPLET_COLUMNS, columns))


def read_stsb_split(path: str | os.PathLike, *, normalize_scores: bool = True,
                    on_bad_row: str = "error") -> PairDataset:
    """One STS benchmark split file; `normalize_scores=True` gives labels in [0, 1] (score / 5)
    for CoSENT / cosine losses."""
    return read_pairs(path, format="stsb", normalize_scores=normalize_scores, on_bad_row=on_bad_row)


def read_texts(path: str | os.PathLike) -> tuple[list[str], list[str]]:
    """(ids, texts) of a text file: .txt (one text per line; id = line number) or .jsonl with a
    "text" field (id from "_id"/"id", else the line number; a "title" is prepended, as in BEIR
    corpora). Every line must hold a text: a blank or null one is an error naming its line."""
    lines, fmt = read_lines(path), suffix_format(path)
    if fmt not in ("txt", "jsonl"):
        raise DataError(f"{path}: text files must end in .txt (one text per line) or .jsonl (a \"text\" field)")
    ids, texts = [], []
    _, rows = table_rows(path, fmt)
    last = max((n for n, line in lines if line.strip()), default=0)
    for line_no, row in rows:
        if fmt == "txt":
            if line_no > last:
                break  # blank lines after the last text are the file's end, not empty texts
            text, key = _line_text(path, line_no, row), str(line_no)
        else:
            text, key = _record_text(path, line_no, row), str(row.get("_id", row.get("id", line_no)))
        ids.append(key)
        texts.append(text)
    return ids, texts


def _line_text(path, line_no: int, line: str) -> str:
    reason = utf8_error(line) or (None if line.strip() else "empty line (one text per line expected)")
    if reason:
        raise BadRowError(str(path), line_no, reason)
    return line


def _record_text(path, line_no: int, row: dict) -> str:
    if not isinstance(row.get("text"), str) or not row["text"].strip():
        raise BadRowError(str(path), line_no, "expected an object with a non-empty string \"text\" field")
    title = row.get("title")
    return f"{title} {row['text']}".strip() if title else row["text"]
