"""Storage faults and concurrent runs through the real `siamjax` command: a disk that fills
during training, read-only output folders, and a second trainer on a busy workdir. Each failure
is one stderr line with its documented exit code, and nothing earlier is damaged.
"""
import re
import signal
import subprocess
import sys
import time

import pytest

from bad_input_fixtures import assert_one_line, encode, read_jsonl, run_driver, train, world  # noqa: F401 (a fixture)

pytestmark = pytest.mark.slow  # end-to-end subprocess runs (still run in CI)


# ----------------------------------------------------------------------------- storage
def _namespace_wrap(mounts: list[str]) -> list[str] | None:
    """`unshare -rm sh -c "<mounts>; <command>"` if this machine allows private mounts, else None."""
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=1m tmpfs /mnt"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        return None
    return ["unshare", "-rm", "sh", "-c", " && ".join(mounts) + " && exec"]


def test_disk_full_and_read_only_folders(world, tmp_path):
    """A 6 MB tmpfs fills at the second checkpoint: one "no space left on DIR" line, exit 3, and
    the first checkpoint still restores (checked inside the namespace, where the tmpfs lives).
    Read-only folders (workdir, export output, encode/eval output) fail before the work."""
    full, ro = tmp_path / "full", tmp_path / "ro"
    full.mkdir()
    ro.mkdir()
    restore = ("from siamjax import train\n"
               f"encoder, step = train.load_trained_encoder({str(full)!r})\nresult = step")
    steps = [
        train(world, full, "--config.train.num_steps=8"),
        {"exec": restore},
        train(world, ro / "run"),
        ["export", "--workdir", world["root"] / "ck", "--output", ro / "model"],
        encode(world["models"]["tiny"], world["files"]["corpus"], ro / "e.npy"),
        ["eval", "sts", "--model", world["models"]["tiny"], "--data", world["files"]["sts"], "--output", ro / "m.json"],
    ]
    wrap = _namespace_wrap([f"mount -t tmpfs -o size=6m tmpfs {full}", f"mount -t tmpfs -o ro,size=1m tmpfs {ro}"])
    if wrap is None:  # no private mounts here: a simulated ENOSPC from the checkpoint writer
        steps[0:0] = [{"exec": "import siamjax.train.checkpoint as c\nsave, calls = c.save, []\n"
                               "def full_save(*a, **k):\n    calls.append(1)\n    if len(calls) > 1:\n"
                               "        raise ValueError('Error writing local file: No space left on device')\n"
                               "    return save(*a, **k)\nc.save = full_save"}]
        results = run_driver(steps[:3], tmp_path)[1:]
    else:
        results = run_driver(steps, tmp_path, wrap=wrap)
    assert_one_line(results[0], 3, rf"^siamjax train: no space left on {re.escape(str(full))}$")
    assert results[1]["code"] == 2, "the previous checkpoint (step 2) is intact and restores"
    if wrap is None:
        pytest.skip("private mounts not permitted: disk full simulated, read-only cases not run")
    for result, what in zip(results[2:], ("workdir", "model folder", "--output file", "--output file")):
        assert_one_line(result, 3, rf"{re.escape(str(ro))}: read-only file system")
    assert results[2]["out"] == "" and results[3]["out"] == "", "failed before any work"


# ----------------------------------------------------------------------------- workdir lock
def _popen_train(world, workdir, *overrides):
    return subprocess.Popen([sys.executable, "-m", "siamjax.cli", *train(world, workdir, *overrides)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_for(predicate, proc, what, timeout=600):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        assert proc.poll() is None, f"run ended (rc={proc.returncode}) before {what}: {proc.stdout.read()[-2000:]}"
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_concurrent_trainers_on_one_workdir(world, tmp_path):
    """A second trainer on a busy workdir exits 2 naming the holder, and the first is unaffected:
    it runs on and metrics.jsonl holds its steps only, once each, in order. (A lock left by a
    SIGKILLed holder is tested in test_workdir.py.)"""
    busy = tmp_path / "busy"
    first = _popen_train(world, busy, "--config.train.num_steps=100000", "--config.checkpoint.every_steps=10")
    try:
        _wait_for(lambda: (busy / "metrics.jsonl").is_file() and (busy / "metrics.jsonl").read_text(), first,
                  "the first trainer's first step")
        (second,) = run_driver([train(world, busy)], tmp_path)
        assert first.poll() is None, "the first trainer is still running"
        first.send_signal(signal.SIGTERM)
        out = first.communicate(timeout=300)[0]
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 75, out
    assert_one_line(second, 2, rf"workdir {re.escape(str(busy))} is in use by another run \(host \S+, "
                               rf"pid {first.pid}, since ")
    steps = [r["step"] for r in read_jsonl(busy / "metrics.jsonl")]
    assert steps == list(range(1, len(steps) + 1)), "metrics.jsonl holds one run, in order"
