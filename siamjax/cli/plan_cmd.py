"""`siamjax plan --config CFG [--config.x=...] --devices N --accelerator v5e|v5p|v6e|h100|h200|a100`.

Compiles the config's real train step for N devices from shapes only, and prints per-device
memory, collectives, FLOPs, a roofline step time and whether the run fits (`siamjax.train.plan`).
Nothing of the model's size is allocated, so an 8B plan runs on a laptop.

Which compiler (`--compiler`): for a TPU accelerator with libtpu installed (`pip install
"jax[tpu]"`), the TPU compiler itself, ahead of time for the slice's topology (`v5e:8x8`), with
no TPU attached: its buffer assignment is the one the pod will run. Otherwise XLA:CPU on N fake
CPU devices (XLA's host platform is told to expose N before JAX starts) stands in for the
accelerator's compiler. libtpu's start-up probes for a TPU VM's metadata; the plan names the
slice itself (TPU_ACCELERATOR_TYPE, TPU_WORKER_*), so the probe stays quiet.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import pathlib
import re

import jax
from jax.experimental import topologies

from siamjax.cli.errors import EXIT_OK, InputError, run_verb
from siamjax.cli.model_args import positive_int
from siamjax.train import load_config
from siamjax.train.accelerators import ACCELERATORS, Accelerator, get_accelerator
from siamjax.train.plan import plan_run, report


def add_parser(subparsers) -> None:
    """Registers the `plan` verb."""
    parser = subparsers.add_parser(
        "plan",
        help="will a run fit on N accelerators, and how fast will it go (compiles, allocates nothing)",
        description="Compile the config's train step for --devices fake devices without allocating the "
        "model, then print per device: parameter, optimizer-state, gradient, batch and XLA temporary "
        "bytes, collective bytes per step by kind, FLOPs, a roofline step time from the accelerator's "
        "published peaks, and whether it fits (with the knob to turn if not). Overrides as for train: "
        "--config.<group>.<field>=VALUE. Exit codes: 0 planned (fits or not), 2 config error, 70 internal.",
    )
    parser.add_argument("--config", required=True, help="configs/x.py[:arg]")
    parser.add_argument("--devices", required=True, type=positive_int, help="chips in the planned mesh")
    parser.add_argument("--accelerator", required=True, choices=sorted(ACCELERATORS),
                        help="chip whose published peaks the estimate uses")
    parser.add_argument("--compiler", choices=("auto", "tpu", "cpu"), default="auto",
                        help="auto (default): the TPU compiler for a TPU accelerator when libtpu is installed, "
                        "XLA:CPU on fake devices otherwise")
    parser.add_argument("--hlo", default=None, metavar="FILE",
                        help="also write the compiled per-device program (HLO text) to FILE, to read or re-count")
    parser.set_defaults(func=run, accepts_overrides=True)


def fake_devices(count: int) -> list:
    """`count` CPU devices: asks XLA's host platform for them (only possible before JAX starts
    its backends, so `siamjax plan` does it first thing)."""
    flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "", os.environ.get("XLA_FLAGS", ""))
    os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={count}".strip()
    devices = jax.devices("cpu")
    if len(devices) < count:
        raise InputError(f"--devices {count}: JAX already started with {len(devices)} CPU devices; run "
                         f"`siamjax plan` in a fresh process")
    return devices[:count]


def tpu_devices(accelerator: Accelerator, count: int) -> list:
    """The chips of `accelerator`'s `count`-chip slice as libtpu describes them (no TPU needed):
    the TPU compiler compiles for them ahead of time."""
    try:
        name = accelerator.topology(count)
    except ValueError as err:
        raise InputError(f"--devices {count} --compiler tpu: {err}") from err
    for key, value in (("TPU_SKIP_MDS_QUERY", "1"), ("TPU_ACCELERATOR_TYPE", "v5litepod-4"),
                       ("TPU_WORKER_HOSTNAMES", "localhost"), ("TPU_WORKER_ID", "0"),
                       ("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")):
        # libtpu's start-up: no metadata server to ask, and no chip to lock (plans run side by side)
        os.environ.setdefault(key, value)
    return list(topologies.get_topology_desc(platform="tpu", topology_name=name).devices)


def target_devices(accelerator: Accelerator, count: int, compiler: str) -> tuple[list, str]:
    """(devices to compile for, which compiler that is, in words)."""
    has_libtpu = importlib.util.find_spec("libtpu") is not None
    if compiler == "auto":
        compiler = "tpu" if accelerator.kind == "tpu" and has_libtpu else "cpu"
    if compiler == "cpu":
        return fake_devices(count), f"XLA:CPU on {count} fake devices, standing in for {accelerator.name}'s compiler"
    if accelerator.kind != "tpu":
        raise InputError(f"--compiler tpu: --accelerator {accelerator.name} is not a TPU")
    if not has_libtpu:
        raise InputError("--compiler tpu needs libtpu (pip install \"jax[tpu]\"); or use --compiler cpu")
    return tpu_devices(accelerator, count), f"the TPU compiler (libtpu), for slice {accelerator.topology(count)}"


def _plan(args: argparse.Namespace, overrides: list[str]) -> int:
    # Nothing runs on an accelerator: with libtpu or CUDA installed, JAX would otherwise start
    # (and on a laptop, fail to start) their backends first.
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    accelerator = get_accelerator(args.accelerator)
    devices, compiler = target_devices(accelerator, args.devices, args.compiler)
    config = load_config(args.config, overrides)
    plan = plan_run(config, accelerator, devices)
    print(f"compiled by {compiler}")
    print(report(plan, config))
    if args.hlo and plan.compiled is not None:
        try:
            pathlib.Path(args.hlo).write_text(plan.compiled.as_text())
        except OSError as err:
            raise InputError(f"--hlo {args.hlo}: {err.strerror}") from err
        print(f"compiled program written to {args.hlo}")
    return EXIT_OK


def run(args: argparse.Namespace, rest: list[str]) -> int:
    """Handler of `siamjax plan`; returns the exit code."""
    return run_verb("plan", lambda: _plan(args, rest), debug=args.debug)
