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

from siamjax.cli.encode_cmd import PRECISIONS, InputError, _load_npy, fail, load_encoder, read_texts

TEXT_WIDTH = 80


def add_parser(subparsers) -> None:
    """Register `siamjax search`."""
    p = subparsers.add_parser(
        "search", help="semantic search of queries over a corpus",
        description="Find the top-k corpus texts for each query by embedding similarity "
                    "(exact search sharded over all devices).",
    )
    p.add_argument("--model", required=True, help="sentence-transformers / siamjax model folder")
    p.add_argument("--corpus", required=True, help=".txt (one text per line) or .jsonl with \"text\" (and \"_id\")")
    q = p.add_mutually_exclusive_group(required=True)
    q.add_argument("--queries", help="queries file, same formats as --corpus")
    q.add_argument("--query", action="append", help="a query text (repeat for several)")
    p.add_argument("--top-k", type=int, default=10, help="results per query (default 10)")
    p.add_argument("--score", choices=("cosine", "dot"), default="cosine", help="similarity (default cosine)")
    p.add_argument("--corpus-embeddings", help=".npy float embeddings of the corpus (skips encoding it)")
    p.add_argument("--precision", choices=PRECISIONS, default="float32",
                   help="search quantised corpus codes (binary: Hamming), then re-score with float embeddings")
    p.add_argument("--rescore-multiplier", type=int, default=4,
                   help="candidates per result re-scored in quantised search (default 4)")
    p.add_argument("--batch-size", type=int, default=64, help="texts per forward pass (default 64)")
    p.add_argument("--max-seq-length", type=int, help="truncate inputs to this many tokens")
    p.add_argument("--output", help="also write the hits to this .json file")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def _search(args, query_emb: np.ndarray, corpus_emb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from siamjax import quantization, search

    if args.precision == "float32":
        return search.semantic_search(query_emb, corpus_emb, args.top_k, score=args.score,
                                      show_progress=not args.quiet)
    if args.score == "cosine":  # quantised search ranks by dot products: normalise first
        norm = lambda x: x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)  # noqa: E731
        query_emb, corpus_emb = norm(query_emb), norm(np.asarray(corpus_emb, np.float32))
    ranges = quantization.calibration_ranges(corpus_emb) if args.precision in ("int8", "uint8") else None
    codes = quantization.quantize_embeddings(corpus_emb, args.precision, ranges=ranges)
    return quantization.quantized_search(
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


def run(args: argparse.Namespace, rest: list[str]) -> int:
    """Handler of `siamjax search`."""
    try:
        if args.top_k < 1:
            raise InputError(f"--top-k must be >= 1, got {args.top_k}")
        if args.batch_size < 1 or args.rescore_multiplier < 1:
            raise InputError("--batch-size and --rescore-multiplier must be >= 1")
        if args.output and not pathlib.Path(args.output).parent.is_dir():
            raise InputError(f"--output directory {pathlib.Path(args.output).parent} does not exist")
        ids, texts = read_texts(args.corpus)
        if args.queries:
            _, queries = read_texts(args.queries)
        else:
            queries = args.query
            if any(not q.strip() for q in queries):
                raise InputError("--query must not be empty")
        corpus_emb = None
        if args.corpus_embeddings:
            corpus_emb = _load_npy(args.corpus_embeddings, "--corpus-embeddings")
            if corpus_emb.ndim != 2 or corpus_emb.shape[0] != len(texts):
                raise InputError(f"{args.corpus_embeddings}: shape {corpus_emb.shape} does not match the "
                                 f"{len(texts)} texts of {args.corpus}")
            if not np.issubdtype(corpus_emb.dtype, np.floating):
                raise InputError(f"{args.corpus_embeddings}: expected float embeddings, got {corpus_emb.dtype}")
        encoder = load_encoder(args.model, args.max_seq_length)
        progress = not args.quiet
        if corpus_emb is None:
            corpus_emb = encoder.encode(texts, batch_size=args.batch_size, show_progress=progress)
        query_emb = encoder.encode(queries, batch_size=args.batch_size, show_progress=progress and len(queries) > 1000)
        if query_emb.shape[1] != corpus_emb.shape[1]:
            raise InputError(f"query embeddings have dimension {query_emb.shape[1]} but corpus embeddings "
                             f"{corpus_emb.shape[1]}: were they made by another model?")
        scores, indices = _search(args, query_emb, corpus_emb)
    except (InputError, ValueError) as err:
        return fail("search", err)
    print(format_hits(queries, ids, texts, scores, indices))
    if args.output:
        hits = [{"query": q, "hits": [{"id": ids[i], "score": float(s), "text": texts[i]} for s, i in zip(rs, ri)]}
                for q, rs, ri in zip(queries, scores, indices)]
        pathlib.Path(args.output).write_text(json.dumps(hits, indent=2, ensure_ascii=False) + "\n")
    return 0
