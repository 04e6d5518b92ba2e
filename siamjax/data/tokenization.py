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

from siamjax.encoder import rows


def token_lengths(tokenizer, texts: Sequence[str], *, max_seq_length: int) -> list[int]:
    """Token counts of `texts` after truncation.

    Why: on several processes every host must pad to the same bucket (or pack into the same
    number of rows), so each host measures the rows of the global batch other hosts tokenise.
    """
    return [len(ids) for ids in rows.token_ids(tokenizer, texts, max_seq_length)]


def _side_ids(tokenizer, sides: Sequence[Sequence[str]], max_seq_length: int) -> list[list[list[int]]]:
    """Token ids per side; all sides must hold the same number of texts."""
    batch = len(sides[0])
    if any(len(side) != batch for side in sides):
        raise ValueError(f"all sides need the same batch size, got {[len(s) for s in sides]}")
    flat = rows.token_ids(tokenizer, [text for side in sides for text in side], max_seq_length)
    return [flat[s * batch:(s + 1) * batch] for s in range(len(sides))]


def _pad_id(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0


def tokenize_sides(tokenizer, sides: Sequence[Sequence[str]], *, max_seq_length: int,
                   buckets: Sequence[int] | None = None, min_length: int = 0,
                   prompt_lengths: Sequence[int] | None = None) -> dict[str, np.ndarray]:
    """Tokenise S lists of B texts into int32 arrays [S, B, L], L a bucket length.

    Why one L for all sides: the sides are stacked and encoded with one vmapped call.
    L is the smallest bucket >= the longest sequence and >= `min_length` (the longest
    sequence of the rest of the global batch, so that every process pads alike).
    Texts are truncated at `max_seq_length`; `token_type_ids` are zeros (single segments).
    With `prompt_lengths` (one per side: the tokens of the prompt its texts start with, 0 for
    none) the batch also carries `prompt_mask` [S, B, L] for pooling without the prompt.
    """
    buckets = tuple(sorted(buckets)) if buckets else rows.bucket_lengths(max_seq_length)
    if max(buckets) < max_seq_length:
        raise ValueError(f"largest bucket {max(buckets)} < max_seq_length {max_seq_length}")
    encoded = [ids for side in _side_ids(tokenizer, sides, max_seq_length) for ids in side]
    length = rows.pick_bucket(max(max(len(ids) for ids in encoded), min_length), buckets)
    padded = rows.pad_rows(encoded, length, _pad_id(tokenizer))
    out = {key: value.reshape(len(sides), len(sides[0]), length) for key, value in padded.items()}
    if prompt_lengths is not None:
        out["prompt_mask"] = np.stack([rows.prompt_mask(mask, n) for mask, n in zip(out["attention_mask"],
                                                                                   prompt_lengths)])
    return out


def pack_sides(tokenizer, sides: Sequence[Sequence[str]], *, max_seq_length: int, row_length: int,
               num_shards: int = 1, min_rows: int = 1, row_multiple: int = 1,
               prompt_lengths: Sequence[int] | None = None) -> dict[str, np.ndarray]:
    """Tokenise S lists of B texts and pack each side into rows: a packed `[S, ...]` batch.

    Returns int32 `input_ids`, `attention_mask` (segment ids), `token_type_ids` `[S, n * r, L]`
    and `text_index [S, n, B / n]` (`siamjax.encoder.rows`). Each of the `num_shards`
    contiguous shards of a side (one per batch device of this process) is packed into its own
    r rows; r is the same for every side and shard (the most any needs, at least `min_rows`,
    rounded up by `rows.round_rows`, then to a multiple of `row_multiple`: GradCache over packed
    rows encodes each shard's rows `row_multiple` at a time) so the sides stack and the shards
    split evenly. `prompt_lengths` adds `prompt_mask` as in `tokenize_sides`.
    Why: short texts padded to a shared length waste most of the encoder's work.
    """
    if row_length < max_seq_length:
        raise ValueError(f"data.pack_length {row_length} < max_seq_length {max_seq_length}: a "
                         f"text of max_seq_length tokens would not fit in a row")
    if len(sides[0]) % num_shards:
        raise ValueError(f"batch of {len(sides[0])} pairs cannot be split into {num_shards} shards")
    per_side = _side_ids(tokenizer, sides, max_seq_length)
    layouts = [rows.shard_layouts([len(x) for x in ids], row_length, num_shards) for ids in per_side]
    per_shard = rows.round_rows(max(max(rows.rows_needed(side) for side in layouts), min_rows))
    per_shard = -(-per_shard // row_multiple) * row_multiple
    skips = [None] * len(sides) if prompt_lengths is None else list(prompt_lengths)
    packed = [rows.fill_rows(ids, side, row_length=row_length, rows_per_shard=per_shard, pad_id=_pad_id(tokenizer),
                             prompt_length=skip)
              for ids, side, skip in zip(per_side, layouts, skips)]
    return {key: np.stack([p[key] for p in packed]) for key in packed[0]}
