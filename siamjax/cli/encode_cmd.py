"""`siamjax encode --model DIR --input FILE.txt --output FILE.npy [--prompt-name query] [--task query]
[--truncate-dim N] [--precision int8 ...]`.

Embeds every line of a text file (or the "text" field of a .jsonl) with one of the model's
prompts (or a given one), through a Router model's route for `--task`, optionally truncated
(Matryoshka) and quantised, and saves the [N, D] array as .npy.
"""
from __future__ import annotations

import argparse
import pathlib

import numpy as np

from siamjax.cli.errors import EXIT_OK, InputError, run_verb
from siamjax.cli.model_args import add_model_args, check_output_file, load_encoder, positive_int
from siamjax.data import read_texts
from siamjax.quantization import PRECISIONS, quantize_embeddings


def load_npy(path: str, what: str) -> np.ndarray:
    """A .npy array (memory-mapped) given by the flag `what`; a bad file names the flag."""
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
    add_model_args(p)
    p.add_argument("--input", required=True, help=".txt (one text per line) or .jsonl with a \"text\" field")
    p.add_argument("--output", required=True, help="destination .npy file")
    p.add_argument("--precision", choices=PRECISIONS, default="float32",
                   help="float32 (default), int8/uint8 (per-dimension buckets), binary/ubinary (packed sign bits)")
    p.add_argument("--calibration", help=".npy float embeddings whose min/max set the int8/uint8 buckets "
                                         "(default: the encoded texts themselves)")
    p.add_argument("--normalize", action="store_true", help="L2-normalise the embeddings (after --truncate-dim)")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--prompt-name", help="the model's prompt to prepend: query, document or any name in its "
                                             "config_sentence_transformers.json (default: its default_prompt_name)")
    which.add_argument("--prompt", help="a prompt text to prepend instead, e.g. \"query: \"")
    p.add_argument("--task", help="the texts' task, as sentence-transformers' encode(task=): picks a Router model's "
                                  "route (query, document, ...; default: its default route); models without a "
                                  "Router have one path and ignore it. encode_query = --task query --prompt-name "
                                  "query")
    p.add_argument("--truncate-dim", type=positive_int, help="keep the first N dimensions (Matryoshka models; "
                                                            "default: the model's truncate_dim)")
    p.set_defaults(func=run)


def _encode(args: argparse.Namespace) -> int:
    out = pathlib.Path(args.output)
    if out.suffix != ".npy":
        raise InputError(f"--output {out} must end in .npy")
    check_output_file(args.output, "--output")
    calibration = load_npy(args.calibration, "--calibration") if args.calibration else None
    _, texts = read_texts(args.input)
    encoder = load_encoder(args)
    if args.prompt_name is not None and args.prompt_name not in encoder.prompts:
        raise InputError(f"--prompt-name {args.prompt_name!r}: the model {args.model} has the prompts "
                         f"{sorted(encoder.prompts)}")
    if encoder.is_router:
        try:
            encoder.spec.resolve(args.task)
        except ValueError as err:
            raise InputError(f"--task: {err} (model {args.model})") from None
    if args.truncate_dim is not None and args.truncate_dim > encoder.embedding_dim:
        raise InputError(f"--truncate-dim {args.truncate_dim} exceeds the model's {encoder.embedding_dim} dimensions")
    emb = encoder.encode(texts, batch_size=args.batch_size, normalize=args.normalize or None,
                         show_progress=not args.quiet, prompt_name=args.prompt_name, prompt=args.prompt,
                         truncate_dim=args.truncate_dim, route=args.task)
    emb = quantize_embeddings(emb, args.precision, calibration=calibration)
    np.save(out, emb)
    print(f"wrote {emb.shape[0]} x {emb.shape[1]} {emb.dtype} embeddings ({args.precision}) to {out}")
    return EXIT_OK


def run(args: argparse.Namespace, rest: list[str]) -> int:
    """Handler of `siamjax encode`."""
    return run_verb("encode", lambda: _encode(args), debug=args.debug)
