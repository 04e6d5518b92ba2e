"""Multi-process start-up on JAX's own multi-controller runtime (`jax.distributed`).

One process per host (TPU VM worker, SLURM task, Kubernetes pod) or per GPU. On TPU VMs,
SLURM and Kubernetes JobSets JAX detects the cluster itself; elsewhere the coordinator address,
process count and id come from flags or the `SIAMJAX_COORDINATOR`, `SIAMJAX_NUM_PROCESSES`,
`SIAMJAX_PROCESS_ID` variables. A single process with none of these runs undistributed.

The heartbeat timeout bounds how long survivors wait for a dead peer: when a process dies the
coordination service notices within `heartbeat_timeout_s` and the others exit with an error
instead of hanging in a collective. `SIAMJAX_HEARTBEAT_TIMEOUT` and `SIAMJAX_INIT_TIMEOUT`
(seconds) override the defaults, e.g. low values in tests, higher ones on flaky networks.
"""
from __future__ import annotations

import dataclasses
import logging
import os

import jax

log = logging.getLogger(__name__)

_ENV = {"coordinator": "SIAMJAX_COORDINATOR", "num_processes": "SIAMJAX_NUM_PROCESSES",
        "process_id": "SIAMJAX_PROCESS_ID"}
_TIMEOUT_ENV = {"heartbeat_timeout_s": "SIAMJAX_HEARTBEAT_TIMEOUT",
                "initialization_timeout_s": "SIAMJAX_INIT_TIMEOUT"}


@dataclasses.dataclass(frozen=True)
class DistributedArgs:
    """How to join the job; all None means "detect the cluster, or run as one process"."""

    coordinator: str | None = None
    num_processes: int | None = None
    process_id: int | None = None
    initialization_timeout_s: int = 300
    heartbeat_timeout_s: int = 60

    @classmethod
    def from_env(cls, **overrides) -> "DistributedArgs":
        """Flags win over `SIAMJAX_*` environment variables."""
        values = {}
        for field, var in {**_ENV, **_TIMEOUT_ENV}.items():
            value = overrides.get(field)
            if value is None and os.environ.get(var):
                value = os.environ[var]
            if value is None and field in _TIMEOUT_ENV:
                continue  # keep the dataclass default
            if value is not None and field != "coordinator":
                try:
                    value = int(value)
                except ValueError as err:
                    raise ValueError(f"{var} / --{field.replace('_', '-')} must be an integer, got {value!r}") from err
                if field in _TIMEOUT_ENV and value <= 0:
                    raise ValueError(f"{var} must be a positive number of seconds, got {value}")
            values[field] = value
        rest = {k: v for k, v in overrides.items() if k not in values and v is not None}
        return cls(**values, **rest)


def detected_cluster() -> str | None:
    """Name of a cluster environment JAX initialises by itself, if this process runs in one."""
    if os.environ.get("TPU_WORKER_HOSTNAMES") or os.environ.get("CLOUD_TPU_TASK_ID"):
        return "tpu"
    if int(os.environ.get("SLURM_NTASKS", "1") or 1) > 1 and "SLURM_JOB_ID" in os.environ:
        return "slurm"
    if os.environ.get("JOBSET_NAME") and os.environ.get("JAX_COORDINATOR_ADDRESS"):
        return "kubernetes"
    return None


def initialize(args: DistributedArgs) -> bool:
    """Join the multi-process job if there is one; returns True when running distributed."""
    explicit = [args.coordinator, args.num_processes, args.process_id]
    timeouts = dict(initialization_timeout=args.initialization_timeout_s,
                    heartbeat_timeout_seconds=args.heartbeat_timeout_s)
    if any(v is not None for v in explicit):
        if not all(v is not None for v in explicit):
            raise ValueError("multi-process launch needs all of --coordinator, --num-processes and "
                             f"--process-id (or {', '.join(_ENV.values())}); got coordinator={args.coordinator}, "
                             f"num_processes={args.num_processes}, process_id={args.process_id}")
        if not 0 <= args.process_id < args.num_processes:
            raise ValueError(f"process id {args.process_id} is outside 0..{args.num_processes - 1}")
        if args.num_processes == 1:
            return False
        jax.distributed.initialize(coordinator_address=args.coordinator, num_processes=args.num_processes,
                                   process_id=args.process_id, **timeouts)
    elif detected_cluster() is not None:
        log.info("detected a %s cluster; letting jax.distributed find its peers", detected_cluster())
        jax.distributed.initialize(**timeouts)
    else:
        return False
    log.info("process %d of %d, %d local / %d global devices", jax.process_index(), jax.process_count(),
             jax.local_device_count(), jax.device_count())
    return jax.process_count() > 1
