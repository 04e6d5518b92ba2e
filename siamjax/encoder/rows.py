"""Token rows: tokenising texts, and the two row layouts the encoder takes, padded (one text
per row, bucket lengths) and packed (several texts per row).

Why: sentence-embedding data is short (STS-b averages 14 tokens) and padding each text to the
batch's longest (or to a bucket) makes the encoder spend most of its FLOPs on pad tokens. A
packed batch lays the texts back to back in rows of `row_length` tokens (best-fit decreasing),
marks each token with its segment id (1..k within the row, 0 for padding) in `attention_mask`,
and records in `text_index` where each text's pooled vector lands. The encoder attends only
within a segment, restarts position ids per segment and pools per segment
(`siamjax.encoder.pooling`), so a packed text gets the same embedding as a padded one.

Row counts are rounded up to a short ladder (1, 2, 3, 4, 6, 8, 12, 16, 24, ...) so jit sees a
handful of shapes. For data-parallel training the texts are packed per shard: shard g's
`b = B / n` texts go into its own `r` rows, so the rows and `text_index [n, b]` split over
devices together and unpacking never crosses a device.
"""
from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

# The token arrays of one side of a batch, `[R, L]` each (packed batches add `text_index`; and
# `prompt_mask`, 1 on prompt tokens, is there when pooling must leave the prompt out).
TOKEN_KEYS = ("input_ids", "attention_mask", "token_type_ids")


def token_ids(tokenizer, texts: Sequence[str], max_length: int) -> list[list[int]]:
    """Unpadded token ids of `texts` (special tokens included), truncated at `max_length`."""
    if not texts:
        return []
    return tokenizer(list(texts), padding=False, truncation=True, max_length=max_length,
                     return_attention_mask=False, return_token_type_ids=False)["input_ids"]


def bucket_lengths(max_seq_length: int, min_length: int = 32) -> tuple[int, ...]:
    """Powers of two from `min_length` below `max_seq_length`, then `max_seq_length` itself.

    Why buckets: jit compiles once per shape, so padded rows take one of a few lengths.
    """
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


def num_slots(row_length: int) -> int:
    """Most texts one row can hold: every tokenised text has >= 2 tokens ([CLS] ... [SEP])."""
    return max(1, row_length // 2)


def round_rows(rows: int) -> int:
    """`rows` rounded up to 1, 2, 3, 4, 6, 8, 12, 16, 24, ... (under 1.5x the rows; ~2 shapes per octave)."""
    if rows <= 4:
        return max(rows, 1)
    power = 1 << (rows - 1).bit_length()  # the power of two >= rows
    return power * 3 // 4 if rows <= power * 3 // 4 else power


def pad_rows(ids: Sequence[Sequence[int]], row_length: int, pad_id: int = 0,
             prompt_length: int | None = None) -> dict[str, np.ndarray]:
    """The unpacked layout: one text per row, right-padded to `row_length` (longer texts cut).

    int32 `input_ids`, `attention_mask` (0/1: the one-segment case) and `token_type_ids` `[N, L]`;
    with `prompt_length` also `prompt_mask` (1 on each text's first `prompt_length` tokens).
    """
    input_ids = np.full((len(ids), row_length), pad_id, np.int32)
    mask = np.zeros((len(ids), row_length), np.int32)
    for i, seq in enumerate(ids):
        seq = seq[:row_length]
        input_ids[i, :len(seq)] = seq
        mask[i, :len(seq)] = 1
    out = {"input_ids": input_ids, "attention_mask": mask, "token_type_ids": np.zeros_like(input_ids)}
    if prompt_length is not None:
        out["prompt_mask"] = prompt_mask(mask, prompt_length)
    return out


def prompt_mask(segments: np.ndarray, prompt_length: int) -> np.ndarray:
    """int32 mask of the first `prompt_length` tokens of every segment (text) of `segments`
    (`attention_mask` of a padded or packed batch): the tokens of a prompt every text starts with."""
    segments = np.asarray(segments)
    starts = np.concatenate([np.ones_like(segments[..., :1], bool), segments[..., 1:] != segments[..., :-1]], -1)
    index = np.broadcast_to(np.arange(segments.shape[-1]), segments.shape)
    start = np.maximum.accumulate(np.where(starts, index, 0), axis=-1)
    return ((segments > 0) & (index - start < prompt_length)).astype(np.int32)


def fit_rows(lengths: Sequence[int], row_length: int) -> list[list[int]]:
    """Text indices per row, best-fit decreasing: longest first, each into the fullest row it fits.

    A row holds at most `row_length` tokens and `num_slots(row_length)` texts. Rows are kept
    in lists by free space, so placing N texts costs O(N * row_length), not O(N * rows).
    """
    slots = num_slots(row_length)
    rows: list[list[int]] = []
    by_free: list[list[int]] = [[] for _ in range(row_length + 1)]
    for i in sorted(range(len(lengths)), key=lambda j: -lengths[j]):
        n = lengths[i]
        if n > row_length:
            raise ValueError(f"text {i} has {n} tokens, more than the packing row length {row_length}; "
                             f"truncate to max_seq_length <= row_length")
        for free in range(n, row_length + 1):
            if by_free[free]:
                r = by_free[free].pop()
                break
        else:
            r, free = len(rows), row_length
            rows.append([])
        rows[r].append(i)
        if len(rows[r]) < slots:
            by_free[free - n].append(r)
    return rows


def shard_layouts(lengths: Sequence[int], row_length: int, num_shards: int = 1) -> list[list[list[int]]]:
    """`fit_rows` of each of `num_shards` contiguous, equal shards (indices local to the shard)."""
    if len(lengths) % num_shards:
        raise ValueError(f"{len(lengths)} texts cannot be split into {num_shards} equal shards")
    b = len(lengths) // num_shards
    return [fit_rows(lengths[g * b:(g + 1) * b], row_length) for g in range(num_shards)]


def rows_needed(layouts: Sequence[Sequence[Sequence[int]]]) -> int:
    """Rows the fullest shard of `shard_layouts` needs (before `round_rows`; at least 1)."""
    return max(max((len(layout) for layout in layouts), default=1), 1)


def fill_rows(ids: Sequence[Sequence[int]], layouts: Sequence[Sequence[Sequence[int]]], *,
              row_length: int, rows_per_shard: int, pad_id: int = 0,
              prompt_length: int | None = None) -> dict[str, np.ndarray]:
    """The packed arrays for `layouts[g]` = shard g's rows, each a list of indices into shard g's texts.

    Shard g owns texts `g * b .. (g + 1) * b - 1` (b = len(ids) / number of shards) and rows
    `g * rows_per_shard ..`; `text_index[g, j]` is text `g * b + j`'s flat slot in its shard.
    With `prompt_length`, `prompt_mask` marks each text's first `prompt_length` tokens.
    """
    num_shards = len(layouts)
    b, slots = len(ids) // num_shards, num_slots(row_length)
    total_rows = num_shards * rows_per_shard
    input_ids = np.full((total_rows, row_length), pad_id, np.int32)
    segments = np.zeros((total_rows, row_length), np.int32)
    text_index = np.zeros((num_shards, b), np.int32)
    for g, layout in enumerate(layouts):
        if len(layout) > rows_per_shard:
            raise ValueError(f"shard {g} needs {len(layout)} rows of {row_length} tokens, "
                             f"but rows_per_shard is {rows_per_shard}")
        for r, members in enumerate(layout):
            row, offset = g * rows_per_shard + r, 0
            for slot, j in enumerate(members):
                seq = ids[g * b + j]
                input_ids[row, offset:offset + len(seq)] = seq
                segments[row, offset:offset + len(seq)] = slot + 1
                offset += len(seq)
                text_index[g, j] = r * slots + slot
    out = {"input_ids": input_ids, "attention_mask": segments,
           "token_type_ids": np.zeros_like(input_ids), "text_index": text_index}
    if prompt_length is not None:
        out["prompt_mask"] = prompt_mask(segments, prompt_length)
    return out


def pack(ids: Sequence[Sequence[int]], *, row_length: int, num_shards: int = 1,
         pad_id: int = 0) -> dict[str, np.ndarray]:
    """Pack tokenised texts into `[num_shards * r, row_length]` rows (see `fill_rows`).

    Returns int32 numpy `input_ids`, `attention_mask` (segment ids), `token_type_ids` (zeros)
    `[n * r, L]` and `text_index [n, b]`; `r` is the rounded rows the fullest shard needs.
    """
    layouts = shard_layouts([len(x) for x in ids], row_length, num_shards)
    return fill_rows(ids, layouts, row_length=row_length, rows_per_shard=round_rows(rows_needed(layouts)),
                     pad_id=pad_id)


def plan_calls(lengths: Sequence[int], row_length_for, rows_for,
               row_multiple: int = 1) -> list[tuple[int, int, list[list[int]]]]:
    """Pack a whole corpus, then cut its rows into encoder calls of a fixed token budget.

    Texts are grouped by `row_length_for(length)` and each group is packed best-fit
    decreasing as a whole (short texts fill the gaps the long ones leave). Each call is
    `(row_length, rows, layout)`: up to `rows_for(row_length)` rows, each a list of text
    indices. Why a fixed budget rather than a fixed text count: every full call at a row length
    has the same shape, so a corpus compiles a handful of shapes, and only a group's last call
    has spare rows (its row count is `round_rows` of what it uses). Every call's row count is a
    multiple of `row_multiple` (the devices its rows are split over).
    """
    multiple = lambda n: -(-n // row_multiple) * row_multiple
    groups: dict[int, list[int]] = {}
    for i, n in enumerate(lengths):
        groups.setdefault(row_length_for(n), []).append(i)
    calls = []
    for row_length in sorted(groups, reverse=True):
        members = groups[row_length]
        layout = [[members[j] for j in row] for row in fit_rows([lengths[i] for i in members], row_length)]
        per_call = multiple(rows_for(row_length))
        for start in range(0, len(layout), per_call):
            chunk = layout[start:start + per_call]
            calls.append((row_length, per_call if len(chunk) == per_call else multiple(round_rows(len(chunk))),
                          chunk))
    return calls


def call_batch(ids: Sequence[Sequence[int]], layout: Sequence[Sequence[int]], *, row_length: int, rows: int,
               pad_id: int = 0, num_shards: int = 1,
               prompt_length: int | None = None) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """One call of `plan_calls`: (the text of each output, -1 for a spare slot; its packed batch).

    The rows are cut into `num_shards` contiguous shards (one per device), shard g holding the
    texts of its own rows, so `text_index [num_shards, rows / num_shards * num_slots]` unpacks
    on each device without communication. `text_index` has an entry for every slot (the first
    ones of a shard name its texts, the rest repeat slot 0), so the output shape, like the
    input shape, depends only on the row shape and every full call reuses one compiled function.
    """
    if rows % num_shards:
        raise ValueError(f"{rows} rows cannot be split into {num_shards} equal shards")
    per_shard = rows // num_shards
    width = per_shard * num_slots(row_length)
    order = np.full(num_shards * width, -1, np.int64)
    parts = []
    for g in range(num_shards):
        shard = layout[g * per_shard:(g + 1) * per_shard]
        members = [i for row in shard for i in row]
        order[g * width:g * width + len(members)] = members
        local, start = [], 0
        for row in shard:
            local.append(list(range(start, start + len(row))))
            start += len(row)
        part = fill_rows([ids[i] for i in members], [local], row_length=row_length, rows_per_shard=per_shard,
                         pad_id=pad_id, prompt_length=prompt_length)
        part["text_index"] = np.pad(part["text_index"], ((0, 0), (0, width - len(members))))
        parts.append(part)
    return order, {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}


def unpack(pooled_RxKxD, text_index_nxb):
    """Per-text vectors `[n * b, D]` from per-slot vectors `[R, K, D]` (R = n * r rows).

    The gather stays inside each shard's rows, so with rows and `text_index` split over the
    same devices it needs no communication.
    """
    n, b = text_index_nxb.shape
    r, k, d = pooled_RxKxD.shape
    pooled_nxSxD = pooled_RxKxD.reshape(n, (r // n) * k, d)
    out_nxbxD = jnp.take_along_axis(pooled_nxSxD, text_index_nxb[..., None], axis=1)
    return out_nxbxD.reshape(n * b, d)


def segment_positions(segments_RxL):
    """Position of each token within its segment (run of equal ids along the row).

    Why: a packed row holds several texts back to back, and each text's position ids must
    restart at 0, exactly as if it had its own row. For an unpacked row (ids 1...1 0...0)
    this is 0..len-1 on the text, as BERT expects.
    """
    l = segments_RxL.shape[-1]
    index_L = jnp.arange(l, dtype=jnp.int32)
    starts_RxL = jnp.concatenate(
        [jnp.ones_like(segments_RxL[..., :1], bool), segments_RxL[..., 1:] != segments_RxL[..., :-1]], axis=-1)
    start_RxL = jax.lax.cummax(jnp.where(starts_RxL, index_L, 0), axis=segments_RxL.ndim - 1)
    return index_L - start_RxL
