"""`siamjax mine --model M --data PAIRS --output TRIPLETS.jsonl [options]`.

Mines hard negatives for (anchor, positive) pairs with the model itself
(`siamjax.search.mine_hard_negatives`, sentence-transformers' options and output formats),
encoding and searching over all devices, and writes the result as .jsonl or .parquet, ready for
`siamjax data prepare` or `data.train.path`.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import random

import pyarrow as pa
import pyarrow.parquet as pq

from siamjax.cli.data_cmd import parse_columns
from siamjax.cli.errors import EXIT_OK, InputError, run_verb
from siamjax.cli.model_args import add_model_args, load_encoder, positive_int
from siamjax.data import BadRowError, read_pairs, read_texts
from siamjax.data.records import ON_BAD_ROW_CHOICES
from siamjax.search.mining import FORMATS, SAMPLING_STRATEGIES, mine_hard_negatives

_OUTPUTS = (".jsonl", ".parquet")


def add_parser(subparsers) -> None:
    """Register `siamjax mine`."""
    p = subparsers.add_parser(
        "mine", help="mine hard negatives for (anchor, positive) pairs with a model",
        description="For each anchor, search the positives (and --corpus) with the model and add "
                    "hard negatives, as sentence-transformers' mine_hard_negatives does.")
    add_model_args(p)
    p.add_argument("--data", required=True, help="pairs file (jsonl/csv/tsv/parquet)")
    p.add_argument("--column", action="append", default=[], metavar="ROLE=COLUMN",
                   help="anchor then positive column (default: anchor=anchor, positive=positive); the "
                        "roles name the output columns")
    p.add_argument("--on-bad-row", choices=ON_BAD_ROW_CHOICES, default="error", help="malformed rows of --data")
    p.add_argument("--corpus", help="extra candidate negatives: .txt (one per line) or .jsonl with \"text\"")
    p.add_argument("--output", required=True, help="output file, .jsonl or .parquet")
    p.add_argument("--output-format", choices=FORMATS + ("n-tuple-scores",), default="triplet")
    p.add_argument("--output-scores", action="store_true", help="add the similarity scores")
    p.add_argument("--num-negatives", type=positive_int, default=3)
    p.add_argument("--range-min", type=int, default=0, help="skip the first N candidates")
    p.add_argument("--range-max", type=positive_int, help="consider only the first N candidates")
    p.add_argument("--max-score", type=float, help="drop candidates scoring above this")
    p.add_argument("--min-score", type=float, help="drop candidates scoring below this")
    p.add_argument("--absolute-margin", type=float, help="negative score + margin must stay below the positive's")
    p.add_argument("--relative-margin", type=float, help="negative score must stay below positive - |positive| * margin")
    p.add_argument("--sampling-strategy", choices=SAMPLING_STRATEGIES, default="top")
    p.add_argument("--include-positives", action="store_true", help="keep the positives among the candidates")
    p.add_argument("--query-prompt", help="text prepended to every anchor")
    p.add_argument("--corpus-prompt", help="text prepended to every corpus text")
    p.add_argument("--seed", type=int, default=0, help="seed of --sampling-strategy random")
    p.set_defaults(func=run)


def write_columns(columns: dict[str, list], output: pathlib.Path) -> None:
    """The mined columns as .jsonl (one object per row) or .parquet."""
    if output.suffix == ".parquet":
        pq.write_table(pa.table(columns), output)
        return
    names = list(columns)
    with output.open("w", encoding="utf-8") as f:
        for values in zip(*columns.values()):
            f.write(json.dumps(dict(zip(names, values)), ensure_ascii=False) + "\n")


def _mine(args: argparse.Namespace) -> int:
    output = pathlib.Path(args.output)
    if output.suffix not in _OUTPUTS:
        raise InputError(f"--output {output} must end in {' or '.join(_OUTPUTS)}")
    if not output.parent.is_dir():
        raise InputError(f"--output directory {output.parent} does not exist")
    columns = parse_columns(args.column, header=True) or {"anchor": "anchor", "positive": "positive"}
    if len(columns) != 2:
        raise InputError(f"--column: give exactly the anchor and the positive column, got {list(columns)}")
    pairs = read_pairs(args.data, columns=columns, on_bad_row=args.on_bad_row)
    corpus = read_texts(args.corpus)[1] if args.corpus else None
    model = load_encoder(args)
    try:
        mined = mine_hard_negatives(
            pairs, model, corpus=corpus, range_min=args.range_min, range_max=args.range_max,
            max_score=args.max_score, min_score=args.min_score, absolute_margin=args.absolute_margin,
            relative_margin=args.relative_margin, num_negatives=args.num_negatives,
            sampling_strategy=args.sampling_strategy, query_prompt=args.query_prompt,
            corpus_prompt=args.corpus_prompt, include_positives=args.include_positives,
            output_format=args.output_format, output_scores=args.output_scores, batch_size=args.batch_size,
            rng=random.Random(args.seed), show_progress=not args.quiet)
    except ValueError as err:  # an option window that leaves no candidates, a bad format
        raise InputError(str(err)) from err
    write_columns(mined, output)
    rows = len(next(iter(mined.values())))
    print(f"wrote {rows} {args.output_format} rows ({', '.join(mined)}) for {len(pairs)} pairs to {output}")
    return EXIT_OK


def run(args: argparse.Namespace, rest: list[str]) -> int:
    """Handler of `siamjax mine`."""
    hints = {BadRowError: "pass --on-bad-row skip to skip and count such rows"}
    return run_verb("mine", lambda: _mine(args), hints=hints, debug=args.debug)
