"""The training state: one pytree holding the step, parameters, optimizer state and RNG key,
born sharded.

Parameters are born sharded: the abstract state comes from `jax.eval_shape`, the FSDP rule
(`siamjax.parallel.fsdp`) turns it into shardings, and `jax.jit(init, out_shardings=...)`
creates the optimizer state directly in that layout.
"""
from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from siamjax.encoder.lora import join
from siamjax.parallel import tree_shardings


@flax.struct.dataclass
class TrainState:
    """Everything that changes during training; a pytree, so it is jit-, shard- and save-able.

    `params` is `{"encoder": <encoder params>, "loss": <learnable loss params or {}>}`;
    `rng` is a raw uint32[2] key, folded with `step` so a resumed run draws the same dropout.
    `frozen` holds parameters the step uses but never trains: `"guide"`, GIST's guide encoder,
    and `"encoder"`, the frozen base of a LoRA run (its `params["encoder"]` then holds only the
    adapters); no gradients, no optimizer moments, sharded by the same FSDP rule.
    """

    step: jax.Array
    params: Any
    opt_state: Any
    rng: jax.Array
    frozen: Any = flax.struct.field(default_factory=dict)


def encoder_params(params: Any, frozen: Any) -> Any:
    """The whole encoder's params: the trained ones joined with a LoRA run's frozen base."""
    return join(params["encoder"], (frozen or {}).get("encoder"))


def init_train_state(params: Any, optimizer: optax.GradientTransformation, rng: jax.Array,
                     frozen: Any = None) -> TrainState:
    """The state at step 0: given params, fresh optimizer moments, the run's base RNG key."""
    return TrainState(
        step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params), rng=rng,
        frozen={} if frozen is None else frozen,
    )


def state_shardings(
    params: Any, optimizer: optax.GradientTransformation, mesh: Mesh, fsdp_min_size: int, frozen: Any = None
) -> tuple[TrainState, TrainState]:
    """(abstract state with shardings attached, shardings) without allocating anything.

    The abstract state is what `checkpoint.restore` needs as a target; the shardings are the
    jit in/out shardings of the train step.
    """
    rng = jax.ShapeDtypeStruct((2,), jnp.uint32)
    abstract = jax.eval_shape(lambda p, r, f: init_train_state(p, optimizer, r, f), params, rng, frozen or {})
    shardings = tree_shardings(abstract, mesh, fsdp_min_size)
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
    frozen: Any = None,
) -> tuple[TrainState, TrainState]:
    """A sharded step-0 TrainState and its shardings.

    Pretrained `params` (and `frozen` ones) are placed straight into their FSDP layout with
    `jax.device_put`; the optimizer state is born sharded by jitting `init` with
    `out_shardings`, so no device ever holds a full copy of the Adam moments.
    """
    frozen = {} if frozen is None else frozen
    _, shardings = state_shardings(params, optimizer, mesh, fsdp_min_size, frozen)
    params = jax.device_put(params, shardings.params)
    frozen = jax.device_put(frozen, shardings.frozen)
    rng = jax.device_put(jnp.asarray(rng, jnp.uint32), shardings.rng)
    init = jax.jit(
        lambda p, r, f: init_train_state(p, optimizer, r, f),
        in_shardings=(shardings.params, shardings.rng, shardings.frozen),
        out_shardings=shardings,
    )
    return init(params, rng, frozen), shardings
