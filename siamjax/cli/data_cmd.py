"""`siamjax data prepare --input FILE|GLOB --format jsonl|csv|tsv|parquet --output DIR --shards N
--column ROLE=COLUMN ...`.

Streams the input through the training row reader into array_record shards plus an index.json
(`siamjax.data.prepare_shards`); train on the folder with `data.train.shards=DIR` (or a
`data.datasets.<name>.shards`). A bad row stops with `FILE:LINE: reason` (exit 2), or is
skipped and counted with `--on-bad-row skip`.
"""
from __future__ import annotations

import argparse

from siamjax.cli.errors import EXIT_OK, InputError, run_verb
from siamjax.cli.model_args import positive_int
from siamjax.data import BadRowError, prepare_shards
from siamjax.data.readers import PAIR_FORMATS
from siamjax.data.records import ON_BAD_ROW_CHOICES


def add_parser(subparsers) -> None:
    """Register `siamjax data` and its `prepare` action."""
    p = subparsers.add_parser("data", help="prepare training data (array_record shards)",
                              description="Data tools. `prepare` turns big pair files into shards "
                                          "that training reads lazily, with bounded memory.")
    actions = p.add_subparsers(dest="action", metavar="ACTION")
    actions.required = True
    prep = actions.add_parser(
        "prepare", help="write array_record shards + index.json from jsonl/csv/tsv/parquet files",
        description="Stream FILE (or every file a glob matches, in sorted order) into N array_record "
                    "shards and an index.json (rows, columns, source sha256), never holding the input whole.")
    prep.add_argument("--input", required=True, action="append",
                      help="input file or glob (quote it); repeat for several")
    prep.add_argument("--format", choices=[f for f in PAIR_FORMATS if f != "auto"], default=None,
                      help="file format (default: from the suffix and first line)")
    prep.add_argument("--output", required=True, help="folder to create (must not exist or be empty)")
    prep.add_argument("--shards", type=positive_int, default=8, help="number of shard files (default 8)")
    prep.add_argument("--column", action="append", default=[], metavar="ROLE=COLUMN",
                      help="role -> column, in side order (e.g. anchor=question positive=answer, then "
                           "score=label); a 0-based index with --no-header; default: the layout's own")
    prep.add_argument("--no-header", action="store_true", help="csv/tsv without a header row")
    prep.add_argument("--quoting", choices=("none", "minimal"), help="csv/tsv quoting (default by format)")
    prep.add_argument("--score-range", metavar="LOW,HIGH", help="allowed range of score labels, e.g. 0,5")
    prep.add_argument("--normalize-scores", action="store_true", help="map --score-range linearly to [0, 1]")
    prep.add_argument("--on-bad-row", choices=ON_BAD_ROW_CHOICES, default="error",
                      help="error (default): stop at FILE:LINE; skip: count and skip malformed rows")
    prep.add_argument("--quiet", action="store_true", help="no progress bar")
    prep.set_defaults(func=run)


def parse_columns(specs: list[str], header: bool) -> dict[str, str | int] | None:
    """`ROLE=COLUMN` flags -> {role: column} in order; a column is an int index without a header."""
    columns: dict[str, str | int] = {}
    for spec in specs:
        role, sep, column = spec.partition("=")
        if not sep or not role.strip() or not column.strip():
            raise InputError(f"--column {spec!r}: expected ROLE=COLUMN, e.g. anchor=question")
        if role in columns:
            raise InputError(f"--column: role {role!r} given twice")
        columns[role.strip()] = int(column) if not header and column.strip().isdigit() else column.strip()
    return columns or None


def _score_range(text: str | None) -> tuple[float, float] | None:
    if text is None:
        return None
    try:
        low, high = (float(x) for x in text.split(","))
    except ValueError:
        raise InputError(f"--score-range {text!r}: expected LOW,HIGH, e.g. 0,5") from None
    return low, high


def _prepare(args: argparse.Namespace) -> int:
    header = False if args.no_header else None
    columns = parse_columns(args.column, header is not False)
    if columns is None and args.format not in ("stsb", "sick"):
        raise InputError("give the columns with --column ROLE=COLUMN (e.g. --column anchor=question "
                         "--column positive=answer)")

    def announce(path):
        if not args.quiet:
            print(f"reading {path}", flush=True)

    index = prepare_shards(args.input, args.output, columns=columns, num_shards=args.shards,
                           format=args.format, header=header, quoting=args.quoting,
                           score_range=_score_range(args.score_range), normalize_scores=args.normalize_scores,
                           on_bad_row=args.on_bad_row, show_progress=not args.quiet, on_file=announce)
    skipped = f", skipped {index['bad_rows']} bad row(s)" if index["bad_rows"] else ""
    print(f"wrote {index['rows']} rows ({', '.join(index['sides'])}"
          f"{'; ' + index['label_kind'] + ' labels' if index['label_kind'] else ''}) in "
          f"{index['num_shards']} shards to {args.output}{skipped}")
    return EXIT_OK


def run(args: argparse.Namespace, rest: list[str]) -> int:
    """Handler of `siamjax data prepare`."""
    hints = {BadRowError: "pass --on-bad-row skip to skip and count such rows"}
    return run_verb("data prepare", lambda: _prepare(args), hints=hints, debug=args.debug)
