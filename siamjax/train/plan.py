"""`plan_run`: will this run fit on that pod, and how fast will it go? Answered on a laptop.

The real train step of a config (`builders.build_parts` + `experiment.step_for`, the code
`siamjax train` runs) is built for an N-device mesh of fake CPU devices and AOT-compiled from
abstract values only: the encoder's parameters are `jax.ShapeDtypeStruct`s read from the
model folder's config files, the batch is the largest one the config allows. Nothing of the
model's size is ever allocated. From the compiled per-device program come:

- the state's bytes per device (parameters, frozen weights, optimizer moments: their shard
  shapes under the FSDP rule), the batch's, and XLA's temporary bytes (activations, gradients,
  gathered weights) from `compiled.memory_analysis()`; the peak is arguments + temporaries +
  outputs not aliased to donated arguments;
- collective bytes by kind and matmul FLOPs from the HLO text (`siamjax.parallel.hlo`);
- a roofline step time from the accelerator's published peaks (`siamjax.train.accelerators`):
  the largest of compute, HBM and interconnect time (perfect overlap, a lower bound).

What it cannot see: XLA:CPU's buffer assignment stands in for the TPU/GPU compiler's (they
differ by a few percent, and the CPU compiler keeps attention's [L, L] scores that flash
kernels never store), and the worst-case batch (every text max_seq_length tokens) stands in
for real data. Only the run's own loss (one dataset, or the `loss` group) is planned.
"""
from __future__ import annotations

import dataclasses
import json
import math
import pathlib
import re
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from siamjax.data.records import LABEL_DTYPES, split_roles
from siamjax.data.shards import INDEX_FILE
from siamjax.encoder import rows
from siamjax.encoder.layers import compiling_for, select_attention
from siamjax.losses import TEXT_ID_LOSSES
from siamjax.parallel import batch_shard_count, batch_shardings, make_mesh
from siamjax.parallel.hlo import COLLECTIVE_KINDS, ProgramStats, program_stats
from siamjax.train import builders
from siamjax.train.accelerators import GIB, Accelerator
from siamjax.train.config import ConfigError, train_groups
from siamjax.train.config_checks import validate
from siamjax.train.experiment import step_for
from siamjax.train.step import compile_train_step

# Fraction of HBM a run may plan to use: the runtime, XLA's fragmentation and the compiler's
# differences from XLA:CPU take the rest.
USABLE_FRACTION = 0.95
# The planned program is never run fast: LLVM's optimisations (a third of XLA:CPU's compile
# time) are skipped. Buffer assignment, and so every byte the plan reports, does not depend on them.
_PLAN_COMPILER_OPTIONS = {"xla_backend_optimization_level": 0}
# The TPU compiler checks HBM itself and refuses a program that cannot fit, in one of these
# two messages (libtpu's wording; sizes like "17.63G", binary units).
_COMPILER_OOM = (("peak", re.compile(r"Used ([\d.]+)([KMGT])i?B? of ([\d.]+)([KMGT])i?B? hbm")),
                 ("temp", re.compile(r"HLO temporaries \(([\d.]+)([KMGT])\) exceeds available HBM "
                                     r"\(([\d.]+)([KMGT])\)")))
_UNITS = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


@dataclasses.dataclass(frozen=True)
class Refusal:
    """The accelerator's compiler refused the step as too large for HBM (`what`: "peak", every
    buffer, or "temp", the temporaries alone, is `needed_bytes` of `available_bytes`)."""

    what: str
    needed_bytes: int
    available_bytes: int
    message: str


def compile_or_refusal(lowered, options: dict) -> Any:
    """The compiled step, or the compiler's Refusal when it stops at a program that cannot fit."""
    try:
        return lowered.compile(compiler_options=options)
    except jax.errors.JaxRuntimeError as err:
        text = str(err)
        for what, pattern in _COMPILER_OOM:
            found = pattern.search(text) if "RESOURCE_EXHAUSTED" in text else None
            if found:
                need, unit, have, have_unit = found.groups()
                line = next(line for line in text.splitlines() if pattern.search(line))
                return Refusal(what, int(float(need) * _UNITS[unit]), int(float(have) * _UNITS[have_unit]),
                               line.strip())
        raise


@dataclasses.dataclass(frozen=True)
class Plan:
    """The per-device answer for one config on one mesh and accelerator (bytes, FLOPs, seconds)."""

    accelerator: Accelerator
    mesh: tuple[int, int]              # (data, fsdp)
    attention: str                     # the kernel the accelerator gets
    compiled_attention: str            # the kernel in the compiled program (XLA's on XLA:CPU)
    batch_shapes: dict[str, tuple[int, ...]]
    param_bytes: int                   # trained parameters (encoder + loss)
    frozen_bytes: int                  # never-trained weights the step reads
    opt_state_bytes: int
    grad_bytes: int                    # one gradient per trained parameter shard (inside temp)
    batch_bytes: int
    temp_bytes: int                    # XLA temporaries: activations, gradients, gathered weights
    peak_bytes: int
    collective_bytes: dict[str, float]  # sent per device per step, by kind
    flops: float                       # matmul FLOPs per device per step
    step_seconds: dict[str, float]     # compute, hbm, interconnect, estimate
    global_batch: int
    compiled: Any = dataclasses.field(repr=False, compare=False)  # the step, runnable on real arrays
    state: Any = dataclasses.field(repr=False, compare=False)     # the abstract TrainState it takes
    refusal: Refusal | None = None     # the compiler refused the step (then `compiled` is None)

    @property
    def fits(self) -> bool:
        return self.refusal is None and self.peak_bytes <= USABLE_FRACTION * self.accelerator.hbm_bytes

    @property
    def pairs_per_second(self) -> float:
        return self.global_batch / self.step_seconds["estimate"] if self.step_seconds else 0.0


def batch_sides(config: ml_collections.ConfigDict) -> tuple[int, str | None]:
    """(text sides S, label kind) of the run's training data, from the config alone (the
    data files are not read: a planned run's data may live on the pod)."""
    group = next(iter(train_groups(config.data).values()))
    if group.shards:
        index = json.loads((pathlib.Path(group.shards) / INDEX_FILE).read_text())
        return len(index["sides"]), index["label_kind"]
    if group.tfds.builder == "nli":
        return (3, None) if config.data.nli_to_triplets else (2, "nli")
    if group.tfds.builder:
        return 2, "score"
    sides, label_role = split_roles(dict(group.columns))
    kind = {None: None, "score": "score", "label": "class", "nli_label": "nli", "teacher": "teacher"}[label_role]
    return len(sides), kind


def planned_batch(config: ml_collections.ConfigDict, num_shards: int) -> dict[str, jax.ShapeDtypeStruct]:
    """The largest global batch the config allows: every text `max_seq_length` tokens long
    (padded `[S, B, L]`, or packed rows `[S, shards * r, pack_length]` + `text_index`)."""
    sides, label_kind = batch_sides(config)
    b, length, pack = config.train.batch_size, config.model.max_seq_length, config.data.pack_length
    if label_kind in ("class", "teacher"):
        raise ConfigError(f"siamjax plan: {label_kind} labels need the data read (class count, teacher width); "
                          "plan a pair/triplet or scored-pair run")
    if pack:
        local = b // num_shards
        per_row = pack // length
        row_multiple = max(1, config.train.grad_cache_tokens // pack)
        per_shard = rows.round_rows(-(-local // per_row))
        per_shard = -(-per_shard // row_multiple) * row_multiple
        shapes = {k: (sides, num_shards * per_shard, pack) for k in rows.TOKEN_KEYS}
        shapes["text_index"] = (sides, num_shards, local)
    else:
        shapes = {k: (sides, b, length) for k in rows.TOKEN_KEYS}
    batch = {k: jax.ShapeDtypeStruct(s, jnp.int32) for k, s in shapes.items()}
    if label_kind is not None:
        batch["labels"] = jax.ShapeDtypeStruct((b,), LABEL_DTYPES[label_kind])
    if config.data.text_ids and config.loss.name in TEXT_ID_LOSSES:
        batch["text_ids"] = jax.ShapeDtypeStruct((sides, b), jnp.int32)
    return batch


def shard_bytes(tree) -> int:
    """Bytes one device holds of a tree of sharded ShapeDtypeStructs (device 0's shard)."""
    return sum(math.prod(leaf.sharding.shard_shape(leaf.shape)) * np.dtype(leaf.dtype).itemsize
               for leaf in jax.tree.leaves(tree))


def compile_planned_step(config: ml_collections.ConfigDict, devices: list) -> tuple:
    """(compiled step or the compiler's Refusal, abstract state, abstract sharded batch, mesh,
    encoder): the step `siamjax train` would run, compiled from shapes only on `devices`."""
    if config.loss.guide:
        raise ConfigError("siamjax plan: loss.guide (GIST) loads the guide's weights; plan the run without it")
    mesh = make_mesh(config.mesh.data, config.mesh.fsdp, devices=devices)
    with compiling_for(devices[0].platform):  # TPU devices of a topology: the splash kernel, compiled by Mosaic
        encoder = builders.build_encoder(config.model, config.seed, abstract=True)
    sides, label_kind = batch_sides(config)
    labels = {builders.RUN_LOSS: 3 if label_kind == "nli" else None}
    parts = builders.build_parts(config, mesh, total_steps=max(int(config.train.num_steps), 1),
                                 num_labels=labels, encoder=encoder)
    batch = planned_batch(config, batch_shard_count(mesh))
    shardings = batch_shardings(batch, mesh)
    batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=shardings[k]) for k, v in batch.items()}
    # a Router model is planned with every side on its default route (the heads are small)
    encode_fn = parts.encoder.sides_encode_fn([None] * sides)
    step = compile_train_step(step_for(config, parts, builders.RUN_LOSS, encode_fn), parts.shardings, batch, mesh)
    options = _PLAN_COMPILER_OPTIONS if devices[0].platform == "cpu" else {}
    with jax.set_mesh(mesh):
        compiled = compile_or_refusal(step.lower(parts.abstract, batch), options)
    return compiled, parts.abstract, batch, mesh, encoder


def roofline(stats: ProgramStats, accelerator: Accelerator) -> dict[str, float]:
    """Seconds per step bound by compute, HBM and interconnect on `accelerator`, and the
    estimate: their largest (perfect overlap, so a lower bound on the step time)."""
    seconds = {"compute": stats.matmul_flops / accelerator.bf16_flops,
               "hbm": stats.hbm_bytes / accelerator.hbm_bandwidth,
               "interconnect": sum(stats.collective_bytes.values()) / accelerator.link_bandwidth}
    return seconds | {"estimate": max(seconds.values())}


def plan_run(config: ml_collections.ConfigDict, accelerator: Accelerator, devices: list) -> Plan:
    """Compile `config`'s step for `devices` (fake CPU devices standing in for the accelerator's
    chips) and estimate memory and step time on `accelerator`. Raises ConfigError for a config
    that cannot run, naming the field."""
    config = ml_collections.ConfigDict(config.to_dict())
    config.mesh.num_devices = len(devices)
    validate(config, data=False, devices=len(devices))
    compiled, state, batch, mesh, encoder = compile_planned_step(config, devices)
    held = {"param_bytes": shard_bytes(state.params), "frozen_bytes": shard_bytes(state.frozen),
            "opt_state_bytes": shard_bytes(state.opt_state), "batch_bytes": shard_bytes(batch)}
    if isinstance(compiled, Refusal):  # no program: the compiler's numbers, nothing of the step's traffic
        arguments = sum(held.values())
        temp = compiled.needed_bytes - (arguments if compiled.what == "peak" else 0)
        peak = max(compiled.needed_bytes, arguments + temp)
        stats, seconds, refusal, compiled = ProgramStats(dict.fromkeys(COLLECTIVE_KINDS, 0.0), 0.0, 0), {}, compiled, None
    else:
        memory = compiled.memory_analysis()
        stats, refusal, temp = program_stats(compiled.as_text(), len(devices)), None, memory.temp_size_in_bytes
        peak = (memory.argument_size_in_bytes + memory.temp_size_in_bytes + memory.output_size_in_bytes
                - memory.alias_size_in_bytes)
        seconds = roofline(stats, accelerator)
    return Plan(
        accelerator=accelerator, mesh=(mesh.shape["data"], mesh.shape["fsdp"]),
        attention=select_attention(config.model.attention, accelerator.kind, config.model.dtype,
                                   score_bias=encoder.spec.transformer.SCORE_BIAS),
        compiled_attention=encoder.attention, batch_shapes={k: v.shape for k, v in batch.items()},
        grad_bytes=held["param_bytes"], temp_bytes=temp, peak_bytes=peak, collective_bytes=stats.collective_bytes,
        flops=stats.matmul_flops, step_seconds=seconds, global_batch=config.train.batch_size, compiled=compiled,
        state=state, refusal=refusal, **held)


def advice(plan: Plan, config: ml_collections.ConfigDict) -> list[str]:
    """The knobs that shrink the biggest part of the per-device memory, most effective first."""
    state = plan.param_bytes + plan.frozen_bytes + plan.opt_state_bytes
    data, fsdp = plan.mesh
    tips = []
    if state >= plan.temp_bytes:
        if data > 1:
            tips.append(f"mesh.fsdp={fsdp * data} (shard parameters and moments over all {fsdp * data} devices)")
        if "lora" in config.model and not config.model.lora.get("rank", 0):
            tips.append("model.lora.rank=16 (train adapters only: no moments for the base)")
        if config.model.param_dtype == "float32":
            tips.append("model.param_dtype=bfloat16 (halves the weights)")
    if not config.model.remat:
        tips.append("model.remat=True (one layer's activations, not the stack's)")
    if config.data.pack_length and config.train.grad_cache_tokens:
        tips.append(f"train.grad_cache_tokens={max(config.data.pack_length, config.train.grad_cache_tokens // 2)} "
                    "(smaller GradCache chunks)")
    elif config.data.pack_length:
        tips.append(f"train.grad_cache_tokens={config.data.pack_length * 8} (GradCache over packed rows)")
    elif config.train.grad_cache_chunk:
        tips.append(f"train.grad_cache_chunk={max(1, config.train.grad_cache_chunk // 2)} (smaller GradCache chunks)")
    else:
        tips.append("train.grad_cache_chunk=64 (GradCache: activations of one chunk of pairs)")
    tips.append(f"train.batch_size={config.train.batch_size // 2}")
    return tips


def speed_advice(plan: Plan, config: ml_collections.ConfigDict) -> str | None:
    """What cuts the step time when the interconnect bounds it and GradCache runs under FSDP:
    every chunk gathers the sharded weights again (in both passes), so the all-gather traffic
    grows with the number of chunks, not with the batch. None when that is not the bound."""
    seconds = plan.step_seconds
    data, fsdp = plan.mesh
    chunk, tokens = config.train.grad_cache_chunk, config.train.grad_cache_tokens
    if fsdp == 1 or not (chunk or tokens) or seconds["interconnect"] < max(seconds["compute"], seconds["hbm"]):
        return None
    larger = f"train.grad_cache_tokens={2 * tokens}" if tokens else f"train.grad_cache_chunk={2 * chunk}"
    fewer = f"mesh.data={2 * data} x mesh.fsdp={fsdp // 2}" if fsdp % 2 == 0 else "a smaller mesh.fsdp"
    return (f"interconnect-bound: under FSDP each GradCache chunk gathers the weights again; {larger} "
            f"(half the chunks) or {fewer} (fewer shards to gather from) cut the all-gathers, "
            "if the memory allows")


def _traffic_lines(plan: Plan) -> list[str]:
    if plan.refusal is not None:
        return [f"collectives, FLOPs, step time: not known, the compiler refused the step ({plan.refusal.message})"]
    return ["collectives per step (sent per device): "
            + ", ".join(f"{k} {v / 2**20:.1f} MiB" for k, v in plan.collective_bytes.items() if v),
            f"matmul FLOPs per device per step: {plan.flops:.3e}",
            "roofline step time: " + ", ".join(f"{k} {v * 1e3:.2f} ms" for k, v in plan.step_seconds.items())
            + f" -> {plan.pairs_per_second:,.0f} pairs/s (upper bound)"]


def report(plan: Plan, config: ml_collections.ConfigDict) -> str:
    """The plan as the text `siamjax plan` prints."""
    gib = lambda n: f"{n / GIB:8.3f} GiB"
    data, fsdp = plan.mesh
    lines = [f"mesh: data={data} x fsdp={fsdp} ({data * fsdp} x {plan.accelerator.name}); "
             f"attention kernel on {plan.accelerator.name}: {plan.attention}"
             + ("" if plan.compiled_attention == plan.attention else
                f" (compiled with {plan.compiled_attention} attention, which stores the [L, L] scores: "
                "the temporaries are an upper bound)"),
             "batch: " + ", ".join(f"{k} {list(s)}" for k, s in plan.batch_shapes.items()),
             "per device:",
             f"  parameters (trained)   {gib(plan.param_bytes)}",
             f"  frozen weights         {gib(plan.frozen_bytes)}",
             f"  optimizer state        {gib(plan.opt_state_bytes)}",
             f"  gradients (in temp)    {gib(plan.grad_bytes)}",
             f"  batch                  {gib(plan.batch_bytes)}",
             f"  XLA temporaries        {gib(plan.temp_bytes)}",
             f"  peak                   {gib(plan.peak_bytes)} of {plan.accelerator.hbm_bytes / GIB:.1f} GiB HBM",
             *_traffic_lines(plan)]
    usable = USABLE_FRACTION * plan.accelerator.hbm_bytes
    if plan.refusal is not None:
        lines.append(f"does not fit (the compiler needs {plan.refusal.needed_bytes / GIB:.2f} GiB of "
                     f"{'temporaries' if plan.refusal.what == 'temp' else 'HBM'}, "
                     f"{plan.refusal.available_bytes / GIB:.2f} available); try: " + "; ".join(advice(plan, config)))
    elif plan.fits:
        lines.append(f"fits ({plan.peak_bytes / GIB:.2f} of {usable / GIB:.2f} usable GiB)")
        tip = speed_advice(plan, config)
        lines.extend([tip] if tip else [])
    else:
        lines.append(f"does not fit (needs {plan.peak_bytes / GIB:.2f} GiB of {usable / GIB:.2f} usable); "
                     "try: " + "; ".join(advice(plan, config)))
    return "\n".join(lines)
