"""Where training metrics go: metrics.jsonl, TensorBoard event files and a tqdm bar.

Only process 0 writes. `metrics.jsonl` has one JSON object per logged step (append-only; on
resume the records past the restored step are dropped so the file reads as one clean run).
"""
from __future__ import annotations

import json
import math
import pathlib
import time

import jax


class MetricWriter:
    """Logs per-step training metrics (averaged over the logging interval) and evaluations.

    A metric is averaged over the steps of the interval that reported it (per-dataset losses
    `loss/<name>` come only from that dataset's steps).
    """

    def __init__(self, workdir: str | pathlib.Path, *, total_steps: int, start_step: int,
                 batch_size: int, log_every: int, progress_bar: bool = True):
        self.enabled = jax.process_index() == 0
        self.path = pathlib.Path(workdir) / "metrics.jsonl"
        self.batch_size, self.log_every = batch_size, log_every
        self._sums: dict[str, float] = {}
        self._counts: dict[str, int] = {}
        self._last_time, self._last_step = time.perf_counter(), start_step
        self.last_logged: dict[str, float] = {}
        self._tb = self._bar = None
        if not self.enabled:
            return
        truncate_jsonl(self.path, start_step)
        from tensorboardX import SummaryWriter

        self._tb = SummaryWriter(str(pathlib.Path(workdir) / "tb"), purge_step=start_step + 1)
        if progress_bar:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True,
                             desc="train")

    def train_step(self, step: int, metrics: dict[str, float], extra: dict | None = None) -> None:
        """Records one finished step; writes the interval's averages every `log_every` steps."""
        for key, value in metrics.items():
            self._sums[key] = self._sums.get(key, 0.0) + float(value)
            self._counts[key] = self._counts.get(key, 0) + 1
        if self._bar is not None:
            self._bar.update(step - self._bar.n)
        if step % self.log_every:
            return
        now = time.perf_counter()
        record = {k: v / self._counts[k] for k, v in self._sums.items()}
        steps = max(step - self._last_step, 1)
        record["pairs_per_sec"] = steps * self.batch_size / max(now - self._last_time, 1e-9)
        record.update(extra or {})
        self._sums, self._counts = {}, {}
        self._last_time, self._last_step = now, step
        self.last_logged = record
        self.write(step, record, prefix="train/")
        if self._bar is not None:
            self._bar.set_postfix(loss=f"{record['loss']:.4f}", pairs_s=f"{record['pairs_per_sec']:.1f}")

    def write(self, step: int, record: dict, *, prefix: str = "") -> None:
        """Appends `record` at `step` to metrics.jsonl and its numbers to TensorBoard."""
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps({"step": int(step), **record}) + "\n")
        for key, value in record.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                name = key if "/" in key else prefix + key
                self._tb.add_scalar(name, value, int(step))
        self._tb.flush()

    def message(self, text: str) -> None:
        """Prints a line without breaking the progress bar."""
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.write(text)
        else:
            print(text, flush=True)

    def close(self) -> None:
        """Flushes and closes the TensorBoard writer and the bar."""
        if self._bar is not None:
            self._bar.close()
        if self._tb is not None:
            self._tb.close()


def truncate_jsonl(path: pathlib.Path, last_step: int) -> None:
    """Drops records with step > `last_step` (written by a run killed after its last checkpoint)."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line).get("step", 0) <= last_step:
                kept.append(line)
        except json.JSONDecodeError:
            continue  # a line cut off by a kill
    path.write_text("".join(line + "\n" for line in kept))
