"""`siamjax train --config configs/x.py[:arg] --workdir runs/x [--config.a.b=value ...]`.

Loads an ml_collections config file the way `ml_collections.config_flags` does, without absl:
import the file, call `get_config(arg)`, then apply `--config.field=value` overrides, each
parsed to the type of the field it replaces. Unknown fields and ill-typed values are reported
with the field name (and close matches) before JAX compiles anything. Restarting the same
command resumes from the newest good checkpoint in the workdir.
"""
from __future__ import annotations

import ast
import difflib
import importlib.util
import pathlib
import sys
from typing import Any

import ml_collections

PREFIX = "--config."
# Groups that take new keys from overrides (keyword arguments passed through, e.g. to a loss).
OPEN_GROUP = "kwargs"
EXIT_CONFIG_ERROR = 2


class ConfigError(ValueError):
    """A config file, field or value that cannot be used; the message says which and why."""


def load_config_file(spec: str) -> ml_collections.ConfigDict:
    """`path/to/file.py[:arg]` -> the ConfigDict returned by the file's `get_config(arg)`."""
    path_str, _, arg = spec.partition(":")
    path = pathlib.Path(path_str)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    module_spec = importlib.util.spec_from_file_location(f"_siamjax_config_{path.stem}", path)
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except Exception as err:
        raise ConfigError(f"{path}: failed to import: {type(err).__name__}: {err}") from err
    if not hasattr(module, "get_config"):
        raise ConfigError(f"{path}: defines no get_config(arg) function")
    try:
        config = module.get_config(arg) if arg else module.get_config()
    except (ValueError, TypeError, KeyError) as err:
        raise ConfigError(f"{spec}: get_config failed: {err}") from err
    if not isinstance(config, ml_collections.ConfigDict):
        raise ConfigError(f"{path}: get_config returned {type(config).__name__}, not a ConfigDict")
    return config


def flat_fields(config: ml_collections.ConfigDict, prefix: str = "") -> dict[str, Any]:
    """{"optim.lr": 2e-5, ...}: every leaf field by its dotted name."""
    out = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, ml_collections.ConfigDict):
            out.update(flat_fields(value, name + "."))
        else:
            out[name] = value
    return out


def _unknown_field(name: str, config: ml_collections.ConfigDict) -> ConfigError:
    """An error naming the unknown field and the closest existing ones."""
    known = list(flat_fields(config))
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
    hint = f"; did you mean {' or '.join(close)}?" if close else ""
    return ConfigError(f"unknown config field {name!r}{hint}")


def parse_value(name: str, text: str, current: Any) -> Any:
    """Parses `text` into the type of the field's current value (bool, int, float, str, tuple...)."""
    if isinstance(current, bool):
        lowered = text.strip().lower()
        if lowered in ("true", "1", "yes"):
            return True
        if lowered in ("false", "0", "no"):
            return False
        raise ConfigError(f"--config.{name}={text}: expected a bool (true/false)")
    if isinstance(current, str):
        return text
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        if current is None:
            return text
        raise ConfigError(
            f"--config.{name}={text}: expected {type(current).__name__}, got an unparsable value"
        ) from None
    if current is None:
        return value
    if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(current, (tuple, list)) and isinstance(value, (tuple, list)):
        return type(current)(value)
    if type(value) is not type(current):
        raise ConfigError(
            f"--config.{name}={text}: expected {type(current).__name__}, got {type(value).__name__}"
        )
    return value


def apply_overrides(config: ml_collections.ConfigDict, overrides: list[str]) -> ml_collections.ConfigDict:
    """Applies `--config.a.b=value` (or `--config.a.b value`) arguments in order, type-checked.

    Only fields that exist may be set, except inside a `kwargs` group, where a new key is
    added with its value parsed as a Python literal (or kept as a string).
    """
    i = 0
    while i < len(overrides):
        arg = overrides[i]
        if not arg.startswith(PREFIX):
            raise ConfigError(f"unrecognised argument {arg!r} (overrides look like --config.optim.lr=3e-5)")
        body = arg[len(PREFIX):]
        if "=" in body:
            name, text = body.split("=", 1)
        elif i + 1 < len(overrides) and not overrides[i + 1].startswith("--"):
            name, text = body, overrides[i + 1]
            i += 1
        else:
            raise ConfigError(f"{arg}: missing a value (write --config.{body}=VALUE)")
        *parents, leaf = name.split(".")
        node = config
        for part in parents:
            if not isinstance(node, ml_collections.ConfigDict) or part not in node:
                raise _unknown_field(name, config)
            node = node[part]
        if not isinstance(node, ml_collections.ConfigDict):
            raise _unknown_field(name, config)
        if leaf not in node and not (parents and parents[-1] == OPEN_GROUP):
            raise _unknown_field(name, config)
        current = node[leaf] if leaf in node else None
        if isinstance(current, ml_collections.ConfigDict):
            raise ConfigError(f"--config.{name} is a group of fields; set one of its fields instead")
        value = parse_value(name, text, current)
        try:
            with node.ignore_type():
                node[leaf] = value
        except Exception as err:  # noqa: BLE001 - ml_collections raises several types
            raise ConfigError(f"--config.{name}={text}: {err}") from err
        i += 1
    return config


def load_config(spec: str, overrides: list[str]) -> ml_collections.ConfigDict:
    """The config from `spec` with `overrides` applied, then locked against new fields."""
    config = apply_overrides(load_config_file(spec), list(overrides))
    config.lock()
    return config


def validate_config(config: ml_collections.ConfigDict) -> None:
    """Every check that needs no compilation: fields, files, mesh and batch divisibility.

    Raises ConfigError naming the field, so a typo costs seconds, not a compile.
    """
    import jax

    from siamjax import losses, optim
    from siamjax import sharding as sharding_lib

    def need(ok: bool, message: str):
        if not ok:
            raise ConfigError(message)

    m, d, o, t = config.model, config.data, config.optim, config.train
    if m.name_or_path:
        local = pathlib.Path(m.name_or_path)
        looks_local = m.name_or_path.startswith((".", "/", "~")) or local.exists()
        need(not looks_local or local.is_dir(), f"model.name_or_path={m.name_or_path!r}: no such folder")
    else:
        need(bool(m.init.tokenizer), "model.name_or_path is empty: set it, or model.init.tokenizer "
             "for a randomly initialised model")
    need(m.dtype in ("float32", "bfloat16"), f"model.dtype={m.dtype!r}: use 'float32' or 'bfloat16'")
    need(m.max_seq_length >= 8, f"model.max_seq_length={m.max_seq_length}: must be >= 8")
    _check_file(d.train, "data.train", required=True)
    _check_file(config.eval.sts, "eval.sts", required=False)
    need(all(b > 0 for b in d.buckets), f"data.buckets={d.buckets}: lengths must be positive")
    need(d.pack_length == 0 or d.pack_length >= m.max_seq_length,
         f"data.pack_length={d.pack_length}: must be 0 (off) or >= model.max_seq_length={m.max_seq_length}")
    need(d.pack_length <= 0 or not t.grad_cache_chunk,
         f"data.pack_length={d.pack_length} with train.grad_cache_chunk={t.grad_cache_chunk}: GradCache "
         "splits the batch by rows, which packed rows do not allow; turn one of them off")
    need(config.loss.name in losses.LOSS_NAMES,
         f"loss.name={config.loss.name!r}: unknown; valid: {', '.join(losses.LOSS_NAMES)}")
    need(o.schedule in optim.SCHEDULES, f"optim.schedule={o.schedule!r}: use one of {optim.SCHEDULES}")
    need(o.lr > 0, f"optim.lr={o.lr}: must be positive")
    need(t.num_steps > 0 or t.num_epochs > 0, "train.num_steps and train.num_epochs are both <= 0")
    need(t.log_every_steps > 0, f"train.log_every_steps={t.log_every_steps}: must be >= 1")
    need(config.checkpoint.every_steps > 0, "checkpoint.every_steps must be >= 1")
    need(config.checkpoint.best_mode in ("max", "min"), "checkpoint.best_mode must be 'max' or 'min'")
    num_devices = config.mesh.num_devices or jax.device_count()
    need(0 < num_devices <= jax.device_count(),
         f"mesh.num_devices={config.mesh.num_devices}: only {jax.device_count()} devices exist")
    need(jax.process_count() == 1 or num_devices == jax.device_count(),
         f"mesh.num_devices={config.mesh.num_devices}: a {jax.process_count()}-process job must use all "
         f"{jax.device_count()} devices (set it to 0), or some processes would have no device to feed")
    try:
        mesh_shape = sharding_lib.resolve_mesh_shape(config.mesh.data, config.mesh.fsdp, num_devices)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    shards = mesh_shape[0] * mesh_shape[1]
    need(t.batch_size > 0 and t.batch_size % shards == 0,
         f"train.batch_size={t.batch_size} is not divisible by the {shards} devices of the mesh "
         f"(mesh.data={mesh_shape[0]} x mesh.fsdp={mesh_shape[1]}); use a multiple of {shards}")
    if t.grad_cache_chunk:
        need(t.batch_size % t.grad_cache_chunk == 0,
             f"train.grad_cache_chunk={t.grad_cache_chunk} must divide train.batch_size={t.batch_size}")


def _check_file(file_cfg, field: str, *, required: bool) -> None:
    """The data file must exist (if required or given) and on_bad_row must be a known policy."""
    if file_cfg.on_bad_row not in ("error", "skip"):
        raise ConfigError(f"{field}.on_bad_row={file_cfg.on_bad_row!r}: use 'error' or 'skip'")
    if file_cfg.tfds.builder:
        builders = ("stsb", "sick", "nli")
        if file_cfg.tfds.builder not in builders:
            raise ConfigError(f"{field}.tfds.builder={file_cfg.tfds.builder!r}: use one of {builders}")
        return
    if not file_cfg.path:
        if required:
            raise ConfigError(f"{field}.path is empty: give the training file (or {field}.tfds.builder)")
        return
    if not pathlib.Path(file_cfg.path).is_file():
        raise ConfigError(f"{field}.path={file_cfg.path!r}: file not found")
    if not file_cfg.columns or any(len(pair) != 2 for pair in file_cfg.columns):
        raise ConfigError(f"{field}.columns must be (role, column) pairs, got {file_cfg.columns}")



def add_parser(subparsers) -> None:
    """Registers the `train` verb."""
    parser = subparsers.add_parser(
        "train",
        help="train (or resume) a sentence encoder from a config file",
        description="Train a sentence encoder as the config file describes. Any field can be "
        "overridden with --config.<group>.<field>=VALUE (e.g. --config.optim.lr=3e-5); rerunning "
        "the same command resumes from the newest good checkpoint in the workdir. Exit codes: 0 "
        "done, 1 non-finite loss, 2 config/data/checkpoint error, 75 preempted (rerun to resume).",
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
    parser.set_defaults(func=handle, accepts_overrides=True)


def handle(args, rest: list[str]) -> int:
    """Loads and validates the config, then trains; returns the process exit code."""
    from siamjax import distributed, train

    try:
        if "://" in args.workdir:  # pathlib would turn gs://b/r into a local folder "gs:/b/r"
            raise ConfigError(f"--workdir {args.workdir}: URLs are not supported; give a folder every "
                              "process can see (a shared filesystem, or the bucket mounted with gcsfuse)")
        config = load_config(args.config, rest)
        try:
            distributed.initialize(distributed.DistributedArgs.from_env(
                coordinator=args.coordinator, num_processes=args.num_processes, process_id=args.process_id))
        except ValueError as err:  # incomplete or inconsistent multi-process flags
            raise ConfigError(str(err)) from err
        validate_config(config)
    except ConfigError as err:
        print(f"siamjax train: config error: {err}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    code = train.main(config, args.workdir)
    if code == 0 and config.export.dir:
        return export_after_training(args.workdir, config.export.dir)
    return code


def export_after_training(workdir: str, directory: str) -> int:
    """Writes the run's best (else last) checkpoint as a sentence-transformers folder.

    `directory` is relative to the workdir unless absolute. In a multi-process job every
    process joins the (collective) orbax restore, each onto one of its own devices, and only
    process 0 writes the folder.
    """
    import jax

    from siamjax import train

    output = pathlib.Path(workdir) / directory
    encoder, step = train.load_trained_encoder(workdir)
    if jax.process_index() == 0:
        encoder.save(output)
        print(f"siamjax train: exported step {step} to {output}")
    return 0
