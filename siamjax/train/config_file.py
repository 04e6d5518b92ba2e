"""Config files and command-line overrides, the way `ml_collections.config_flags` reads them
(without absl): import the file, call `get_config(arg)`, then apply `--config.field=value`
overrides, each parsed to the type of the field it replaces.

A config file inside a package folder (`configs/` has an `__init__.py`) is imported as a module
of that package, so presets compose by importing each other (`from configs import nli_mnrl`),
as big_vision's configs do; any other file is imported on its own. Unknown fields and
ill-typed values are `ConfigError`s naming the field and its closest existing names.
"""
from __future__ import annotations

import ast
import difflib
import importlib
import importlib.util
import pathlib
import sys
from typing import Any

import ml_collections

from siamjax.train.config import ConfigError

PREFIX = "--config."
# Groups that take new keys from overrides (keyword arguments passed through, e.g. to a loss).
OPEN_GROUP = "kwargs"


def _import_file(path: pathlib.Path):
    """The module of a config file: a package member when its folder is a package."""
    package = path.parent
    if (package / "__init__.py").is_file():
        root = str(package.parent.resolve())
        if root not in sys.path:
            sys.path.insert(0, root)
        module = importlib.import_module(f"{package.name}.{path.stem}")
        if pathlib.Path(module.__file__).resolve() == path.resolve():
            return module
        # a package of that name was imported from elsewhere first: import this file on its own
    spec = importlib.util.spec_from_file_location(f"_siamjax_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_config_file(spec: str) -> ml_collections.ConfigDict:
    """`path/to/file.py[:arg]` -> the ConfigDict returned by the file's `get_config(arg)`."""
    path_str, _, arg = spec.partition(":")
    path = pathlib.Path(path_str)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        module = _import_file(path)
    except Exception as err:  # noqa: BLE001 - any failure of user code in the config file
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
