"""The `siamjax` command: train | export | eval | encode | search.

Each verb lives in its own module under `siamjax/cli/` and registers an argparse subparser
through `add_parser(subparsers)`; its handler is stored as the `func` default. Only the CLI and
`siamjax/train.py` read configs; library code takes typed arguments.
"""
from __future__ import annotations

import argparse
import importlib
import sys

# verb module -> imported lazily so `siamjax --help` does not pay for jax/torch imports it skips.
_VERB_MODULES = ("train_cmd", "export_cmd", "eval_cmd", "encode_cmd", "search_cmd")


def build_parser() -> argparse.ArgumentParser:
    """The full parser with every verb whose module is present."""
    parser = argparse.ArgumentParser(
        prog="siamjax",
        description="Train, evaluate and serve siamese sentence-embedding models with JAX.",
    )
    subparsers = parser.add_subparsers(dest="verb", metavar="VERB")
    subparsers.required = True
    for name in _VERB_MODULES:
        try:
            module = importlib.import_module(f"siamjax.cli.{name}")
        except ModuleNotFoundError as err:
            if err.name == f"siamjax.cli.{name}":
                continue
            raise
        module.add_parser(subparsers)
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
