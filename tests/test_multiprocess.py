"""`siamjax train` as several processes (jax.distributed on localhost, fake CPU devices).

The same tiny MNRL run (sharded InfoNCE, so in-batch negatives cross process boundaries) is
trained as 1 process x 8 devices and as 2 processes x 4 devices through
launch/local_multiprocess.sh, with parameters split over both processes (FSDP): loss curves,
final parameters and the STS evaluation must agree. Checkpoints written by one layout resume
in the other (different process count and FSDP split), a SIGTERM to one process stops all of
them at one saved step, and a killed process takes the job down with a clear error instead
of a hang.
"""
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import portpicker
import pytest

from siamjax import train
from siamjax.cli.errors import EXIT_PREEMPTED
from siamjax.encoder import SentenceEncoder

from config_fixtures import WORDS, read_jsonl, write_tiny_config

pytestmark = pytest.mark.slow  # end-to-end subprocess runs (still run in CI)

REPO = pathlib.Path(__file__).resolve().parents[1]
LAUNCH = REPO / "launch" / "local_multiprocess.sh"
STEPS, HALF = 4, 2
LAYOUTS = {"1x8": (1, 8), "2x4": (2, 4)}  # processes x devices per process
RUN_TIMEOUT_S = 300


def write_pairs(path, n, seed):
    """n (anchor, positive) pairs of random words; the row number keeps every text unique."""
    rng = np.random.default_rng(seed)
    with open(path, "w") as f:
        for i in range(n):
            a, b = (" ".join(rng.choice(WORDS, rng.integers(2, 8))) for _ in range(2))
            f.write(json.dumps({"anchor": f"{a} {i}", "positive": f"{b} {i}"}) + "\n")
    return path


def write_sts(path, n, seed):
    """n scored sentence pairs (an STS dev file for the evaluation hook)."""
    rng = np.random.default_rng(seed)
    with open(path, "w") as f:
        for _ in range(n):
            a, b = (" ".join(rng.choice(WORDS, rng.integers(2, 8))) for _ in range(2))
            f.write(json.dumps({"s1": a, "s2": b, "score": float(rng.random())}) + "\n")
    return path


def start(num_processes, devices_per_process, config, workdir, *overrides):
    """Starts launch/local_multiprocess.sh on a fresh port (output captured)."""
    env = dict(os.environ, DEVICES_PER_PROCESS=str(devices_per_process), PORT=str(portpicker.pick_unused_port()),
               PYTHON=sys.executable, SIAMJAX_HEARTBEAT_TIMEOUT="15", SIAMJAX_INIT_TIMEOUT="120")
    args = ["bash", str(LAUNCH), str(num_processes), str(config), "--workdir", str(workdir), *overrides]
    return subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(proc, timeout=RUN_TIMEOUT_S):
    """Waits (bounded) for a started launch; fails with its output unless it exited 0."""
    try:
        out = proc.communicate(timeout=timeout)[0]
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGINT)  # the launcher stops its processes on INT
        out = proc.communicate(timeout=60)[0]
        raise AssertionError(f"{proc.args} did not finish in {timeout}s:\n{out[-6000:]}") from None
    assert proc.returncode == 0, f"{proc.args} exited {proc.returncode}:\n{out[-6000:]}"
    return out


def losses(workdir):
    """{step: loss} from the run's metrics.jsonl (written by process 0 only)."""
    return {r["step"]: r["loss"] for r in read_jsonl(pathlib.Path(workdir) / "metrics.jsonl") if "loss" in r}


def final_params(workdir, step=STEPS):
    """The encoder parameters of checkpoint `step`, restored onto one device of this process."""
    encoder, restored = train.load_trained_encoder(workdir, step)
    assert restored == step
    return encoder.params


def assert_params_close(a, b, atol=1e-5):
    import jax

    leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(leaves_a) == len(leaves_b) > 0
    for x, y in zip(leaves_a, leaves_b):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=atol, rtol=0)


def copy_checkpoint(src_workdir, step, dst_workdir):
    """A new run folder holding only checkpoint `step` of another run (so it resumes from there)."""
    dst = pathlib.Path(dst_workdir) / "checkpoints"
    dst.mkdir(parents=True)
    shutil.copytree(pathlib.Path(src_workdir) / "checkpoints" / str(step), dst / str(step))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, minilm_dir):
    """The tiny config file and its data folder."""
    root = tmp_path_factory.mktemp("mp")
    train_file = write_pairs(root / "train.jsonl", 128, seed=0)
    write_sts(root / "dev.jsonl", 24, seed=1)
    # MNRL with the sharded loss and no dropout: the step is a deterministic function of the
    # global batch, so any process/device layout must reproduce it. A constant learning rate
    # lets a run of HALF steps be resumed to STEPS and match an uninterrupted STEPS-step run.
    config = write_tiny_config(root / "tiny.py", tokenizer=minilm_dir, fields={
        "model.max_seq_length": 16,
        "data.train.path": str(train_file),
        "data.buckets": (16,),
        "loss.name": "mnrl",
        "loss.sharded": True,
        "optim.lr": 1e-3,
        "optim.schedule": "constant",
        "optim.warmup_steps": 0,
        "train.dropout": False,
        "train.num_steps": STEPS,
        "checkpoint.every_steps": HALF,
    })
    return config, root


@pytest.fixture(scope="module")
def runs(tiny, tmp_path_factory):
    """{"1x8": workdir, "2x4": workdir}: the same STEPS-step run in both layouts, run side by
    side. mesh.fsdp=8 splits each large parameter over both processes, the STS hook at the
    end must gather it, and the final export is written by process 0."""
    config, root = tiny
    out = tmp_path_factory.mktemp("runs")
    evaluation = [f"--config.eval.sts.path={root / 'dev.jsonl'}",
                  "--config.eval.sts.columns=(('s1','s1'),('s2','s2'),('score','score'))",
                  "--config.mesh.fsdp=8", "--config.export.dir=model"]
    procs = {name: start(*layout, config, out / name, *evaluation) for name, layout in LAYOUTS.items()}
    try:
        for proc in procs.values():
            finish(proc)
    finally:
        for proc in procs.values():  # a failed run must not leave the other one running
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
                proc.communicate(timeout=60)
    return {name: out / name for name in LAYOUTS}


def test_two_processes_match_one_process(runs):
    one, two = losses(runs["1x8"]), losses(runs["2x4"])
    assert sorted(one) == sorted(two) == list(range(1, STEPS + 1))
    np.testing.assert_allclose([two[s] for s in one], [one[s] for s in one], atol=1e-5, rtol=0)
    assert_params_close(final_params(runs["2x4"]), final_params(runs["1x8"]))
    evals = {name: [r["sts/spearman_cosine"] for r in read_jsonl(workdir / "metrics.jsonl")
                    if "sts/spearman_cosine" in r] for name, workdir in runs.items()}
    assert len(evals["1x8"]) == 1 and evals["2x4"] == pytest.approx(evals["1x8"], abs=1e-6)
    exported = SentenceEncoder.from_pretrained(runs["2x4"] / "model")
    assert_params_close(exported.params, final_params(runs["1x8"]))


def test_only_process_zero_writes_run_files(runs):
    workdir = runs["2x4"]
    records = [r for r in read_jsonl(workdir / "metrics.jsonl") if "loss" in r]
    assert [r["step"] for r in records] == list(range(1, STEPS + 1)), "one record per step, no duplicates"
    assert len(list((workdir / "tb").glob("events.out.tfevents.*"))) == 1
    assert sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()) == [HALF, STEPS]


@pytest.mark.parametrize("src, dst, fsdp", [("2x4", "1x8", 2), ("1x8", "2x4", 4)])
def test_checkpoint_resumes_in_the_other_layout(runs, tiny, tmp_path, src, dst, fsdp):
    """Step HALF of one layout, resumed by the other with a different FSDP split, ends where the
    uninterrupted run ended."""
    config, _ = tiny
    workdir = tmp_path / "resumed"
    copy_checkpoint(runs[src], HALF, workdir)
    out = finish(start(*LAYOUTS[dst], config, workdir, f"--config.mesh.fsdp={fsdp}"))
    assert f"resumed from {workdir / 'checkpoints'}/{HALF}" in out
    resumed, reference = losses(workdir), losses(runs["1x8"])
    assert sorted(resumed) == list(range(HALF + 1, STEPS + 1))
    np.testing.assert_allclose([resumed[s] for s in resumed], [reference[s] for s in resumed], atol=1e-5, rtol=0)
    assert_params_close(final_params(workdir), final_params(runs["1x8"]))


def start_two(config, workdir, *overrides, heartbeat_s=5):
    """Two `siamjax train` processes x 4 devices wired by flags, training "forever" (unless an
    override says otherwise)."""
    port = portpicker.pick_unused_port()
    procs = []
    for i in range(2):
        env = dict(os.environ, XLA_FLAGS=os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4",
                   JAX_PLATFORMS="cpu",
                   SIAMJAX_HEARTBEAT_TIMEOUT=str(heartbeat_s))
        cmd = [sys.executable, "-m", "siamjax.cli", "train", "--config", str(config), "--workdir", str(workdir),
               "--config.train.num_steps=100000", "--config.checkpoint.every_steps=100000", *overrides,
               "--coordinator", f"localhost:{port}", "--num-processes", "2", "--process-id", str(i)]
        procs.append(subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True))
    return procs


def wait_for_steps(procs, workdir, steps):
    """Blocks until process 0 has logged `steps` steps (fails if a process ends first)."""
    metrics = pathlib.Path(workdir) / "metrics.jsonl"
    deadline = time.time() + RUN_TIMEOUT_S
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= steps):
        if any(p.poll() is not None for p in procs):
            raise AssertionError("a process ended early:\n" + "\n".join(p.communicate()[0][-3000:] for p in procs))
        assert time.time() < deadline, f"the 2-process run did not reach step {steps}"
        time.sleep(0.2)


def stop_all(procs):
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.communicate()


def test_preemption_of_one_process_stops_all_at_the_same_step(tiny, tmp_path):
    """SIGTERM to process 1 only: both must save one checkpoint at an agreed step and exit 75."""
    config, _ = tiny
    procs = start_two(config, tmp_path / "run")
    try:
        wait_for_steps(procs, tmp_path / "run", 1)
        procs[1].send_signal(signal.SIGTERM)
        outs = [p.communicate(timeout=120)[0] for p in procs]
    finally:
        stop_all(procs)
    assert [p.returncode for p in procs] == [EXIT_PREEMPTED] * 2, [o[-3000:] for o in outs]
    saved = [int(p.name) for p in (tmp_path / "run" / "checkpoints").iterdir() if p.name.isdigit()]
    assert len(saved) == 1 and f"preemption requested: saved step {saved[0]}" in outs[0]
    assert max(losses(tmp_path / "run")) == saved[0]


def test_a_dead_process_stops_the_others(tiny, tmp_path):
    """SIGKILL process 1 mid-run: process 0 (which hosts the coordination service) must exit
    non-zero, naming the cause, within a bounded time instead of waiting in a collective."""
    config, _ = tiny
    procs = start_two(config, tmp_path / "run")
    try:
        wait_for_steps(procs, tmp_path / "run", 2)
        procs[1].send_signal(signal.SIGKILL)
        killed_at = time.time()
        out = procs[0].communicate(timeout=90)[0]
        elapsed = time.time() - killed_at
    finally:
        stop_all(procs)
    assert procs[0].returncode != 0, out[-3000:]
    assert elapsed < 60, f"the survivor took {elapsed:.0f}s to stop"
    assert "JAX distributed service detected fatal errors" in out, out[-3000:]


def test_packed_two_process_run_matches_padded_one_process(runs, tiny, tmp_path):
    """data.pack_length on 2 processes x 4 devices (each process packs its own shards, all agree
    on the row count) trains exactly like the padded 1 x 8 run."""
    config, _ = tiny
    workdir = tmp_path / "packed"
    finish(start(*LAYOUTS["2x4"], config, workdir, "--config.mesh.fsdp=8", "--config.data.pack_length=16"))
    padded, packed = losses(runs["1x8"]), losses(workdir)
    assert sorted(packed) == list(range(1, STEPS + 1))
    np.testing.assert_allclose([packed[s] for s in padded], [padded[s] for s in padded], atol=2e-5, rtol=0)
    assert_params_close(final_params(workdir), final_params(runs["1x8"]), atol=5e-5)
