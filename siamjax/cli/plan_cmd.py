"""`siamjax plan --config CFG [--config.x=...] --devices N --accelerator v5e|v5p|v6e|h100|h200|a100`.

Compiles the config's real train step for N devices (N fake CPU devices: XLA's host platform
is told to expose N before JAX starts) from shapes only, and prints per-device memory,
collectives, FLOPs, a roofline step time and whether the run fits (`siamjax.train.plan`).
Nothing of the model's size is allocated, so an 8B plan runs on a laptop.
"""
from __future__ import annotations

import argparse
import os
import re

import jax

from siamjax.cli.errors import EXIT_OK, InputError, run_verb
from siamjax.cli.model_args import positive_int
from siamjax.train import load_config
from siamjax.train.accelerators import ACCELERATORS, get_accelerator
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


def _plan(args: argparse.Namespace, overrides: list[str]) -> int:
    devices = fake_devices(args.devices)
    config = load_config(args.config, overrides)
    plan = plan_run(config, get_accelerator(args.accelerator), devices)
    print(report(plan, config))
    return EXIT_OK


def run(args: argparse.Namespace, rest: list[str]) -> int:
    """Handler of `siamjax plan`; returns the exit code."""
    return run_verb("plan", lambda: _plan(args, rest), debug=args.debug)
