"""TrainState and the pure, jit-compiled training step for siamese encoders.

The step encodes the S stacked sides of a batch `[S, B, L]` with one vmapped encoder call,
scores the `[S, B, D]` embeddings with a loss from the loss library, and applies the optax
update. Parameters are born sharded: the abstract state comes from `jax.eval_shape`, the FSDP
rule in `siamjax.sharding` turns it into shardings, and `jax.jit(init, out_shardings=...)`
creates the optimizer state directly in that layout.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from siamjax import sharding as sharding_lib

TOKEN_KEYS = ("input_ids", "attention_mask", "token_type_ids")

# encode_fn(encoder_params, token_batch [B, L] dict, *, rng=None) -> [B, D]
EncodeFn = Callable[..., jax.Array]
# loss_fn(emb_SxBxD, labels_B or None, loss_params) -> scalar (`siamjax.losses.get_loss`)
LossFn = Callable[..., jax.Array]
# value_and_grad_fn(params, batch, rng) -> (loss, grads): replaces autodiff (GradCache).
ValueAndGradFn = Callable[[Any, dict, jax.Array], tuple[jax.Array, Any]]


@flax.struct.dataclass
class TrainState:
    """Everything that changes during training; a pytree, so it is jit-, shard- and save-able.

    `params` is `{"encoder": <encoder params>, "loss": <learnable loss params or {}>}`;
    `rng` is a raw uint32[2] key, folded with `step` so a resumed run draws the same dropout.
    """

    step: jax.Array
    params: Any
    opt_state: Any
    rng: jax.Array


def init_train_state(params: Any, optimizer: optax.GradientTransformation, rng: jax.Array) -> TrainState:
    """The state at step 0: given params, fresh optimizer moments, the run's base RNG key."""
    return TrainState(
        step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params), rng=rng
    )


def state_shardings(
    params: Any, optimizer: optax.GradientTransformation, mesh: Mesh, fsdp_min_size: int
) -> tuple[TrainState, TrainState]:
    """(abstract state with shardings attached, shardings) without allocating anything.

    The abstract state is what `checkpoint.restore` needs as a target; the shardings are the
    jit in/out shardings of the train step.
    """
    rng = jax.ShapeDtypeStruct((2,), jnp.uint32)
    abstract = jax.eval_shape(lambda p, r: init_train_state(p, optimizer, r), params, rng)
    shardings = sharding_lib.tree_shardings(abstract, mesh, fsdp_min_size)
    abstract = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings
    )
    return abstract, shardings


def create_train_state(
    params: Any,
    optimizer: optax.GradientTransformation,
    rng: jax.Array,
    mesh: Mesh,
    fsdp_min_size: int,
) -> tuple[TrainState, TrainState]:
    """A sharded step-0 TrainState and its shardings.

    Pretrained `params` (host or single-device arrays) are placed straight into their FSDP
    layout with `jax.device_put`; the optimizer state is born sharded by jitting `init` with
    `out_shardings`, so no device ever holds a full copy of the Adam moments.
    """
    _, shardings = state_shardings(params, optimizer, mesh, fsdp_min_size)
    params = jax.device_put(params, shardings.params)
    rng = jax.device_put(jnp.asarray(rng, jnp.uint32), shardings.rng)
    init = jax.jit(
        lambda p, r: init_train_state(p, optimizer, r),
        in_shardings=(shardings.params, shardings.rng),
        out_shardings=shardings,
    )
    return init(params, rng), shardings


def split_sides(batch: dict) -> dict:
    """The encoder inputs of a `[S, B, L]` batch, or of a packed one (+ `text_index`); no labels."""
    missing = [k for k in ("input_ids", "attention_mask") if k not in batch]
    if missing:
        raise KeyError(f"training batch lacks {missing}; it has {sorted(batch)}")
    return {k: batch[k] for k in TOKEN_KEYS + ("text_index",) if k in batch}


def make_embed_fn(encode_fn: EncodeFn):
    """embed(encoder_params, sides [S, B, L] dict, rng or None) -> float32 `[S, B, D]`.

    One vmapped encoder call over the S sides, so every side shares the same parameters and
    their gradients land on one pytree; each side gets its own dropout key. Mixed precision
    and rematerialisation are properties of the encoder (`SentenceEncoder(dtype=, remat=)`).
    """

    def embed(params, sides, rng):
        if rng is None:
            emb_SxBxD = jax.vmap(lambda s: encode_fn(params, s, rng=None))(sides)
        else:
            rngs_S = jax.random.split(rng, sides["input_ids"].shape[0])
            emb_SxBxD = jax.vmap(lambda s, r: encode_fn(params, s, rng=r))(sides, rngs_S)
        return emb_SxBxD.astype(jnp.float32)

    return embed


def make_loss_fn(embed_fn, loss_fn: LossFn):
    """total_loss(params, batch, rng) -> scalar: embed every side, then score with `loss_fn`."""

    def total_loss(params, batch, rng):
        emb_SxBxD = embed_fn(params["encoder"], split_sides(batch), rng)
        return loss_fn(emb_SxBxD, batch.get("labels"), params["loss"])

    return total_loss


def make_train_step(
    encode_fn: EncodeFn,
    loss_fn: LossFn,
    optimizer: optax.GradientTransformation,
    *,
    schedule: optax.Schedule | None = None,
    dropout: bool = True,
    value_and_grad_fn: ValueAndGradFn | None = None,
):
    """The pure step `train_step(state, batch) -> (state, metrics)`.

    Metrics are device scalars (`loss`, `grad_norm`, `learning_rate`); the loop fetches them
    one step late so the host never waits on the device. `value_and_grad_fn` replaces plain
    autodiff, e.g. with GradCache (same gradients, O(chunk) activation memory).
    """
    embed_fn = make_embed_fn(encode_fn)
    if value_and_grad_fn is None:
        value_and_grad_fn = jax.value_and_grad(make_loss_fn(embed_fn, loss_fn))

    def train_step(state: TrainState, batch: dict):
        rng = jax.random.fold_in(state.rng, state.step) if dropout else None
        loss, grads = value_and_grad_fn(state.params, batch, rng)
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
        in_shardings=(shardings, sharding_lib.batch_shardings(example_batch, mesh)),
        out_shardings=(shardings, sharding_lib.replicated(mesh)),
        donate_argnums=0,
    )
