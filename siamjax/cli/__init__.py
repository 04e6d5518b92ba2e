"""The `siamjax` command: train | plan | export | eval | encode | search | data prepare | mine.

Each verb lives in its own module under `siamjax/cli/`, registers an argparse subparser through
`add_parser(subparsers)` and stores its handler `run(args, rest) -> exit code` as the `func`
default. Verbs only parse flags, call the library and report errors through
`siamjax.cli.errors`, the one place that maps exceptions to exit codes. Nothing outside
`siamjax/cli` imports this package.
"""
from __future__ import annotations

import argparse
import sys

from siamjax.cli import data_cmd, encode_cmd, eval_cmd, export_cmd, mine_cmd, plan_cmd, search_cmd, train_cmd

_VERBS = (train_cmd, plan_cmd, export_cmd, eval_cmd, encode_cmd, search_cmd, data_cmd, mine_cmd)


def build_parser() -> argparse.ArgumentParser:
    """The full parser with every verb."""
    parser = argparse.ArgumentParser(
        prog="siamjax",
        description="Train, evaluate and serve siamese sentence-embedding models with JAX. "
                    "Exit codes: 0 done, 1 non-finite training loss, 2 bad input (config, flags, "
                    "data, model, checkpoint, workdir in use), 3 disk full / read-only / permission "
                    "denied, 70 internal error (a bug: --debug shows it), 75 preempted (rerun to resume).",
    )
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    subparsers = parser.add_subparsers(dest="verb", metavar="VERB")
    subparsers.required = True
    for verb in _VERBS:
        verb.add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `siamjax` console script; returns the process exit code."""
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if rest and not getattr(args, "accepts_overrides", False):
        parser.error(f"unrecognised arguments: {' '.join(rest)}")
    return int(args.func(args, rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
