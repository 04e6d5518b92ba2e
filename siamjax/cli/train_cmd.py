"""`siamjax train --config configs/x.py[:arg] --workdir runs/x [--config.a.b=value ...]`.

Parses the flags, loads the config file with its overrides, joins the multi-process job if
there is one, and calls `siamjax.train.train_and_evaluate`; with `export.dir` set the best (else
last) checkpoint is then written as a sentence-transformers folder. Rerunning the same command
resumes from the newest good checkpoint in the workdir.
"""
from __future__ import annotations

import argparse
import contextlib
import pathlib

import jax

from siamjax.cli.errors import EXIT_OK, EXIT_PREEMPTED, run_verb
from siamjax.cli.logs import LOG_NAME
from siamjax.data import BadRowError
from siamjax.data.sampler import DuplicateTextsError
from siamjax.parallel import DistributedArgs, initialize
from siamjax.train import ConfigError, export_run, load_config, train_and_evaluate, validate
from siamjax.train.workdir import WorkdirLock, check_writable


def add_parser(subparsers) -> None:
    """Registers the `train` verb."""
    parser = subparsers.add_parser(
        "train",
        help="train (or resume) a sentence encoder from a config file",
        description="Train a sentence encoder as the config file describes. Any field can be "
        "overridden with --config.<group>.<field>=VALUE (e.g. --config.optim.lr=3e-5); rerunning "
        "the same command resumes from the newest good checkpoint in the workdir; one run at a time "
        "holds a workdir. Third-party logs go to WORKDIR/log.txt. Exit codes: 0 done, 1 non-finite "
        "loss, 2 config/data/checkpoint error or workdir in use, 3 disk full/read-only/permission, "
        "70 internal error, 75 preempted (rerun to resume).",
    )
    parser.add_argument("--config", required=True, help="configs/x.py[:arg]")
    parser.add_argument("--workdir", required=True, help="run folder: checkpoints, metrics, config")
    group = parser.add_argument_group(
        "multi-process", "only where JAX cannot detect the cluster itself (TPU VM, SLURM and "
        "Kubernetes JobSets need none); flags win over SIAMJAX_COORDINATOR, "
        "SIAMJAX_NUM_PROCESSES and SIAMJAX_PROCESS_ID")
    group.add_argument("--coordinator", default=None, help="HOST:PORT of process 0's coordination service")
    group.add_argument("--num-processes", type=int, default=None, help="processes in the job")
    group.add_argument("--process-id", type=int, default=None, help="this process's id, 0..N-1")
    parser.set_defaults(func=run, accepts_overrides=True)


def _prepare(args: argparse.Namespace, overrides: list[str]):
    """The validated config, with the multi-process job joined; nothing is written yet."""
    if "://" in args.workdir:  # pathlib would turn gs://b/r into a local folder "gs:/b/r"
        raise ConfigError(f"--workdir {args.workdir}: URLs are not supported; give a folder every "
                          "process can see (a shared filesystem, or the bucket mounted with gcsfuse)")
    config = load_config(args.config, overrides)
    try:
        initialize(DistributedArgs.from_env(coordinator=args.coordinator, num_processes=args.num_processes,
                                            process_id=args.process_id))
    except ValueError as err:  # incomplete or inconsistent multi-process flags
        raise ConfigError(str(err)) from err
    validate(config)
    return config


def _train(args: argparse.Namespace, config) -> int:
    # process 0 holds the workdir through training and export (train_and_evaluate re-enters it)
    with WorkdirLock(args.workdir) if jax.process_index() == 0 else contextlib.nullcontext():
        if config.export.dir:
            check_writable(pathlib.Path(args.workdir) / config.export.dir, "export.dir folder")
        result = train_and_evaluate(config, args.workdir)
        if result.preempted:
            return EXIT_PREEMPTED
        print(f"siamjax train: finished at step {result.step}; workdir {args.workdir}")
        if config.export.dir:
            output, step = export_run(args.workdir, pathlib.Path(args.workdir) / config.export.dir)
            if jax.process_index() == 0:
                print(f"siamjax train: exported step {step} to {output}")
    return EXIT_OK


def run(args: argparse.Namespace, rest: list[str]) -> int:
    """Handler of `siamjax train`: checks the config (writing nothing), then trains in the workdir
    with third-party output going to its log.txt, then exports; returns the exit code."""
    hints = {BadRowError: "set data.train.on_bad_row=skip to skip and count such rows",
             DuplicateTextsError: "lower train.batch_size, de-duplicate the file, or set data.no_duplicates=false"}
    prepared = []
    code = run_verb("train", lambda: prepared.append(_prepare(args, rest)), hints=hints, debug=args.debug)
    if code != EXIT_OK:
        return code
    log = pathlib.Path(args.workdir) / LOG_NAME
    return run_verb("train", lambda: _train(args, prepared[0]), hints=hints, debug=args.debug, log_path=log)
