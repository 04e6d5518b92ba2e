"""GradCache: full-batch contrastive gradients with activation memory of one chunk.

Gao, Zhang, Han & Callan 2021, "Scaling Deep Contrastive Learning Batch Size under Memory Limited
Setup"; sentence-transformers' CachedMultipleNegativesRankingLoss. In-batch-negative losses want
huge batches, but backprop through the encoder keeps activations for the whole batch. GradCache
splits the gradient at the embeddings:

1. embed the batch chunk by chunk with no activations kept (forward only);
2. compute the loss and g = d loss / d embeddings on the full `[S, B, D]` embeddings;
3. re-encode each chunk under `jax.vjp` and pull g's chunk back to the parameters, summing.

By the chain rule the sum equals the full-batch gradient. Steps 1 and 3 are `jax.lax.scan`s, so
compile time does not grow with the number of chunks, and only one chunk's activations are live.
Chunks are strided (`chunk i = rows {j * n_chunks + i}`), so on a mesh every chunk is spread over
all batch devices and the chunk dimension keeps the batch sharding; `loss_fn` may be the sharded
InfoNCE (`get_loss("mnrl", mesh=...)`). For memory O(chunk * B) in step 2 too, use InfoNCE with
`block_size=chunk_size`.
"""
from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from siamjax.losses import checks as chk

_LOSS_KEYS = ("labels", "text_ids")


def grad_cache_value_and_grad(
    encode_fn: Callable,
    loss_fn: Callable,
    params: Any,
    batch_SxBxL: dict,
    chunk_size: int,
    loss_params: Any = None,
    rng: jax.Array | None = None,
    *,
    compute_dtype=None,
) -> tuple[jax.Array, Any, Any]:
    """(loss, d loss / d params, d loss / d loss_params) of `loss_fn(encode(batch))` via GradCache.

    encode_fn(params, batch_bxL: dict, *, rng=None) -> [b, D]: pure encoder (rng given = dropout).
    loss_fn(emb_SxBxD, labels_B | None, loss_params[, text_ids_SxB]) -> scalar (registry LossFn).
    batch_SxBxL: encoder inputs `[S, B, ...]` (input_ids, attention_mask, ...), plus optional
      "labels" [B] and "text_ids" [S, B] which go to the loss, not the encoder.
    chunk_size: examples per side encoded per step (over all devices); must divide B, and on a
      mesh should be a multiple of the number of batch devices.
    rng: dropout key; chunk i, side s uses split(fold_in(rng, i), S)[s] in both passes, so the
      re-encoding reproduces the first pass exactly. (With dropout, the result equals a full-batch
      gradient under those per-chunk keys, not under the keys of an unchunked step.)
    compute_dtype: if set, floating params are cast to it for encoding (bf16 compute; gradients
      still arrive in the params' dtype).
    Returns d loss / d loss_params as None when loss_params is None.
    """
    where = "grad_cache_value_and_grad"
    sides, labels, text_ids = _split_batch(where, batch_SxBxL)
    num_sides, batch = next(iter(sides.values())).shape[:2]
    _check_chunking(where, params, batch, chunk_size)
    n_chunks = batch // chunk_size
    to_chunks = functools.partial(_to_chunks, chunk_size=chunk_size, n_chunks=n_chunks)

    def embed_chunk(p, chunk_Sxcx, i):
        if compute_dtype is not None:
            p = jax.tree.map(lambda a: a.astype(compute_dtype), p)
        if rng is None:
            return jax.vmap(lambda side: encode_fn(p, side))(chunk_Sxcx)
        keys_S = jax.random.split(jax.random.fold_in(rng, i), num_sides)
        return jax.vmap(lambda side, k: encode_fn(p, side, rng=k))(chunk_Sxcx, keys_S)

    chunks = jax.tree.map(to_chunks, sides)
    idx_n = jnp.arange(n_chunks)
    frozen = jax.lax.stop_gradient(params)
    emb_nxSxcxD = jax.lax.map(lambda xs: embed_chunk(frozen, *xs), (chunks, idx_n))
    emb_SxBxD = _from_chunks(emb_nxSxcxD)

    lp = {} if loss_params is None else loss_params
    extra = () if text_ids is None else (text_ids,)
    loss, (g_emb_SxBxD, g_lp) = jax.value_and_grad(
        lambda e, p: loss_fn(e, labels, p, *extra), argnums=(0, 1))(emb_SxBxD, lp)

    def accumulate(acc, xs):
        chunk_Sxcx, g_Sxcx, i = xs
        _, pull = jax.vjp(lambda p: embed_chunk(p, chunk_Sxcx, i), params)
        (g_params,) = pull(g_Sxcx)
        return jax.tree.map(jnp.add, acc, g_params), None

    zeros = jax.tree.map(jnp.zeros_like, params)
    grads, _ = jax.lax.scan(accumulate, zeros, (chunks, to_chunks(g_emb_SxBxD), idx_n))
    return loss, grads, (None if loss_params is None else g_lp)


def _to_chunks(x_SxBx, *, chunk_size: int, n_chunks: int):
    """[S, B, ...] -> [n, S, c, ...] with chunk i = rows j * n + i (strided, so every chunk is
    spread over all batch devices)."""
    x = x_SxBx.reshape(x_SxBx.shape[0], chunk_size, n_chunks, *x_SxBx.shape[2:])
    return jnp.moveaxis(x, 2, 0)


def _from_chunks(x_nxSxcx):
    """Inverse of `_to_chunks`: [n, S, c, ...] -> [S, n * c, ...]."""
    x = jnp.moveaxis(x_nxSxcx, 0, 2)
    return x.reshape(x.shape[0], x.shape[1] * x.shape[2], *x.shape[3:])


def make_grad_cache_value_and_grad(encode_fn: Callable, loss_fn: Callable, chunk_size: int, *, compute_dtype=None):
    """value_and_grad_fn(params, batch, rng) -> (loss, grads) for params {"encoder", "loss"}.

    The shape `siamjax.train.step.make_train_step(value_and_grad_fn=...)` takes: a drop-in
    replacement for `jax.value_and_grad` of the embed-then-loss function.
    """

    def value_and_grad_fn(params, batch, rng):
        loss_params = params.get("loss") or {}
        loss, g_enc, g_loss = grad_cache_value_and_grad(
            encode_fn, loss_fn, params["encoder"], batch, chunk_size, loss_params, rng,
            compute_dtype=compute_dtype)
        return loss, {"encoder": g_enc, "loss": g_loss}

    return value_and_grad_fn


def _check_chunking(where: str, params, batch: int, chunk_size) -> None:
    """chunk_size must be a positive int dividing B, and params floating point (they get grads)."""
    if not isinstance(chunk_size, int) or chunk_size <= 0:
        raise ValueError(f"{where}: chunk_size must be a positive int, got {chunk_size!r}")
    chk.check_divisible(where, "batch size B", batch, chunk_size, "chunk_size")
    bad = [jnp.dtype(x.dtype).name for x in jax.tree.leaves(params) if not jnp.issubdtype(x.dtype, jnp.inexact)]
    if bad:
        raise TypeError(f"{where}: params must be floating-point arrays only, found dtypes {sorted(set(bad))}")


def _split_batch(where: str, batch: dict):
    if not isinstance(batch, dict) or not batch:
        raise TypeError(f"{where}: batch must be a non-empty dict of [S, B, L] arrays, got {type(batch).__name__}")
    sides = {k: v for k, v in batch.items() if k not in _LOSS_KEYS}
    if not sides:
        raise ValueError(f"{where}: batch has no encoder inputs (only {sorted(batch)})")
    shapes = {k: tuple(v.shape) for k, v in sides.items()}
    if any(len(s) < 2 for s in shapes.values()) or len({s[:2] for s in shapes.values()}) > 1:
        raise ValueError(f"{where}: encoder inputs must all be [S, B, ...] with the same S and B, got {shapes}")
    num_sides, batch_size = next(iter(shapes.values()))[:2]
    labels, text_ids = batch.get("labels"), batch.get("text_ids")
    if labels is not None and tuple(labels.shape) != (batch_size,):
        raise ValueError(f"{where}: batch['labels'] must be [{batch_size}], got {tuple(labels.shape)}")
    if text_ids is not None and tuple(text_ids.shape) != (num_sides, batch_size):
        raise ValueError(f"{where}: batch['text_ids'] must be [{num_sides}, {batch_size}], got {tuple(text_ids.shape)}")
    return sides, labels, text_ids
