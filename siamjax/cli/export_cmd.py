"""`siamjax export --workdir runs/x --output dir [--step N] [--adapter dir]`: a run -> sentence-transformers folder.

Takes the best checkpoint by the run's `checkpoint.best_metric` (the latest if no checkpoint
was evaluated), verifies it (a corrupt one is skipped, with a warning, for the newest that
verifies, as `train` does when it resumes), and writes config.json, model.safetensors (HF names), the
tokenizer, modules.json and the pooling config, loadable by `SentenceTransformer(dir)` and by
`siamjax.SentenceEncoder.from_pretrained(dir)`. A LoRA run's adapters are merged into those
weights; `--adapter` also writes them as a PEFT folder (`adapter_config.json`,
`adapter_model.safetensors`) for `peft` or sentence-transformers' `load_adapter` on the base model.
"""
from __future__ import annotations

import argparse
import os
import pathlib

from siamjax.cli.errors import EXIT_OK, run_verb
from siamjax.cli.logs import LOG_NAME
from siamjax.train import export_run


def add_parser(subparsers) -> None:
    """Registers the `export` verb."""
    parser = subparsers.add_parser(
        "export",
        help="write a trained run's best (or last) checkpoint as a sentence-transformers folder",
        description=__doc__.split("\n\n")[0],
    )
    parser.add_argument("--workdir", required=True, help="the run folder given to `siamjax train`")
    parser.add_argument("--output", required=True, help="folder to write the model to")
    parser.add_argument("--step", type=int, default=None,
                        help="checkpoint step to export (default: best by metric, else latest)")
    parser.add_argument("--adapter", default=None,
                        help="LoRA runs: also write the adapters as a PEFT folder here (the --output model "
                             "has them merged)")
    parser.set_defaults(func=run)


def _export(args: argparse.Namespace) -> int:
    path, step = export_run(args.workdir, args.output, args.step, adapter=args.adapter)
    print(f"siamjax export: wrote step {step} of {args.workdir} to {path}"
          + (f" and its LoRA adapters to {args.adapter}" if args.adapter else ""))
    return EXIT_OK


def run(args: argparse.Namespace, rest: list[str]) -> int:
    """Handler of `siamjax export`; returns the exit code."""
    log = pathlib.Path(args.workdir) / LOG_NAME
    writable = log.parent.is_dir() and os.access(log.parent, os.W_OK)  # a read-only run folder exports too
    return run_verb("export", lambda: _export(args), debug=args.debug, log_path=log if writable else os.devnull)
