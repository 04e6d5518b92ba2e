"""The pure, jit-compiled training step for siamese encoders.

The step encodes the S stacked sides of a batch `[S, B, L]` with one vmapped encoder call,
scores the `[S, B, D]` embeddings with a loss from the loss library, and applies the optax
update. It is compiled once with explicit shardings at the jit boundary: the state by the FSDP
rule, the batch by the one batch rule (`siamjax.parallel.batch`).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from siamjax.encoder.model import EncodeFn, encode_sides
from siamjax.encoder.rows import TOKEN_KEYS
from siamjax.losses import LossFn
from siamjax.parallel import batch_shardings, replicated
from siamjax.train.state import TrainState, encoder_params

# value_and_grad_fn(params, batch, rng, frozen) -> (loss, grads): replaces autodiff (GradCache).
ValueAndGradFn = Callable[[Any, dict, jax.Array, Any], tuple[jax.Array, Any]]


def split_sides(batch: dict) -> dict:
    """The encoder inputs of a `[S, B, L]` batch, or of a packed one (+ `text_index`), with
    `prompt_mask` when there is one; no labels."""
    missing = [k for k in ("input_ids", "attention_mask") if k not in batch]
    if missing:
        raise KeyError(f"training batch lacks {missing}; it has {sorted(batch)}")
    return {k: batch[k] for k in TOKEN_KEYS + ("text_index", "prompt_mask") if k in batch}


def make_embed_fn(encode_fn: EncodeFn):
    """embed(encoder_params, sides [S, B, L] dict, rng or None) -> float32 `[S, B, D]`.

    One vmapped encoder call over the S sides (`siamjax.encoder.model.encode_sides`), so every
    side shares the same parameters and their gradients land on one pytree; each side gets its
    own dropout key. A Router model's encode_fn runs the shared trunk once over all sides and
    each side's own route head after it. Mixed precision
    and rematerialisation are properties of the encoder (`SentenceEncoder(dtype=, remat=)`).
    """

    def embed(params, sides, rng):
        rngs_S = None if rng is None else jax.random.split(rng, sides["input_ids"].shape[0])
        return encode_sides(encode_fn, params, sides, rngs_S).astype(jnp.float32)

    return embed


def make_loss_fn(embed_fn, loss_fn: LossFn, guide_embed_fn=None):
    """total_loss(params, batch, rng, frozen) -> scalar: embed every side, then score with `loss_fn`.

    `batch["text_ids"]` ([S, B], when present) goes to the loss for false-negative masking.
    A LoRA run's frozen base (`frozen["encoder"]`) is joined to the trained adapters.
    With `guide_embed_fn` (GIST), the frozen guide encoder (`frozen["guide"]`, no dropout, no
    gradient) embeds the same sides inside the same step, and the loss gets `guide_SxBxD`.
    """

    def total_loss(params, batch, rng, frozen=None):
        sides = split_sides(batch)
        emb_SxBxD = embed_fn(encoder_params(params, frozen), sides, rng)  # gradients reach `params` only
        extra = {}
        if guide_embed_fn is not None:
            extra["guide_SxBxD"] = jax.lax.stop_gradient(guide_embed_fn(frozen["guide"], sides, None))
        return loss_fn(emb_SxBxD, batch.get("labels"), params["loss"], batch.get("text_ids"), **extra)

    return total_loss


def on_loss_slot(value_and_grad_fn: ValueAndGradFn, slot: str) -> ValueAndGradFn:
    """The same value_and_grad over params whose "loss" maps slot -> parameters (a run with one
    loss per dataset): the loss sees only `slot`'s parameters, the others get zero gradients."""

    def slot_value_and_grad(params, batch, rng, frozen=None):
        view = {**params, "loss": params["loss"][slot]}
        loss, grads = value_and_grad_fn(view, batch, rng, frozen)
        loss_grads = {k: (grads["loss"] if k == slot else jax.tree.map(jnp.zeros_like, v))
                      for k, v in params["loss"].items()}
        return loss, {**grads, "loss": loss_grads}

    return slot_value_and_grad


def make_train_step(
    encode_fn: EncodeFn,
    loss_fn: LossFn,
    optimizer: optax.GradientTransformation,
    *,
    schedule: optax.Schedule | None = None,
    dropout: bool = True,
    value_and_grad_fn: ValueAndGradFn | None = None,
    guide_encode_fn: EncodeFn | None = None,
    loss_slot: str | None = None,
):
    """The pure step `train_step(state, batch) -> (state, metrics)`.

    Metrics are device scalars (`loss`, `grad_norm`, `learning_rate`); the loop fetches them
    one step late so the host never waits on the device. `value_and_grad_fn` replaces plain
    autodiff, e.g. with GradCache (same gradients, O(chunk) activation memory).
    `guide_encode_fn`: GIST's frozen guide encoder, run on `state.frozen["guide"]`. `loss_slot`:
    in a run with one loss per dataset, which entry of params["loss"] this step's loss uses.
    """
    embed_fn = make_embed_fn(encode_fn)
    if value_and_grad_fn is None:
        guide_embed_fn = None if guide_encode_fn is None else make_embed_fn(guide_encode_fn)
        value_and_grad_fn = jax.value_and_grad(make_loss_fn(embed_fn, loss_fn, guide_embed_fn))
    if loss_slot is not None:
        value_and_grad_fn = on_loss_slot(value_and_grad_fn, loss_slot)

    def train_step(state: TrainState, batch: dict):
        rng = jax.random.fold_in(state.rng, state.step) if dropout else None
        loss, grads = value_and_grad_fn(state.params, batch, rng, state.frozen)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads)}
        if schedule is not None:
            metrics["learning_rate"] = jnp.asarray(schedule(state.step), jnp.float32)
        new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
        return new_state, metrics

    return train_step


def compile_train_step(train_step, shardings: TrainState, example_batch: dict, mesh: Mesh):
    """`jax.jit` of the step with explicit in/out shardings; the old state is donated.

    Batches are split over ('data', 'fsdp') on their B axis, metrics come back replicated.
    """
    return jax.jit(
        train_step,
        in_shardings=(shardings, batch_shardings(example_batch, mesh)),
        out_shardings=(shardings, replicated(mesh)),
        donate_argnums=0,
    )
