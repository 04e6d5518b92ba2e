"""The workdir guards in-process: the lock against another process (held, then SIGKILLed),
re-entry, the writability check and storage-error classification. The CLI-level behaviour
(concurrent `siamjax train`, disk full, read-only mounts) is in test_bad_inputs.py."""
import errno
import json
import os
import signal
import subprocess
import sys

import pytest

from siamjax.train import workdir as wd

# Another process taking the lock the way WorkdirLock does, then waiting to be killed.
HOLDER = """
import fcntl, json, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o644)
fcntl.flock(fd, fcntl.LOCK_EX)
os.write(fd, json.dumps({"host": "elsewhere", "pid": os.getpid(), "since": "now"}).encode())
print("locked", flush=True)
time.sleep(600)
"""


def test_lock_held_by_another_process_then_stale_after_sigkill(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path / wd.LOCK_NAME)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(wd.WorkdirBusyError, match=rf"in use by another run \(host elsewhere, pid {holder.pid}, "
                                                      r"since now\)"):
            with wd.WorkdirLock(tmp_path):
                pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    assert json.loads((tmp_path / wd.LOCK_NAME).read_text())["pid"] == holder.pid  # the stale file stays
    with wd.WorkdirLock(tmp_path):  # ... and does not block: the kernel dropped the lock
        assert json.loads((tmp_path / wd.LOCK_NAME).read_text())["pid"] == os.getpid()


def test_lock_is_reentrant_in_one_process_and_released(tmp_path):
    with wd.WorkdirLock(tmp_path / "new"):
        with wd.WorkdirLock(tmp_path / "new"):  # the CLI holds it around train_and_evaluate's own
            pass
        assert str((tmp_path / "new" / wd.LOCK_NAME).absolute()) in wd._HELD
    assert not wd._HELD
    probe = subprocess.run([sys.executable, "-c", HOLDER.replace("time.sleep(600)", ""),
                            str(tmp_path / "new" / wd.LOCK_NAME)], capture_output=True, text=True, timeout=60)
    assert probe.stdout.strip() == "locked", "released for other processes"


def test_check_writable(tmp_path):
    wd.check_writable(tmp_path, "workdir")
    wd.check_writable(tmp_path / "a" / "b", "workdir")  # created later, in a writable folder
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match="is a file"):
        wd.check_writable(tmp_path / "file" / "sub", "model folder")


@pytest.mark.parametrize("error, code", [
    (ValueError("Error writing local file: No space left on device"), errno.ENOSPC),  # TensorStore: text only
    (OSError(errno.EROFS, "Read-only file system", "/x"), errno.EROFS),
    (RuntimeError("permission denied while opening"), errno.EACCES),
    (ValueError("score 'x' is not a number"), None),
])
def test_storage_errno(error, code):
    assert wd.storage_errno(error) == code
    wrapped = RuntimeError("orbax: save failed")
    wrapped.__cause__ = error
    assert wd.storage_errno(wrapped) == code


def test_storage_errors_name_the_folder(tmp_path):
    with pytest.raises(OSError) as info:
        with wd.storage_errors(tmp_path):
            raise ValueError("Error writing local file: No space left on device")
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(tmp_path)
    with pytest.raises(KeyError):
        with wd.storage_errors(tmp_path):
            raise KeyError("unrelated")
