"""The CLI's one error policy: library exceptions -> one line on stderr and a documented exit code.

Exit codes (every verb):
  0   done
  1   training stopped on a non-finite loss (NaN/Inf)
  2   bad input: config, flags, data file, model folder, checkpoint (argparse usage errors too)
  75  preempted (SIGTERM): the state was saved; rerun the same command to resume
Library code raises typed exceptions carrying the file, line or field; only this module decides
how they look and which code they get. `--debug` (or SIAMJAX_DEBUG=1) re-raises, so the full
traceback is shown.
"""
from __future__ import annotations

import os
import sys
from collections.abc import Callable

from siamjax.data import BadRowError, DataError
from siamjax.train import CheckpointError, ConfigError, NonFiniteLossError

EXIT_OK, EXIT_NONFINITE, EXIT_INPUT, EXIT_PREEMPTED = 0, 1, 2, 75


class InputError(ValueError):
    """A missing or malformed command-line input the user must fix."""


# exception type -> (exit code, label printed before the message); the first match wins.
_POLICY: tuple[tuple[type[BaseException], int, str], ...] = (
    (NonFiniteLossError, EXIT_NONFINITE, ""),
    (ConfigError, EXIT_INPUT, "config error: "),
    (CheckpointError, EXIT_INPUT, "checkpoint error: "),
    (BadRowError, EXIT_INPUT, "data error: "),
    (DataError, EXIT_INPUT, "data error: "),
    (InputError, EXIT_INPUT, "error: "),
    (ValueError, EXIT_INPUT, "error: "),
    (OSError, EXIT_INPUT, "error: "),
)


def debug_enabled(argv: list[str] | None = None) -> bool:
    """True when tracebacks were asked for (`--debug` before the verb, or SIAMJAX_DEBUG=1)."""
    return os.environ.get("SIAMJAX_DEBUG", "") not in ("", "0") or "--debug" in (argv or [])


def run_verb(verb: str, work: Callable[[], int], *, hints: dict[type, str] | None = None,
             debug: bool = False) -> int:
    """Runs `work()` and returns its exit code, or reports a known exception as one line.

    `hints` adds a verb-specific suggestion after the message of an exception type (e.g. how to
    skip bad rows while training). Unknown exceptions propagate: they are bugs, not input errors.
    """
    try:
        return int(work() or EXIT_OK)
    except tuple(kind for kind, _, _ in _POLICY) as err:
        if debug:
            raise
        code, label = next((c, lbl) for kind, c, lbl in _POLICY if isinstance(err, kind))
        hint = next((h for kind, h in (hints or {}).items() if isinstance(err, kind)), "")
        message = " ".join(str(err).split())  # one line, however the library wrapped it
        print(f"siamjax {verb}: {label}{message}{f' ({hint})' if hint else ''}", file=sys.stderr)
        return code
