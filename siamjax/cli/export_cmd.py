"""`siamjax export --workdir runs/x --output dir [--step N]`: a run -> sentence-transformers folder.

Takes the best checkpoint by the run's `checkpoint.best_metric` (the latest if no checkpoint
was evaluated), verifies it, and writes config.json, model.safetensors (HF names), the
tokenizer, modules.json and the pooling config, loadable by `SentenceTransformer(dir)` and by
`siamjax.SentenceEncoder.from_pretrained(dir)`.
"""
from __future__ import annotations

import sys


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
    parser.set_defaults(func=handle)


def handle(args, rest: list[str]) -> int:
    """Restores the chosen checkpoint and saves the encoder; returns the exit code."""
    del rest
    from siamjax import train

    try:
        encoder, step = train.load_trained_encoder(args.workdir, args.step)
    except FileNotFoundError as err:
        print(f"siamjax export: {err}", file=sys.stderr)
        return 1
    path = encoder.save(args.output)
    print(f"siamjax export: wrote step {step} of {args.workdir} to {path}")
    return 0
