"""`siamjax search --model DIR --corpus FILE (--queries FILE | --query TEXT ...) --top-k 10`.

Embeds the corpus (or loads `--corpus-embeddings`), runs the sharded exact search (or a search
over quantised codes with float re-scoring) and prints, per query, a table of rank, score, id and
text; `--output FILE.json` also writes the hits.
"""
from __future__ import annotations

import argparse
import json
import pathlib

import numpy as np

from siamjax import quantization
from siamjax.cli.encode_cmd import load_npy
from siamjax.cli.errors import EXIT_OK, InputError, run_verb
from siamjax.cli.model_args import add_model_args, check_output_file, load_encoder, positive_int
from siamjax.data import read_texts
from siamjax.quantization import PRECISIONS
from siamjax.search import quantized_search, semantic_search
from siamjax.similarity import l2_normalize

TEXT_WIDTH = 80


def add_parser(subparsers) -> None:
    """Register `siamjax search`."""
    p = subparsers.add_parser(
        "search", help="semantic search of queries over a corpus",
        description="Find the top-k corpus texts for each query by embedding similarity "
                    "(exact search sharded over all devices).",
    )
    add_model_args(p)
    p.add_argument("--corpus", required=True, help=".txt (one text per line) or .jsonl with \"text\" (and \"_id\")")
    q = p.add_mutually_exclusive_group(required=True)
    q.add_argument("--queries", help="queries file, same formats as --corpus")
    q.add_argument("--query", action="append", help="a query text (repeat for several)")
    p.add_argument("--top-k", type=positive_int, default=10, help="results per query (default 10)")
    p.add_argument("--score", choices=("cosine", "dot"), default="cosine", help="similarity (default cosine)")
    p.add_argument("--corpus-embeddings", help=".npy float embeddings of the corpus (skips encoding it)")
    p.add_argument("--precision", choices=PRECISIONS, default="float32",
                   help="search quantised corpus codes (binary: Hamming), then re-score with float embeddings")
    p.add_argument("--rescore-multiplier", type=positive_int, default=4,
                   help="candidates per result re-scored in quantised search (default 4)")
    p.add_argument("--output", help="also write the hits to this .json file")
    p.set_defaults(func=run)


def _search(args, query_emb: np.ndarray, corpus_emb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if args.precision == "float32":
        return semantic_search(query_emb, corpus_emb, args.top_k, score=args.score, show_progress=not args.quiet)
    if args.score == "cosine":  # quantised search ranks by dot products: normalise first
        query_emb, corpus_emb = l2_normalize(query_emb), l2_normalize(np.asarray(corpus_emb, np.float32))
    ranges = quantization.calibration_ranges(corpus_emb) if args.precision in ("int8", "uint8") else None
    codes = quantization.quantize_embeddings(corpus_emb, args.precision, ranges=ranges)
    return quantized_search(
        query_emb, codes, args.top_k, precision=args.precision, ranges=ranges,
        rescore_multiplier=args.rescore_multiplier, rescore_corpus=corpus_emb, show_progress=not args.quiet,
    )


def _clip(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= TEXT_WIDTH else text[:TEXT_WIDTH - 3] + "..."


def format_hits(queries: list[str], ids: list[str], texts: list[str], scores, indices) -> str:
    """One block per query: its text, then rank / score / id / text of each hit."""
    id_width = max(2, *(len(ids[i]) for i in np.asarray(indices).reshape(-1)))
    blocks = []
    for qn, (query, row_s, row_i) in enumerate(zip(queries, scores, indices), start=1):
        lines = [f"query {qn}: {_clip(query)}", f"  {'rank':>4}  {'score':>7}  {'id':<{id_width}}  text"]
        for rank, (s, i) in enumerate(zip(row_s, row_i), start=1):
            lines.append(f"  {rank:>4}  {s:>7.4f}  {ids[i]:<{id_width}}  {_clip(texts[i])}")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def _read_inputs(args) -> tuple[list[str], list[str], list[str], np.ndarray | None]:
    """(corpus ids, corpus texts, queries, corpus embeddings or None), all checked."""
    check_output_file(args.output, "--output")
    ids, texts = read_texts(args.corpus)
    queries = read_texts(args.queries)[1] if args.queries else args.query
    if any(not q.strip() for q in queries):
        raise InputError("--query must not be empty")
    corpus_emb = None
    if args.corpus_embeddings:
        corpus_emb = load_npy(args.corpus_embeddings, "--corpus-embeddings")
        if corpus_emb.ndim != 2 or corpus_emb.shape[0] != len(texts):
            raise InputError(f"{args.corpus_embeddings}: shape {corpus_emb.shape} does not match the "
                             f"{len(texts)} texts of {args.corpus}")
        if not np.issubdtype(corpus_emb.dtype, np.floating):
            raise InputError(f"{args.corpus_embeddings}: expected float embeddings, got {corpus_emb.dtype}")
        bad = first_non_finite_row(corpus_emb)
        if bad is not None:
            raise InputError(f"{args.corpus_embeddings}: row {bad} (text {ids[bad]} of {args.corpus}) is not "
                             "finite (NaN/Inf would rank first); re-encode the corpus")
    return ids, texts, queries, corpus_emb


def first_non_finite_row(emb: np.ndarray, chunk: int = 65536) -> int | None:
    """Index of the first row of `emb` holding NaN/Inf (read in chunks: `emb` may be memory-mapped)."""
    for start in range(0, emb.shape[0], chunk):
        finite = np.isfinite(emb[start:start + chunk]).all(axis=1)
        if not finite.all():
            return start + int(np.argmin(finite))
    return None


def _run_search(args: argparse.Namespace) -> int:
    ids, texts, queries, corpus_emb = _read_inputs(args)
    encoder = load_encoder(args)
    progress = not args.quiet
    if corpus_emb is None:
        corpus_emb = encoder.encode_document(texts, batch_size=args.batch_size, show_progress=progress)
    query_emb = encoder.encode_query(queries, batch_size=args.batch_size,
                                     show_progress=progress and len(queries) > 1000)
    if query_emb.shape[1] != corpus_emb.shape[1]:
        raise InputError(f"query embeddings have dimension {query_emb.shape[1]} but corpus embeddings "
                         f"{corpus_emb.shape[1]}: were they made by another model?")
    scores, indices = _search(args, query_emb, corpus_emb)
    print(format_hits(queries, ids, texts, scores, indices))
    if args.output:
        hits = [{"query": q, "hits": [{"id": ids[i], "score": float(s), "text": texts[i]} for s, i in zip(rs, ri)]}
                for q, rs, ri in zip(queries, scores, indices)]
        pathlib.Path(args.output).write_text(json.dumps(hits, indent=2, ensure_ascii=False) + "\n")
    return EXIT_OK


def run(args: argparse.Namespace, rest: list[str]) -> int:
    """Handler of `siamjax search`."""
    return run_verb("search", lambda: _run_search(args), debug=args.debug)
