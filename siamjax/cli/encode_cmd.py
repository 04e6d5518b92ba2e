"""`siamjax encode --model DIR --input FILE.txt --output FILE.npy [--precision int8 ...]`.

Also home of what the eval/encode/search verbs share: loading a model folder, reading a text
file (one text per line, or jsonl with a "text" field) and reporting a bad input as one clear
line on stderr with exit code 1 (argparse's own usage errors exit with 2).
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys
from collections.abc import Callable

import numpy as np

EXIT_INPUT_ERROR = 1
PRECISIONS = ("float32", "int8", "uint8", "binary", "ubinary")


class InputError(ValueError):
    """A missing or malformed input the user must fix; printed without a traceback."""


def fail(verb: str, err: BaseException) -> int:
    """Print `siamjax VERB: error: ...` to stderr and return the input-error exit code."""
    print(f"siamjax {verb}: error: {err}", file=sys.stderr)
    return EXIT_INPUT_ERROR


def load_encoder(path: str, max_seq_length: int | None = None):
    """`SentenceEncoder.from_pretrained`, with a missing or broken folder reported as an input error."""
    import siamjax

    try:
        return siamjax.SentenceEncoder.from_pretrained(path, max_seq_length=max_seq_length)
    except (OSError, ValueError, KeyError) as err:
        raise InputError(f"cannot load model {path}: {err}") from err


def encode_fn(encoder, batch_size: int, progress: bool) -> Callable[[list[str]], np.ndarray]:
    """texts -> float32 embeddings with the CLI's batch size and progress bar."""
    return lambda texts: encoder.encode(texts, batch_size=batch_size, show_progress=progress)


def read_texts(path: str | pathlib.Path) -> tuple[list[str], list[str]]:
    """(ids, texts) from a .txt (one text per line; id = line number) or a .jsonl with "text"
    (id from "_id"/"id", else line number; a "title" is prepended as in BEIR corpora)."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    ids, texts = [], []
    try:
        lines = path.read_text(encoding="utf-8").split("\n")
    except UnicodeDecodeError as err:
        raise InputError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    while lines and not lines[-1].strip():
        lines.pop()  # trailing newline(s)
    for line_no, line in enumerate(lines, start=1):
        line = line.rstrip("\r")
        if path.suffix.lower() == ".jsonl":
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise InputError(f"{path}:{line_no}: invalid JSON ({err.msg})") from None
            if not isinstance(row, dict) or not isinstance(row.get("text"), str):
                raise InputError(f"{path}:{line_no}: expected an object with a string \"text\" field")
            text = f"{row['title']} {row['text']}".strip() if row.get("title") else row["text"]
            ids.append(str(row.get("_id", row.get("id", line_no))))
        else:
            if not line.strip():
                raise InputError(f"{path}:{line_no}: empty line (one text per line expected)")
            text = line
            ids.append(str(line_no))
        texts.append(text)
    if not texts:
        raise InputError(f"{path}: no texts")
    return ids, texts


def _load_npy(path: str, what: str) -> np.ndarray:
    p = pathlib.Path(path)
    if not p.is_file():
        raise InputError(f"{p}: no such file ({what})")
    try:
        return np.load(p, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as err:
        raise InputError(f"{p}: not a readable .npy array ({err})") from None


def add_parser(subparsers) -> None:
    """Register `siamjax encode`."""
    p = subparsers.add_parser(
        "encode", help="embed a text file into a .npy array",
        description="Embed every line of a text file (or the \"text\" field of a .jsonl) with a "
                    "sentence-embedding model and save the [N, D] array as .npy, optionally quantised.",
    )
    p.add_argument("--model", required=True, help="sentence-transformers / siamjax model folder")
    p.add_argument("--input", required=True, help=".txt (one text per line) or .jsonl with a \"text\" field")
    p.add_argument("--output", required=True, help="destination .npy file")
    p.add_argument("--batch-size", type=int, default=64, help="texts per forward pass (default 64)")
    p.add_argument("--precision", choices=PRECISIONS, default="float32",
                   help="float32 (default), int8/uint8 (per-dimension buckets), binary/ubinary (packed sign bits)")
    p.add_argument("--calibration", help=".npy float embeddings whose min/max set the int8/uint8 buckets "
                                         "(default: the encoded texts themselves)")
    p.add_argument("--normalize", action="store_true", help="L2-normalise the embeddings")
    p.add_argument("--max-seq-length", type=int, help="truncate inputs to this many tokens")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace, rest: list[str]) -> int:
    """Handler of `siamjax encode`."""
    from siamjax.quantization import quantize_embeddings

    try:
        out = pathlib.Path(args.output)
        if out.suffix != ".npy":
            raise InputError(f"--output {out} must end in .npy")
        if not out.parent.is_dir():
            raise InputError(f"--output directory {out.parent} does not exist")
        if args.batch_size < 1:
            raise InputError(f"--batch-size must be >= 1, got {args.batch_size}")
        calibration = _load_npy(args.calibration, "--calibration") if args.calibration else None
        _, texts = read_texts(args.input)
        encoder = load_encoder(args.model, args.max_seq_length)
        emb = encoder.encode(texts, batch_size=args.batch_size, normalize=args.normalize or None,
                             show_progress=not args.quiet)
        emb = quantize_embeddings(emb, args.precision, calibration=calibration)
    except (InputError, ValueError) as err:
        return fail("encode", err)
    np.save(out, emb)
    print(f"wrote {emb.shape[0]} x {emb.shape[1]} {emb.dtype} embeddings ({args.precision}) to {out}")
    return 0
