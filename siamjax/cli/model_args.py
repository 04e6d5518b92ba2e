"""The flags every verb that embeds texts shares (--model, --batch-size, --max-seq-length,
--quiet), and the encoder they describe."""
from __future__ import annotations

import argparse
from collections.abc import Callable

import numpy as np

from siamjax.encoder import SentenceEncoder


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (a bad value is a usage error, exit 2)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def add_model_args(parser: argparse.ArgumentParser) -> None:
    """Registers --model, --batch-size, --max-seq-length and --quiet."""
    parser.add_argument("--model", required=True, help="sentence-transformers / siamjax model folder")
    parser.add_argument("--batch-size", type=positive_int, default=64, help="texts per forward pass (default 64)")
    parser.add_argument("--max-seq-length", type=positive_int, help="truncate inputs to this many tokens")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def load_encoder(args: argparse.Namespace) -> SentenceEncoder:
    """The model of `--model` (with `--max-seq-length`); load errors name the folder."""
    try:
        return SentenceEncoder.from_pretrained(args.model, max_seq_length=args.max_seq_length)
    except (OSError, ValueError, KeyError) as err:
        raise ValueError(f"cannot load model {args.model}: {err}") from err


def embed_texts(encoder: SentenceEncoder, args: argparse.Namespace) -> Callable[[list[str]], np.ndarray]:
    """texts -> float32 embeddings with the verb's batch size and progress bar."""
    return lambda texts: encoder.encode(texts, batch_size=args.batch_size, show_progress=not args.quiet)
