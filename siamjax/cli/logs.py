"""Keeping third-party noise off the terminal: a verb that owns a workdir runs with everything but
its own output going to `<workdir>/log.txt`.

Why at the file-descriptor level: orbax, TensorStore, absl and XLA log from C++ and from
background threads straight to fd 2 (a corrupt checkpoint or a full disk printed thousands of
lines), which no Python logging setting reaches. Inside `captured_output(log)`:
- fd 2 is a pipe to a small helper process that appends everything to the log and passes
  fatal C++ log lines (glog's `F<date>` lines, e.g. "the JAX distributed service detected
  fatal errors") on to the terminal; being a separate process, it still delivers them when
  the C++ code aborts this one. `sys.stderr` keeps writing to the terminal, so progress bars
  and the CLI's one error line are shown;
- Python logging (every logger) goes to the log; records of siamjax's own loggers at WARNING
  and above, and warnings raised from siamjax code, are also printed as one `warning: ...`
  line on stdout, so the user still hears about skipped rows or a corrupt checkpoint;
- "Exception ignored" reports and uncaught exceptions in threads go to the log.
"""
from __future__ import annotations

import contextlib
import logging
import os
import pathlib
import subprocess
import sys
import threading
import traceback
import warnings
from collections.abc import Iterator
from typing import TextIO

LOG_NAME = "log.txt"  # in the workdir
_PACKAGE_DIR = str(pathlib.Path(__file__).resolve().parents[1])


class _OwnWarnings(logging.Handler):
    """Echoes siamjax's own WARNING+ records as one stdout line each."""

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.startswith("siamjax") and record.levelno >= logging.WARNING:
            print("warning: " + " ".join(record.getMessage().split()), file=sys.stdout, flush=True)


def _show_warning(log_file: TextIO):
    def show(message, category, filename, lineno, file=None, line=None):
        text = " ".join(str(message).split())
        log_file.write(warnings.formatwarning(message, category, filename, lineno, line))
        log_file.flush()
        if str(filename).startswith(_PACKAGE_DIR):
            print(f"warning: {text}", file=sys.stdout, flush=True)
    return show


# The helper behind fd 2: log every line, echo fatal ones (glog "F1202 10:11:12.123456 ...").
_TEE = r"""
import re, sys
fatal = re.compile(rb"^F\d{4} \d\d:\d\d:\d\d|^Fatal Python error")
with open(sys.argv[1], "ab", buffering=0) as log:
    for line in sys.stdin.buffer:
        log.write(line)
        if fatal.search(line):
            sys.stderr.buffer.write(line)
            sys.stderr.flush()
"""


def _start_tee(log_path: str | os.PathLike, terminal_fd: int) -> tuple[subprocess.Popen, int]:
    """(helper process, write end of its pipe) for fd 2."""
    read_end, write_end = os.pipe()
    helper = subprocess.Popen([sys.executable, "-c", _TEE, str(log_path)], stdin=read_end,
                              stdout=subprocess.DEVNULL, stderr=terminal_fd, close_fds=True)
    os.close(read_end)
    return helper, write_end


@contextlib.contextmanager
def captured_output(log_path: str | os.PathLike | None) -> Iterator[TextIO | None]:
    """Routes fd 2, logging, warnings and unraisable/thread exceptions to `log_path` (appended);
    yields the open log (None and no change when `log_path` is None)."""
    if log_path is None:
        yield None
        return
    pathlib.Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    log_file = open(log_path, "a", buffering=1, encoding="utf-8", errors="replace")
    sys.stdout.flush()
    sys.stderr.flush()
    terminal_fd = os.dup(2)
    helper, write_end = _start_tee(log_path, terminal_fd)
    os.dup2(write_end, 2)
    os.close(write_end)
    saved = (sys.stderr, logging.root.handlers[:], logging.root.level, sys.unraisablehook, threading.excepthook)
    terminal = open(terminal_fd, "w", buffering=1, encoding="utf-8", errors="replace", closefd=False)
    sys.stderr = terminal
    handler = logging.StreamHandler(log_file)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.root.handlers = [handler, _OwnWarnings()]
    logging.root.setLevel(logging.INFO)
    sys.unraisablehook = lambda info: log_file.write(
        f"{info.err_msg or 'Exception ignored in'}: {info.object!r}\n"
        + "".join(traceback.format_exception(info.exc_type, info.exc_value, info.exc_traceback)))
    threading.excepthook = lambda args: log_file.write(
        f"exception in thread {args.thread.name if args.thread else '?'}:\n"
        + "".join(traceback.format_exception(args.exc_type, args.exc_value, args.exc_traceback)))
    try:
        with warnings.catch_warnings():  # restores showwarning afterwards
            warnings.showwarning = _show_warning(log_file)
            yield log_file
    finally:
        terminal.close()
        log_file.flush()
        os.dup2(terminal_fd, 2)  # closes the pipe's last write end here: the helper drains and exits
        os.close(terminal_fd)
        try:
            helper.wait(timeout=10)
        except subprocess.TimeoutExpired:  # a child process of ours still holds the pipe
            helper.kill()
        sys.stderr, logging.root.handlers, level, sys.unraisablehook, threading.excepthook = saved
        logging.root.setLevel(level)
        log_file.close()
