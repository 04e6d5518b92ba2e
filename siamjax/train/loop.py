"""The training loop: dispatch, log, evaluate, checkpoint, stop on NaN or preemption.

`train_loop` never blocks the device: step N is dispatched before step N-1's metrics are
fetched. Before a checkpoint or evaluation the step's own metrics are checked, so a state with
a non-finite loss is never saved.
"""
from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Callable, Iterator
from typing import Any

import jax
import numpy as np

from siamjax.train import checkpoint as ckpt
from siamjax.train.metrics import MetricWriter
from siamjax.train.state import TrainState, encoder_params


class NonFiniteLossError(RuntimeError):
    """The loss or gradient norm became NaN/Inf; the message names the step and last checkpoint."""


@dataclasses.dataclass
class LoopResult:
    """How the loop ended: final state, last step run, preempted or not, last eval metrics."""

    state: Any
    step: int
    preempted: bool = False
    eval_metrics: dict[str, float] | None = None


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


def _evaluate(evaluate: Callable[[Any], dict[str, float]], state: TrainState, step: int,
              writer: MetricWriter) -> dict[str, float]:
    """Evaluates the encoder parameters of `state` and logs the metrics under eval/."""
    metrics = evaluate(encoder_params(state.params, state.frozen))
    writer.write(step, metrics, prefix="eval/")
    writer.message(f"step {step}: " + ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
    return metrics


def train_loop(
    *,
    state: TrainState,
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
    result = LoopResult(state=state, step=int(jax.device_get(state.step)))
    pending = None  # (step, device metrics, extra) of the step whose metrics are not read yet

    def finish(entry):
        step, metrics, extra = entry
        writer.train_step(step, _checked(step, metrics, manager.latest_step), extra)

    for step in range(result.step + 1, total_steps + 1):
        host_batch = next(batches)
        batch_data_state = data_state()
        extra = {"batch_fingerprint": batch_fingerprint(host_batch)}
        extra.update({"epoch": step / steps_per_epoch} if steps_per_epoch else {})
        extra.update({"dataset": int(host_batch["dataset"])} if "dataset" in host_batch else {})
        state, metrics = train_step(state, to_device(host_batch))
        if pending is not None:
            finish(pending)
        pending, result.step = (step, metrics, extra), step
        last, stop = step == total_steps, stop_requested(step)  # asked every step: multi-process sync
        do_eval = evaluate is not None and (last or (eval_every > 0 and step % eval_every == 0))
        if not (do_eval or last or stop or manager.should_save(step)):
            continue
        finish(pending)
        pending = None
        if do_eval:
            result.eval_metrics = _evaluate(evaluate, state, step, writer)
        best = (result.eval_metrics or {}).get(best_metric) if do_eval else None
        ckpt.save(manager, step, state, batch_data_state, force=True,
                  metrics=None if best is None else {best_metric: best})
        if stop and not last:
            result.preempted = True
            writer.message(f"preemption requested: saved step {step}; rerun the same command to resume")
            break
    if pending is not None:
        finish(pending)
    manager.wait_until_finished()
    result.state = state
    return result
