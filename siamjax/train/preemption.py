"""Preemption: SIGTERM (how schedulers announce it) -> every process saves one agreed step and
stops, and rerunning the same command resumes there."""
from __future__ import annotations

import signal

import jax
from jax.experimental import multihost_utils


class PreemptionFlag:
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
            return multihost_utils.reached_preemption_sync_point(step)
        return self.requested

    def __exit__(self, *exc):
        if not self._multi_process:
            signal.signal(signal.SIGTERM, self._previous)
