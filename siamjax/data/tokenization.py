"""Tokenise the S sides of a batch with a HF fast tokenizer, then pad to a bucket length or pack.

Why buckets: jit compiles once per input shape, so padding every batch to its own longest
sequence would compile on nearly every step; padding to the smallest of a few fixed lengths
(32, 64, 128, ... max_seq_length) bounds the number of compilations. Packing
(`pack_sides`, `data.pack_length`) goes further: texts share fixed-length rows, so short
texts cost their own tokens only and the row count takes a few rounded values.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from siamjax.encoder import packing

KEYS = ("input_ids", "attention_mask", "token_type_ids")


def bucket_lengths(max_seq_length: int, min_length: int = 32) -> tuple[int, ...]:
    """Powers of two from `min_length` below `max_seq_length`, then `max_seq_length` itself."""
    if max_seq_length < 2:
        raise ValueError(f"max_seq_length must be >= 2 (room for [CLS] and [SEP]), "
                         f"got {max_seq_length}")
    buckets, length = [], min_length
    while length < max_seq_length:
        buckets.append(length)
        length *= 2
    return tuple(buckets) + (max_seq_length,)


def pick_bucket(length: int, buckets: Sequence[int]) -> int:
    """The smallest bucket >= length (sequences are already truncated to the largest)."""
    for bucket in buckets:
        if bucket >= length:
            return bucket
    raise ValueError(f"sequence length {length} exceeds the largest bucket {max(buckets)}")


def longest_tokenized(tokenizer, texts: Sequence[str], *, max_seq_length: int) -> int:
    """The longest token count among `texts` after truncation (0 for no texts).

    Why: on several processes every host must pad to the same bucket, so each host
    measures the rows of the global batch that other hosts tokenise.
    """
    if not texts:
        return 0
    encoded = tokenizer(list(texts), padding=False, truncation=True, max_length=max_seq_length,
                        return_attention_mask=False, return_token_type_ids=False)["input_ids"]
    return max(len(ids) for ids in encoded)


def tokenize_sides(tokenizer, sides: Sequence[Sequence[str]], *, max_seq_length: int,
                   buckets: Sequence[int] | None = None,
                   min_length: int = 0) -> dict[str, np.ndarray]:
    """Tokenise S lists of B texts into int32 arrays [S, B, L], L a bucket length.

    Why one L for all sides: the sides are stacked and encoded with one vmapped call.
    L is the smallest bucket >= the longest sequence and >= `min_length` (the longest
    sequence of the rest of the global batch, so that every process pads alike).
    Texts are truncated at `max_seq_length`; `token_type_ids` are zeros (single segments).
    """
    buckets = tuple(sorted(buckets)) if buckets else bucket_lengths(max_seq_length)
    if max(buckets) < max_seq_length:
        raise ValueError(f"largest bucket {max(buckets)} < max_seq_length {max_seq_length}")
    num_sides, batch = len(sides), len(sides[0])
    if any(len(side) != batch for side in sides):
        raise ValueError(f"all sides need the same batch size, got {[len(s) for s in sides]}")
    flat = [text for side in sides for text in side]
    encoded = tokenizer(flat, padding=False, truncation=True, max_length=max_seq_length,
                        return_attention_mask=False, return_token_type_ids=False)["input_ids"]
    longest = max(max(len(ids) for ids in encoded), min_length)
    length = pick_bucket(longest, buckets)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    input_ids = np.full((num_sides * batch, length), pad_id, dtype=np.int32)
    attention_mask = np.zeros((num_sides * batch, length), dtype=np.int32)
    for row, ids in enumerate(encoded):
        input_ids[row, : len(ids)] = ids
        attention_mask[row, : len(ids)] = 1
    shape = (num_sides, batch, length)
    return {"input_ids": input_ids.reshape(shape),
            "attention_mask": attention_mask.reshape(shape),
            "token_type_ids": np.zeros(shape, dtype=np.int32)}


def token_lengths(tokenizer, texts: Sequence[str], *, max_seq_length: int) -> list[int]:
    """Token counts of `texts` after truncation (what packing needs from other processes' rows)."""
    if not texts:
        return []
    encoded = tokenizer(list(texts), padding=False, truncation=True, max_length=max_seq_length,
                        return_attention_mask=False, return_token_type_ids=False)["input_ids"]
    return [len(ids) for ids in encoded]


def pack_sides(tokenizer, sides: Sequence[Sequence[str]], *, max_seq_length: int, row_length: int,
               num_shards: int = 1, min_rows: int = 1) -> dict[str, np.ndarray]:
    """Tokenise S lists of B texts and pack each side into rows: a packed `[S, ...]` batch.

    Returns int32 `input_ids`, `attention_mask` (segment ids), `token_type_ids` `[S, n * r, L]`
    and `text_index [S, n, B / n]` (`siamjax.encoder.packing`). Each of the `num_shards`
    contiguous shards of a side (one per batch device of this process) is packed into its own
    r rows; r is the same for every side and shard (the most any needs, at least `min_rows`,
    rounded up by `packing.round_rows`) so the sides stack and the shards split evenly.
    Why: short texts padded to a shared length waste most of the encoder's work.
    """
    if row_length < max_seq_length:
        raise ValueError(f"data.pack_length {row_length} < max_seq_length {max_seq_length}: a "
                         f"text of max_seq_length tokens would not fit in a row")
    num_sides, batch = len(sides), len(sides[0])
    if any(len(side) != batch for side in sides):
        raise ValueError(f"all sides need the same batch size, got {[len(s) for s in sides]}")
    if batch % num_shards:
        raise ValueError(f"batch of {batch} pairs cannot be split into {num_shards} shards")
    flat = [text for side in sides for text in side]
    encoded = tokenizer(flat, padding=False, truncation=True, max_length=max_seq_length,
                        return_attention_mask=False, return_token_type_ids=False)["input_ids"]
    per_side = [encoded[s * batch:(s + 1) * batch] for s in range(num_sides)]
    needed = max(packing.rows_needed([len(x) for x in ids], row_length, num_shards) for ids in per_side)
    rows = packing.round_rows(max(needed, min_rows))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    packed = [packing.pack(ids, row_length=row_length, rows_per_shard=rows, num_shards=num_shards, pad_id=pad_id)
              for ids in per_side]
    return {key: np.stack([p[key] for p in packed]) for key in packed[0]}
