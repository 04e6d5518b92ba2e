"""GradCache: full-batch contrastive gradients with activation memory of one chunk.

Gao, Zhang, Han & Callan 2021, "Scaling Deep Contrastive Learning Batch Size under Memory Limited
Setup"; sentence-transformers' Cached* losses. In-batch-negative losses want huge batches, but
backprop through the encoder keeps activations for the whole batch. GradCache splits the
gradient at the embeddings:

1. embed the batch chunk by chunk with no activations kept (forward only);
2. compute the loss and g = d loss / d embeddings on the full `[S, B, D]` embeddings;
3. re-encode each chunk under `jax.vjp` and pull g's chunk back to the parameters, summing.

By the chain rule the sum equals the full-batch gradient. Steps 1 and 3 are `jax.lax.scan`s, so
compile time does not grow with the number of chunks, and only one chunk's activations are live.
On a mesh they run per 'data' shard (`siamjax.parallel.on_data_shards`), so step 3's sum stays
local and the gradient is all-reduced over 'data' once per step, not once per chunk.

A chunk is a slice of the batch's rows, in one of the two row layouts (`siamjax.encoder.rows`):
- padded `[S, B, L]`: `chunk_size` texts per side. Chunks are strided (chunk i = rows
  {j * n_chunks + i}), so on a mesh every chunk is spread over all batch devices;
- packed `[S, n * r, L]` + `text_index [S, n, b]`: `chunk_tokens` tokens per side on each of
  the n batch shards, i.e. `chunk_tokens / L` packed rows of every shard (sentence-transformers'
  token-budgeted mini-batches, but every chunk has the same shape). A chunk is encoded into one
  vector per row slot; the slot vectors of all chunks are then unpacked into the `[S, B, D]`
  text embeddings with `text_index`, and step 3 pulls g back through that gather.
`loss_fn` may be the sharded InfoNCE/GIST (`get_loss(..., mesh=...)`). A frozen guide encoder
(GIST; CachedGIST is GIST under GradCache) embeds the chunks in step 1 only. For memory
O(chunk * B) in step 2 too, use InfoNCE with `block_size` (or `ring=True` when sharded).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from siamjax.encoder.lora import with_base
from siamjax.encoder.model import encode_sides
from siamjax.encoder.rows import num_slots, unpack
from siamjax.losses import checks as chk
from siamjax.parallel import data_shard_count, data_shard_key, local_to_data_shard, on_data_shards, sum_over_data_shards

_LOSS_KEYS = ("labels", "text_ids")


def grad_cache_value_and_grad(
    encode_fn: Callable,
    loss_fn: Callable,
    params: Any,
    batch_SxBxL: dict,
    chunk_size: int | None = None,
    loss_params: Any = None,
    rng: jax.Array | None = None,
    *,
    chunk_tokens: int | None = None,
    compute_dtype=None,
    guide_encode_fn: Callable | None = None,
    guide_params: Any = None,
) -> tuple[jax.Array, Any, Any]:
    """(loss, d loss / d params, d loss / d loss_params) of `loss_fn(encode(batch))` via GradCache.

    encode_fn(params, batch_bxL: dict, *, rng=None) -> [b, D]: pure encoder (rng given = dropout).
    loss_fn(emb_SxBxD, labels_B | None, loss_params[, text_ids_SxB][, guide_SxBxD=]) -> scalar.
    batch_SxBxL: encoder inputs `[S, B, ...]` (input_ids, attention_mask, ...) or a packed batch
      (+ `text_index`), plus optional "labels" [B, ...] and "text_ids" [S, B] for the loss.
    chunk_size: texts per side encoded per step (over all devices), padded batches; must divide
      B, and on a mesh should be a multiple of the number of batch devices.
    chunk_tokens: packed batches: tokens per side per batch shard encoded per step; a multiple
      of the row length L whose row count divides each shard's rows.
    rng: dropout key; chunk i, side s uses split(fold_in(rng, i), S)[s] in both passes, so the
      re-encoding reproduces the first pass exactly. (With dropout, the result equals a full-batch
      gradient under those per-chunk keys, not under the keys of an unchunked step.)
    compute_dtype: if set, floating params are cast to it for encoding (bf16 compute; gradients
      still arrive in the params' dtype).
    guide_encode_fn / guide_params: a frozen guide encoder whose embeddings of the batch go to
      the loss as `guide_SxBxD` (no gradients, computed in the first pass only).
    Returns d loss / d loss_params as None when loss_params is None.

    On a mesh with data > 1 (`jax.set_mesh`), steps 1 and 3 run per 'data' shard
    (`siamjax.parallel.on_data_shards`): each shard sums its chunks' parameter gradients locally
    and the sum is all-reduced over 'data' once per step, not once per chunk. Its dropout keys
    are then those of its shard (`data_shard_key`), so with dropout the result depends on the
    'data' size (as in any data-parallel trainer whose ranks draw their own masks).
    """
    where = "grad_cache_value_and_grad"
    sides, text_index, labels, text_ids = _split_batch(where, batch_SxBxL)
    _check_params(where, params)
    layout = _layout(where, sides, text_index, chunk_size, chunk_tokens)
    embed_chunk = _chunk_embedder(layout, compute_dtype)
    chunks = jax.tree.map(layout.to_chunks, sides)
    out_nxSx = _embed_all(layout, embed_chunk, encode_fn)(jax.lax.stop_gradient(params), chunks, rng)
    emb_SxBxD, assemble_vjp = jax.vjp(layout.assemble, out_nxSx)
    extra = {}
    if guide_encode_fn is not None:
        guide = jax.lax.stop_gradient(guide_params)
        extra["guide_SxBxD"] = layout.assemble(_embed_all(layout, embed_chunk, guide_encode_fn)(guide, chunks, None))

    lp = {} if loss_params is None else loss_params
    ids = () if text_ids is None else (text_ids,)
    loss, (g_emb_SxBxD, g_lp) = jax.value_and_grad(
        lambda e, p: loss_fn(e, labels, p, *ids, **extra), argnums=(0, 1))(emb_SxBxD, lp)
    (g_out_nxSx,) = assemble_vjp(g_emb_SxBxD)
    grads = _pull_back(layout, embed_chunk, encode_fn)(params, chunks, g_out_nxSx, rng)
    return loss, grads, (None if loss_params is None else g_lp)


def _embed_all(layout, embed_chunk, enc):
    """Step 1: embed(params, chunks [n, S, rows, ...], key) -> outputs [n, S, rows', D], chunk by
    chunk on each data shard's rows (axis 2 is split over 'data')."""

    def embed(p, chunks_n, key):
        return jax.lax.map(lambda xs: embed_chunk(enc, p, *xs, key), (chunks_n, jnp.arange(layout.n_chunks)))

    return on_data_shards(embed, (None, 2, None), 2)


def _pull_back(layout, embed_chunk, enc):
    """Step 3: pull(params, chunks, g_outputs, key) -> d loss / d params. Each data shard re-encodes
    its rows of every chunk under `jax.vjp` and sums its own parameter gradients (no reduction
    per chunk); the shards' sums are all-reduced over 'data' once, at the end."""

    def pull_back(p, chunks_n, g_out_n, key):
        p = local_to_data_shard(p)

        def accumulate(acc, xs):
            chunk_Sx, g_Sx, i = xs
            _, pull = jax.vjp(lambda q: embed_chunk(enc, q, chunk_Sx, i, key), p)
            (g_params,) = pull(g_Sx)
            return jax.tree.map(jnp.add, acc, g_params), None

        zeros = jax.tree.map(jnp.zeros_like, p)
        grads, _ = jax.lax.scan(accumulate, zeros, (chunks_n, g_out_n, jnp.arange(layout.n_chunks)))
        return sum_over_data_shards(grads)

    return on_data_shards(pull_back, (None, 2, 2, None), None)


def _chunk_embedder(layout, compute_dtype):
    """embed_chunk(encode_fn, params, chunk [S, ...], i, key or None) -> the chunk's outputs [S, ...].

    With a dropout key, every side of chunk i gets its own key, split(fold_in(key', i), S), in
    both passes, where key' is the key of this data shard (`data_shard_key`).
    """

    def embed_chunk(enc, p, chunk_Sx, i, key):
        if compute_dtype is not None:
            p = jax.tree.map(lambda a: a.astype(compute_dtype), p)
        chunk_Sx = layout.encoder_inputs(chunk_Sx)
        if key is None:
            return encode_sides(enc, p, chunk_Sx)
        keys_S = jax.random.split(jax.random.fold_in(data_shard_key(key), i), chunk_Sx["input_ids"].shape[0])
        return encode_sides(enc, p, chunk_Sx, keys_S)

    return embed_chunk


class _PaddedChunks:
    """Strided chunks of `chunk_size` texts: [S, B, ...] <-> [n, S, c, ...]."""

    def __init__(self, batch: int, chunk_size: int):
        self.chunk_size, self.n_chunks = chunk_size, batch // chunk_size

    def to_chunks(self, x_SxBx):
        x = x_SxBx.reshape(x_SxBx.shape[0], self.chunk_size, self.n_chunks, *x_SxBx.shape[2:])
        return jnp.moveaxis(x, 2, 0)

    def encoder_inputs(self, chunk_Sx):
        return chunk_Sx

    def assemble(self, emb_nxSxcxD):
        x = jnp.moveaxis(emb_nxSxcxD, 0, 2)
        return x.reshape(x.shape[0], x.shape[1] * x.shape[2], *x.shape[3:])


class _PackedChunks:
    """Chunks of `rows` packed rows from each of the n shards: [S, n * r, L] <-> [c, S, n * rows, L].

    A chunk is encoded with an identity `text_index` (one output per row slot); `assemble`
    puts the slots back in shard order and unpacks the texts with the batch's `text_index`.
    """

    def __init__(self, text_index_Sxnxb, rows_per_shard: int, rows: int, row_length: int):
        self.text_index = text_index_Sxnxb
        self.shards = text_index_Sxnxb.shape[1]
        self.rows, self.n_chunks = rows, rows_per_shard // rows
        self.slots_per_row = num_slots(row_length)

    def to_chunks(self, x_SxRxL):
        s, _, l = x_SxRxL.shape
        x = x_SxRxL.reshape(s, self.shards, self.n_chunks, self.rows, l)
        return jnp.moveaxis(x, 2, 0).reshape(self.n_chunks, s, self.shards * self.rows, l)

    def encoder_inputs(self, chunk_Sx):
        slots = self.rows * self.slots_per_row
        s, rows = chunk_Sx["input_ids"].shape[:2]  # rows: all shards', or one data shard's
        every_slot = jnp.broadcast_to(jnp.arange(slots, dtype=jnp.int32), (s, rows // self.rows, slots))
        return dict(chunk_Sx, text_index=every_slot)

    def assemble(self, slots_cxSxMxD):
        c, s, _, d = slots_cxSxMxD.shape
        x = slots_cxSxMxD.reshape(c, s, self.shards, self.rows * self.slots_per_row, d)
        x = jnp.moveaxis(x, 0, 2).reshape(s, self.shards * c * self.rows, self.slots_per_row, d)
        return jax.vmap(unpack)(x, self.text_index)


def _layout(where: str, sides: dict, text_index, chunk_size, chunk_tokens):
    """The chunking of this batch: padded by `chunk_size` texts, or packed by `chunk_tokens`."""
    num_sides, rows_total, *rest = sides["input_ids"].shape
    if text_index is None:
        if chunk_tokens is not None:
            raise ValueError(f"{where}: chunk_tokens chunks packed rows; this batch is padded (no text_index), "
                             f"give chunk_size (texts per chunk)")
        _check_positive(where, "chunk_size", chunk_size)
        chk.check_divisible(where, "batch size B", rows_total, chunk_size, "chunk_size")
        chk.check_divisible(where, "chunk_size", chunk_size, data_shard_count(), "the mesh's 'data' axis size")
        return _PaddedChunks(rows_total, chunk_size)
    if chunk_size is not None:
        raise ValueError(f"{where}: this batch is packed (has text_index): give chunk_tokens, not chunk_size")
    _check_positive(where, "chunk_tokens", chunk_tokens)
    row_length, shards = rest[-1], text_index.shape[1]
    chk.check_divisible(where, "chunk_tokens", chunk_tokens, row_length, "packed row length")
    rows_per_shard = rows_total // shards
    rows = chunk_tokens // row_length
    chk.check_divisible(where, "packed rows per shard", rows_per_shard, rows, "rows per chunk (chunk_tokens / L)")
    return _PackedChunks(text_index, rows_per_shard, rows, row_length)


def make_grad_cache_value_and_grad(encode_fn: Callable, loss_fn: Callable, chunk_size: int | None = None, *,
                                   chunk_tokens: int | None = None, compute_dtype=None,
                                   guide_encode_fn: Callable | None = None):
    """value_and_grad_fn(params, batch, rng, frozen) -> (loss, grads) for params {"encoder", "loss"}.

    The shape `siamjax.train.step.make_train_step(value_and_grad_fn=...)` takes: a drop-in
    replacement for `jax.value_and_grad` of the embed-then-loss function. `frozen` holds the
    guide's parameters (`frozen["guide"]`) when `guide_encode_fn` is given, and a LoRA run's
    frozen base (`frozen["encoder"]`), joined to the trained adapters in every chunk.
    """

    def value_and_grad_fn(params, batch, rng, frozen=None):
        loss_params = params.get("loss") or {}
        guide = {} if guide_encode_fn is None else dict(guide_encode_fn=guide_encode_fn, guide_params=frozen["guide"])
        loss, g_enc, g_loss = grad_cache_value_and_grad(
            with_base(encode_fn, (frozen or {}).get("encoder")), loss_fn, params["encoder"], batch, chunk_size,
            loss_params, rng, chunk_tokens=chunk_tokens, compute_dtype=compute_dtype, **guide)
        return loss, {"encoder": g_enc, "loss": g_loss}

    return value_and_grad_fn


def _check_positive(where: str, field: str, value) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{where}: {field} must be a positive int, got {value!r}")


def _check_params(where: str, params) -> None:
    """params must be floating point (they get gradients)."""
    bad = [jnp.dtype(x.dtype).name for x in jax.tree.leaves(params) if not jnp.issubdtype(x.dtype, jnp.inexact)]
    if bad:
        raise TypeError(f"{where}: params must be floating-point arrays only, found dtypes {sorted(set(bad))}")


def _split_batch(where: str, batch: dict):
    """(encoder sides, text_index or None, labels, text_ids) of a GradCache batch, shapes checked."""
    if not isinstance(batch, dict) or not batch:
        raise TypeError(f"{where}: batch must be a non-empty dict of [S, B, L] arrays, got {type(batch).__name__}")
    sides = {k: v for k, v in batch.items() if k not in _LOSS_KEYS + ("text_index",)}
    if not sides or "input_ids" not in sides:
        raise ValueError(f"{where}: batch has no encoder inputs (input_ids; it has {sorted(batch)})")
    shapes = {k: tuple(v.shape) for k, v in sides.items()}
    if any(len(s) < 2 for s in shapes.values()) or len({s[:2] for s in shapes.values()}) > 1:
        raise ValueError(f"{where}: encoder inputs must all be [S, B, ...] with the same S and B, got {shapes}")
    num_sides, rows = next(iter(shapes.values()))[:2]
    text_index = batch.get("text_index")
    batch_size = rows
    if text_index is not None:
        if text_index.ndim != 3 or text_index.shape[0] != num_sides or rows % text_index.shape[1]:
            raise ValueError(f"{where}: batch['text_index'] must be [{num_sides}, shards, B / shards] with the rows "
                             f"split evenly over the shards, got {tuple(text_index.shape)} for {rows} rows")
        batch_size = text_index.shape[1] * text_index.shape[2]
    labels, text_ids = batch.get("labels"), batch.get("text_ids")
    if labels is not None and (labels.ndim == 0 or labels.shape[0] != batch_size):
        raise ValueError(f"{where}: batch['labels'] must be [{batch_size}, ...], got {tuple(labels.shape)}")
    if text_ids is not None and tuple(text_ids.shape) != (num_sides, batch_size):
        raise ValueError(f"{where}: batch['text_ids'] must be [{num_sides}, {batch_size}], got {tuple(text_ids.shape)}")
    return sides, text_index, labels, text_ids
