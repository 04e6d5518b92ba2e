"""The flags every verb that embeds texts shares (--model, --batch-size, --max-seq-length,
--quiet, --no-verify-weights), and the encoder they describe."""
from __future__ import annotations

import argparse
import pathlib
from collections.abc import Callable

import numpy as np

from siamjax.cli.errors import InputError
from siamjax.encoder import SentenceEncoder
from siamjax.encoder.verify import ModelFolderError
from siamjax.train.workdir import check_writable


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
    """Registers --model, --batch-size, --max-seq-length, --quiet and --no-verify-weights."""
    parser.add_argument("--model", required=True, help="sentence-transformers / siamjax model folder")
    parser.add_argument("--batch-size", type=positive_int, default=64, help="texts per forward pass (default 64)")
    parser.add_argument("--max-seq-length", type=positive_int, help="truncate inputs to this many tokens")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--no-verify-weights", dest="verify_weights", action="store_false",
                        help="skip the check that every weight is finite (saves a pass over huge models)")


def load_encoder(args: argparse.Namespace) -> SentenceEncoder:
    """The model of `--model` (with `--max-seq-length`); load errors name the folder."""
    try:
        return SentenceEncoder.from_pretrained(args.model, max_seq_length=args.max_seq_length,
                                               verify_weights=args.verify_weights)
    except ModelFolderError:
        raise  # names the damaged file already
    except (OSError, ValueError, KeyError) as err:
        raise ValueError(f"cannot load model {args.model}: {err}") from err


class _VerbEncoder:
    """The encoder's encode / encode_query / encode_document with the verb's batch size and
    progress bar (evaluators pick the one they need: retrieval encodes queries and documents)."""

    def __init__(self, encoder: SentenceEncoder, args: argparse.Namespace):
        self._encoder, self._kwargs = encoder, dict(batch_size=args.batch_size, show_progress=not args.quiet)

    def encode(self, texts: list[str]) -> np.ndarray:
        return self._encoder.encode(texts, **self._kwargs)

    def encode_query(self, texts: list[str]) -> np.ndarray:
        return self._encoder.encode_query(texts, **self._kwargs)

    def encode_document(self, texts: list[str]) -> np.ndarray:
        return self._encoder.encode_document(texts, **self._kwargs)

    __call__ = encode


def embed_texts(encoder: SentenceEncoder, args: argparse.Namespace) -> Callable[[list[str]], np.ndarray]:
    """texts -> float32 embeddings with the verb's batch size and progress bar (also with
    `.encode_query` / `.encode_document`)."""
    return _VerbEncoder(encoder, args)


def check_output_file(path: str | None, flag: str) -> None:
    """An output file's folder must exist (exit 2) and be writable (exit 3), checked before the
    work so a long run never ends in an unwritable destination."""
    if path is None:
        return
    parent = pathlib.Path(path).absolute().parent
    if not parent.is_dir():
        raise InputError(f"{flag} directory {parent} does not exist")
    check_writable(parent, f"{flag} file")
