"""Training orchestration: config -> mesh -> data -> sharded state -> compiled step -> loop.

`train_and_evaluate(config, workdir)` is the only library function that reads a config; it
turns the config into typed objects and hands them to `train_loop`, which never blocks the
device: step N is dispatched before step N-1's metrics are fetched. Metrics go to
`metrics.jsonl` and TensorBoard (`tb/`), a tqdm bar shows loss, pairs/s and ETA, STS dev
Spearman is evaluated periodically, checkpoints are kept by `siamjax.checkpoint`, and a
non-finite loss stops the run before it can be saved. Rerunning the same command resumes.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import pathlib
import signal
import zlib
from collections.abc import Callable, Iterator
from typing import Any

import jax
import ml_collections
import numpy as np

from siamjax import checkpoint as ckpt
from siamjax import sharding as sharding_lib
from siamjax import train_step as ts
from siamjax.cli.train_cmd import ConfigError, validate_config
from siamjax.run_metrics import MetricWriter
from siamjax.train_setup import (build_encoder, build_loss, build_optimizer, in_memory, length_grouped,
                                 make_sts_evaluate, read_file_dataset, total_steps_for)

log = logging.getLogger(__name__)
EXIT_NONFINITE, EXIT_PREEMPTED = 1, 75
RUN_INFO = "run_info.json"  # facts about the run the config alone does not fix (class count)


class NonFiniteLossError(RuntimeError):
    """The loss or gradient norm became NaN/Inf; the message names the step and last checkpoint."""


@dataclasses.dataclass
class LoopResult:
    """How the loop ended: final state, last step run, preempted or not, last eval metrics."""

    state: Any
    step: int
    preempted: bool = False
    eval_metrics: dict[str, float] | None = None


# ----------------------------------------------------------------------------- the loop
def batch_fingerprint(batch: dict) -> int:
    """crc32 of a host batch's arrays: lets a resumed run prove it sees the same batches."""
    crc = 0
    for key in sorted(batch):
        crc = zlib.crc32(np.ascontiguousarray(batch[key]).tobytes(), crc)
    return crc


def _checked(step: int, metrics: dict, last_good: Callable[[], int | None]) -> dict[str, float]:
    """Host copies of a step's metrics; raises NonFiniteLossError on NaN/Inf loss or gradient."""
    values = {k: float(v) for k, v in jax.device_get(metrics).items()}
    bad = {k: v for k, v in values.items() if k in ("loss", "grad_norm") and not np.isfinite(v)}
    if bad:
        good = last_good()
        where = f"checkpoint step {good} is kept" if good is not None else "no checkpoint was saved"
        raise NonFiniteLossError(
            f"non-finite {', '.join(f'{k}={v}' for k, v in bad.items())} at step {step}; stopping "
            f"without saving it ({where}). Lower optim.lr, check the data, or use model.dtype=float32."
        )
    return values


def train_loop(
    *,
    state: ts.TrainState,
    train_step: Callable,
    batches: Iterator[dict],
    data_state: Callable[[], Any],
    to_device: Callable[[dict], dict],
    manager,
    total_steps: int,
    writer: MetricWriter,
    evaluate: Callable[[Any], dict[str, float]] | None = None,
    eval_every: int = 0,
    best_metric: str | None = None,
    stop_requested: Callable[[int], bool] = lambda step: False,
    steps_per_epoch: int = 0,
) -> LoopResult:
    """Runs steps `state.step + 1 .. total_steps`; evaluates, logs and checkpoints on the way.

    Step N is dispatched before step N-1's metrics are read, so the host prepares the next
    batch while the device computes. Before a checkpoint or evaluation the step's own metrics
    are checked, so a NaN state is never saved. `data_state()` is the iterator state after
    the batch just taken; it is saved with the state so a restart sees the same next batch.
    `stop_requested(step)` is asked at every step; True (preemption) saves that step and stops.
    """
    start = int(jax.device_get(state.step))
    result = LoopResult(state=state, step=start)
    pending = None

    def finish(entry):
        step, metrics, extra = entry
        values = _checked(step, metrics, manager.latest_step)
        writer.train_step(step, values, extra)

    for step in range(start + 1, total_steps + 1):
        host_batch = next(batches)
        batch_data_state = data_state()
        extra = {"batch_fingerprint": batch_fingerprint(host_batch)}
        if steps_per_epoch:
            extra["epoch"] = step / steps_per_epoch
        state, metrics = train_step(state, to_device(host_batch))
        if pending is not None:
            finish(pending)
        pending = (step, metrics, extra)
        result.step = step
        last = step == total_steps
        stop = stop_requested(step)  # called at every step (the multi-process sync needs that)
        do_eval = evaluate is not None and (last or (eval_every > 0 and step % eval_every == 0))
        do_save = last or do_eval or stop or manager.should_save(step)
        if not (do_eval or do_save):
            continue
        finish(pending)
        pending = None
        saved_metrics = None
        if do_eval:
            result.eval_metrics = evaluate(state.params["encoder"])
            writer.write(step, result.eval_metrics, prefix="eval/")
            writer.message(f"step {step}: " + ", ".join(f"{k}={v:.4f}" for k, v in result.eval_metrics.items()))
            if best_metric in result.eval_metrics:
                saved_metrics = {best_metric: result.eval_metrics[best_metric]}
        ckpt.save(manager, step, state, batch_data_state, metrics=saved_metrics, force=True)
        if stop and not last:
            result.preempted = True
            writer.message(f"preemption requested: saved step {step}; rerun the same command to resume")
            break
    if pending is not None:
        finish(pending)
    manager.wait_until_finished()
    result.state = state
    return result


# ----------------------------------------------------------------------------- entry points
def _write_config(config: ml_collections.ConfigDict, workdir: pathlib.Path) -> None:
    """Saves the resolved config (export reads it); warns when a resume changed it."""
    path = workdir / "config.json"
    text = config.to_json_best_effort(indent=2, sort_keys=True)
    if jax.process_index() != 0:  # only process 0 reads or writes it (no torn reads)
        return
    if path.exists() and json.loads(path.read_text()) != json.loads(text):
        log.warning("%s differs from the current config; resuming with the current one", path)
        print(f"warning: {path} differs from the current config (resuming with the current one)")
    path.write_text(text)


def _write_json(path: pathlib.Path, record: dict) -> None:
    """Writes a small JSON file from process 0."""
    if jax.process_index() == 0:
        path.write_text(json.dumps(record, indent=2))


class _PreemptionFlag:
    """SIGTERM (how schedulers announce preemption) -> save at an agreed step and stop.

    One process: a Python SIGTERM handler sets a flag read at the next step. Several
    processes: each may see its SIGTERM at a different step, but the save is collective, so
    they must stop at the same one; JAX's preemption sync manager (started by
    `jax.distributed.initialize`, which then owns SIGTERM) picks that step for all of them.
    """

    def __init__(self):
        self.requested = False
        self._previous = None
        self._multi_process = False

    def __enter__(self):
        self._multi_process = jax.process_count() > 1
        if not self._multi_process:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum, frame):
        self.requested = True

    def reached(self, step: int) -> bool:
        """True at the step where every process should save and stop; call it at every step."""
        if self._multi_process:
            from jax.experimental import multihost_utils

            return multihost_utils.reached_preemption_sync_point(step)
        return self.requested

    def __exit__(self, *exc):
        if not self._multi_process:
            signal.signal(signal.SIGTERM, self._previous)


def _read_train_set(config):
    """The training dataset (NLI files turned into triplets when asked) and its class count."""
    train_set = read_file_dataset(config.data.train)
    if config.data.nli_to_triplets:
        from siamjax.data import nli_to_triplets

        train_set = nli_to_triplets(in_memory(train_set), seed=config.seed, symmetric=config.data.nli_symmetric)
    num_labels = None
    if train_set.label_kind == "nli":
        from siamjax.data.records import NLI_LABELS

        num_labels = len(NLI_LABELS)
    elif train_set.label_kind == "class":
        num_labels = int(in_memory(train_set).labels.max()) + 1
    return train_set, num_labels


def _setup(config, mesh, *, total_steps: int, num_labels: int | None) -> dict[str, Any]:
    """Encoder, loss, optimizer and abstract/sharded state layout, shared by train and export."""
    encoder = build_encoder(config.model, config.seed)
    loss_rng, dropout_rng = jax.random.split(jax.random.PRNGKey(config.seed))
    loss_fn, loss_params = build_loss(config.loss, mesh, encoder.embedding_dim, num_labels, loss_rng)
    optimizer, schedule = build_optimizer(config.optim, total_steps)
    params = {"encoder": encoder.params, "loss": loss_params}
    abstract, shardings = ts.state_shardings(params, optimizer, mesh, config.mesh.fsdp_min_size)
    return dict(encoder=encoder, loss_fn=loss_fn, params=params, optimizer=optimizer,
                schedule=schedule, abstract=abstract, shardings=shardings, dropout_rng=dropout_rng)


def _manager(config, workdir: pathlib.Path, *, read_only: bool = False):
    c = config.checkpoint
    return ckpt.make_manager(
        workdir / "checkpoints", save_interval_steps=c.every_steps, max_to_keep=c.keep,
        keep_best=c.keep_best, best_metric=c.best_metric or None, best_mode=c.best_mode,
        async_save=c.async_save, read_only=read_only,
    )


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | pathlib.Path) -> LoopResult:
    """Trains (or resumes) the run in `workdir` as `config` describes; returns how it ended."""
    from siamjax.data import make_train_iterator, to_global_array

    validate_config(config)
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    _write_config(config, workdir)
    devices = jax.devices()[: config.mesh.num_devices or None]
    mesh = sharding_lib.make_mesh(config.mesh.data, config.mesh.fsdp, devices=devices)
    t, d = config.train, config.data
    with jax.set_mesh(mesh), _PreemptionFlag() as preemption:
        train_set, num_labels = _read_train_set(config)
        total = total_steps_for(t, len(train_set))
        _write_json(workdir / RUN_INFO, {"num_labels": num_labels, "total_steps": total})
        parts = _setup(config, mesh, total_steps=total, num_labels=num_labels)
        encoder = parts["encoder"]
        if getattr(train_set, "num_bad_rows", 0) and jax.process_index() == 0:
            print(f"data: skipped {train_set.num_bad_rows} bad row(s) of {train_set.name} "
                  f"(data.train.on_bad_row=skip)", flush=True)
        steps_per_epoch = max(1, len(train_set) // t.batch_size)
        shuffle = d.shuffle
        if d.group_by_length:
            epochs = -(-total // steps_per_epoch)
            train_set = length_grouped(in_memory(train_set), encoder.tokenizer, t.batch_size, epochs, config.seed)
            shuffle = False
        manager = _manager(config, workdir)
        restored = ckpt.restore_latest(manager, parts["abstract"])
        if restored is None:
            state, _ = ts.create_train_state(parts["params"], parts["optimizer"], parts["dropout_rng"],
                                             mesh, config.mesh.fsdp_min_size)
        else:
            state = restored[1]
        iterator = make_train_iterator(
            [train_set], encoder.tokenizer, global_batch_size=t.batch_size,
            max_seq_length=config.model.max_seq_length, seed=config.seed, shuffle=shuffle,
            no_duplicates=d.no_duplicates, buckets=tuple(d.buckets), prefetch=d.prefetch,
            pack_length=d.pack_length,
            num_shards=sharding_lib.batch_shard_count(mesh) // jax.process_count(),
        )
        if restored is not None:
            iterator.set_state(restored[2])
        value_and_grad_fn = None
        if t.grad_cache_chunk:
            from siamjax.gradcache import make_grad_cache_value_and_grad

            value_and_grad_fn = make_grad_cache_value_and_grad(encoder.encode_fn, parts["loss_fn"], t.grad_cache_chunk)
        step_fn = ts.make_train_step(encoder.encode_fn, parts["loss_fn"], parts["optimizer"],
                                     schedule=parts["schedule"], dropout=t.dropout,
                                     value_and_grad_fn=value_and_grad_fn)
        example = {k: np.zeros((1, 1, 1), np.int32) for k in ts.TOKEN_KEYS + ("text_index",) * bool(d.pack_length)}
        if train_set.label_kind is not None:
            example["labels"] = np.zeros((1,), np.float32)
        compiled = ts.compile_train_step(step_fn, parts["shardings"], example, mesh)
        evaluate = None
        if config.eval.sts.path:
            evaluate = make_sts_evaluate(config.eval.sts, encoder, config.eval.batch_size)
        writer = MetricWriter(workdir, total_steps=total, start_step=int(jax.device_get(state.step)),
                              batch_size=t.batch_size, log_every=t.log_every_steps,
                              progress_bar=t.progress_bar)
        if restored is not None:
            writer.message(f"resumed from {manager.directory}/{restored[0]}")
        try:
            result = train_loop(
                state=state, train_step=compiled, batches=iterator, data_state=iterator.get_state,
                to_device=lambda b: to_global_array(b, mesh, sharding_lib.BATCH_AXES),
                manager=manager, total_steps=total, writer=writer, evaluate=evaluate,
                eval_every=config.eval.every_steps, best_metric=config.checkpoint.best_metric,
                stop_requested=preemption.reached, steps_per_epoch=steps_per_epoch,
            )
        finally:
            writer.close()
            manager.wait_until_finished()
            manager.close()
            iterator.close()
    return result


def main(config: ml_collections.ConfigDict, workdir: str | pathlib.Path) -> int:
    """`train_and_evaluate` with exit codes: 0 done, 1 non-finite loss, 2 config, data or
    checkpoint error, 75 preempted (rerun the same command to resume)."""
    import sys

    from siamjax.data import BadRowError

    try:
        result = train_and_evaluate(config, workdir)
    except ConfigError as err:
        print(f"siamjax train: config error: {err}", file=sys.stderr)
        return 2
    except NonFiniteLossError as err:
        print(f"siamjax train: {err}", file=sys.stderr)
        return EXIT_NONFINITE
    except ckpt.CheckpointError as err:
        print(f"siamjax train: checkpoint error: {err}", file=sys.stderr)
        return 2
    except BadRowError as err:
        print(f"siamjax train: data error: {err} (set data.train.on_bad_row=skip to skip and count "
              f"such rows)", file=sys.stderr)
        return 2
    if result.preempted:
        return EXIT_PREEMPTED
    print(f"siamjax train: finished at step {result.step}; workdir {workdir}")
    return 0


def load_trained_encoder(workdir: str | pathlib.Path, step: int | None = None):
    """(SentenceEncoder with the trained weights, step) from a run folder.

    Picks the best checkpoint by `checkpoint.best_metric` if any has one, else the latest;
    the checkpoint's fingerprint is verified. Works on any device count (restores onto one).
    """
    workdir = pathlib.Path(workdir)
    config_path = workdir / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path} not found: is {workdir} a siamjax run folder?")
    config = ml_collections.ConfigDict(json.loads(config_path.read_text()))
    mesh = sharding_lib.make_mesh(1, 1, devices=jax.local_devices()[:1])
    with jax.set_mesh(mesh):
        info = json.loads((workdir / RUN_INFO).read_text())
        parts = _setup(config, mesh, total_steps=1, num_labels=info["num_labels"])
        manager = _manager(config, workdir, read_only=True)
        try:
            step = ckpt.best_or_latest_step(manager) if step is None else step
            if step is None:
                raise FileNotFoundError(f"no checkpoint in {workdir / 'checkpoints'}")
            state, _ = ckpt.restore_step(manager, step, parts["abstract"])
        finally:
            manager.close()
    params = jax.tree.map(np.asarray, jax.device_get(state.params["encoder"]))
    return parts["encoder"].with_params(params), step
