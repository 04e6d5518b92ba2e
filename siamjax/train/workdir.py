"""The run folder's guards: one trainer per workdir, writability checked before the work, and
storage failures reported as the folder they happened in.

- `WorkdirLock`: an exclusive `fcntl.flock` on `<workdir>/lock` (Linux emulates it with a
  byte-range lock on NFS), taken by process 0. Unlike `lockf` it belongs to the open file, so
  reading the lock file elsewhere in the process cannot silently drop it. The kernel drops it when the holder dies, even by
  SIGKILL, so a stale lock file never blocks the next run; the file's text (host, pid, start)
  only names the holder in the error. Re-entrant within a process, so the CLI can hold it
  across training and export while `train_and_evaluate` takes it too.
- `check_writable`: a read-only or forbidden folder fails in the first second, not after the
  whole run when the first checkpoint or the exported model is written.
- `storage_errors`: disk full, read-only and permission failures surface from deep inside orbax,
  TensorStore or a background thread, often with no path; this turns any of them into one
  `OSError(errno, ..., folder)` that the CLI reports as e.g. "no space left on DIR".
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import pathlib
import socket
import time
from collections.abc import Iterator

LOCK_NAME = "lock"
# errno -> the text the OS (and TensorStore, which loses the errno) puts in its messages
STORAGE_ERRNOS = {errno.ENOSPC: "No space left on device", errno.EDQUOT: "Disk quota exceeded",
                  errno.EROFS: "Read-only file system", errno.EACCES: "Permission denied"}
_HELD: dict[str, list] = {}  # resolved lock path -> [fd, depth] for the locks this process holds


class WorkdirBusyError(ValueError):
    """Another live process holds the workdir's lock; the message names its host and pid."""


def _nearest_existing(path: pathlib.Path) -> pathlib.Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_writable(path: str | os.PathLike, what: str) -> None:
    """Raises OSError (EROFS or EACCES, naming `path`) if `path`, or the folder it would be created
    in, cannot be written. Nothing is created."""
    existing = _nearest_existing(pathlib.Path(path))
    if existing.is_file() and existing != pathlib.Path(path).absolute():
        raise NotADirectoryError(errno.ENOTDIR, f"{existing} is a file ({what})", str(path))
    if os.access(existing, os.W_OK):
        return
    read_only = bool(os.statvfs(existing).f_flag & os.ST_RDONLY)
    code = errno.EROFS if read_only else errno.EACCES
    raise OSError(code, f"cannot write the {what} there", str(existing))


def storage_errno(err: BaseException) -> int | None:
    """The storage errno (disk full, read-only, permission) behind `err` or its causes, or None."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in STORAGE_ERRNOS:
            return err.errno
        text = str(err)
        for code, words in STORAGE_ERRNOS.items():
            if words.lower() in text.lower():
                return code
        err = err.__cause__ or err.__context__
    return None


@contextlib.contextmanager
def storage_errors(directory: str | os.PathLike) -> Iterator[None]:
    """Re-raises a storage failure anywhere inside as `OSError(errno, strerror, directory)`."""
    try:
        yield
    except Exception as err:
        code = storage_errno(err)
        if code is None or (isinstance(err, OSError) and err.errno == code and err.filename):
            raise
        raise OSError(code, os.strerror(code), str(directory)) from err


class WorkdirLock:
    """`with WorkdirLock(workdir):` — exclusive use of a workdir (see the module docstring)."""

    def __init__(self, workdir: str | os.PathLike):
        self.workdir = pathlib.Path(workdir)
        self.path = self.workdir / LOCK_NAME

    def __enter__(self) -> "WorkdirLock":
        key = str(self.path.absolute())
        if key in _HELD:
            _HELD[key][1] += 1
            return self
        self.workdir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            os.close(fd)
            if err.errno not in (errno.EWOULDBLOCK, errno.EACCES):
                raise
            raise WorkdirBusyError(f"workdir {self.workdir} is in use by another run ({self._holder()}); "
                                   "wait for it to finish, or give another --workdir") from None
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                                 "since": time.strftime("%Y-%m-%d %H:%M:%S")}).encode())
        _HELD[key] = [fd, 1]
        return self

    def _holder(self) -> str:
        try:
            info = json.loads(self.path.read_text())
            return f"host {info['host']}, pid {info['pid']}, since {info['since']}"
        except (OSError, ValueError, KeyError, TypeError):
            return "holder unknown"

    def __exit__(self, *exc) -> None:
        key = str(self.path.absolute())
        entry = _HELD[key]
        entry[1] -= 1
        if entry[1] == 0:
            del _HELD[key]
            fcntl.flock(entry[0], fcntl.LOCK_UN)
            os.close(entry[0])
