"""The CLI's one error policy: library exceptions -> one line on stderr and a documented exit code.

Exit codes (every verb):
  0   done
  1   training stopped on a non-finite loss (NaN/Inf)
  2   bad input: config, flags, data file, model folder, checkpoint, a workdir in use
      (argparse usage errors too)
  3   storage: disk full, read-only folder, permission denied (checked before the work where
      possible: the workdir and output folders are tested first)
  70  an internal error, i.e. a bug in siamjax: the line names the exception; `--debug` shows it
  75  preempted (SIGTERM): the state was saved; rerun the same command to resume
Library code raises typed exceptions carrying the file, line or field; only this module decides
how they look and which code they get. `--debug` (or SIAMJAX_DEBUG=1) re-raises, so the full
traceback is shown, and leaves third-party logging on the terminal.
"""
from __future__ import annotations

import errno
import os
import pathlib
import sys
import traceback
from collections.abc import Callable

from siamjax.cli.logs import captured_output
from siamjax.data import BadRowError, DataError
from siamjax.encoder.verify import ModelFolderError
from siamjax.train import CheckpointError, ConfigError, NonFiniteLossError
from siamjax.train.workdir import STORAGE_ERRNOS, WorkdirBusyError, storage_errno

EXIT_OK, EXIT_NONFINITE, EXIT_INPUT, EXIT_STORAGE, EXIT_INTERNAL, EXIT_PREEMPTED = 0, 1, 2, 3, 70, 75


class InputError(ValueError):
    """A missing or malformed command-line input the user must fix."""


# exception type -> (exit code, label printed before the message); the first match wins.
_POLICY: tuple[tuple[type[BaseException], int, str], ...] = (
    (NonFiniteLossError, EXIT_NONFINITE, ""),
    (ConfigError, EXIT_INPUT, "config error: "),
    (CheckpointError, EXIT_INPUT, "checkpoint error: "),
    (WorkdirBusyError, EXIT_INPUT, "error: "),
    (BadRowError, EXIT_INPUT, "data error: "),
    (DataError, EXIT_INPUT, "data error: "),
    (ModelFolderError, EXIT_INPUT, "model error: "),
    (InputError, EXIT_INPUT, "error: "),
    (ValueError, EXIT_INPUT, "error: "),
    (OSError, EXIT_INPUT, "error: "),
)


def debug_enabled(argv: list[str] | None = None) -> bool:
    """True when tracebacks were asked for (`--debug` before the verb, or SIAMJAX_DEBUG=1)."""
    return os.environ.get("SIAMJAX_DEBUG", "") not in ("", "0") or "--debug" in (argv or [])


def _storage_message(err: BaseException, code: int) -> str:
    """"no space left on DIR" / "DIR: read-only file system" for a storage failure."""
    chain, where = err, None
    while chain is not None and where is None:
        where = getattr(chain, "filename", None)
        chain = chain.__cause__ or chain.__context__
    if where is not None:
        path = pathlib.Path(where)
        where = str(path if path.is_dir() or not path.parent.is_dir() else path.parent)
    if code == errno.ENOSPC:
        return f"no space left on {where or 'the device'}"
    what = getattr(err, "strerror", None)
    detail = f" ({what})" if what and what != os.strerror(code) else ""
    return f"{where or 'a file'}: {STORAGE_ERRNOS[code].lower()}{detail}"


def _classify(err: Exception) -> tuple[int, str]:
    """(exit code, one-line message without the verb) for an exception."""
    typed = tuple(kind for kind, _, _ in _POLICY[:-2])  # siamjax's own errors: their message stands
    code = None if isinstance(err, typed) else storage_errno(err)
    if code is not None:
        return EXIT_STORAGE, _storage_message(err, code)
    for kind, exit_code, label in _POLICY:
        if isinstance(err, kind):
            return exit_code, label + " ".join(str(err).split())  # one line, however it was wrapped
    return EXIT_INTERNAL, (f"internal error: {type(err).__name__}: {' '.join(str(err).split())[:300]} "
                           "(a bug in siamjax; rerun with --debug for the traceback)")


def run_verb(verb: str, work: Callable[[], int], *, hints: dict[type, str] | None = None,
             debug: bool = False, log_path: str | os.PathLike | None = None) -> int:
    """Runs `work()` and returns its exit code, or reports its exception as one line on stderr.

    `hints` adds a verb-specific suggestion after the message of an exception type (e.g. how to
    skip bad rows while training). `log_path` (the workdir's log.txt) receives third-party
    output while `work` runs (`siamjax.cli.logs`), and the traceback of a failure.
    """
    if debug:
        return int(work() or EXIT_OK)
    try:
        with captured_output(log_path) as log:
            try:
                return int(work() or EXIT_OK)
            except Exception:
                if log is not None:
                    log.write(traceback.format_exc())
                raise
    except Exception as err:  # noqa: BLE001 - every failure becomes one line and an exit code
        code, message = _classify(err)
        hint = next((h for kind, h in (hints or {}).items() if isinstance(err, kind)), "")
        where = f" (details in {log_path})" if log_path is not None and code == EXIT_INTERNAL else ""
        print(f"siamjax {verb}: {message}{f' ({hint})' if hint else ''}{where}", file=sys.stderr)
        return code
