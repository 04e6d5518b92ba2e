"""The training loop end to end on a tiny random BERT: resume after SIGKILL/SIGTERM, sharded
equivalence, NaN stop, bad rows, export of the best checkpoint, metrics files."""
import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from siamjax import parallel, train
from siamjax.cli import main as cli_main
from siamjax.cli.errors import EXIT_INPUT, EXIT_NONFINITE, EXIT_PREEMPTED
from siamjax.data import length_grouped
from siamjax.train import checkpoint as ckpt
from siamjax.train import state as train_state
from siamjax.train.config_file import load_config
from siamjax.train.loop import train_loop
from siamjax.train.metrics import MetricWriter

from config_fixtures import WORDS, read_jsonl, write_tiny_config

REPO = pathlib.Path(__file__).resolve().parents[1]


def write_pairs(path, n, seed, bad_line=None):
    """n scored pairs of random words as jsonl (optionally one malformed row)."""
    rng = np.random.default_rng(seed)
    with open(path, "w") as f:
        for i in range(n):
            a = " ".join(rng.choice(WORDS, rng.integers(2, 12)))
            b = " ".join(rng.choice(WORDS, rng.integers(2, 12)))
            score = "not a number" if i + 1 == bad_line else float(rng.random())
            f.write(json.dumps({"s1": f"{a} {i}", "s2": f"{b} {i}", "score": score}) + "\n")
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, minilm_dir):
    """(config file path, data folder) of a tiny CoSENT run on random-word pairs."""
    root = tmp_path_factory.mktemp("tiny")
    train_file = write_pairs(root / "train.jsonl", 96, seed=0)
    write_pairs(root / "dev.jsonl", 48, seed=1)
    config = write_tiny_config(root / "tiny.py", tokenizer=minilm_dir, fields={
        "model.max_seq_length": 32,
        "data.train.path": str(train_file),
        "data.train.columns": (("s1", "s1"), ("s2", "s2"), ("score", "score")),
        "data.buckets": (16, 32),
        "loss.name": "cosent",
        "optim.lr": 1e-3,
        "train.num_steps": 40,
        "checkpoint.every_steps": 10,
    })
    return config, root


def per_step(workdir, key):
    """{step: value} of a training metric in metrics.jsonl."""
    return {r["step"]: r[key] for r in read_jsonl(pathlib.Path(workdir) / "metrics.jsonl") if key in r}


def cli(config, workdir, *overrides):
    """The `siamjax train` command line for a subprocess."""
    return [sys.executable, "-m", "siamjax.cli", "train", "--config", str(config), "--workdir", str(workdir),
            *overrides]


def wait_for_checkpoint(workdir, proc, min_step, timeout=240):
    """Blocks until a finalised checkpoint >= min_step exists; returns its step."""
    root = pathlib.Path(workdir) / "checkpoints"
    deadline = time.time() + timeout
    while time.time() < deadline:
        steps = [int(p.name) for p in root.glob("*") if p.name.isdigit() and (p / "_CHECKPOINT_METADATA").exists()]
        done = [s for s in steps if s >= min_step]
        if done:
            return max(done)
        assert proc.poll() is None, f"run ended (rc={proc.returncode}) before a checkpoint >= {min_step}"
        time.sleep(0.02)
    raise AssertionError(f"no checkpoint >= {min_step} after {timeout}s")


def test_resume_after_sigterm_and_sigkill_is_exact(tiny, tmp_path):
    """Uninterrupted vs preempted (SIGTERM) + killed (SIGKILL) + restarted: same batches, same bits."""
    config, _ = tiny
    steps = 80  # room for: preempt after step 10, kill 20 steps after the resume, finish
    common = [f"--config.train.num_steps={steps}", "--config.mesh.num_devices=4", "--config.mesh.fsdp=2",
              "--config.data.group_by_length=true"]
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    full = subprocess.Popen(cli(config, tmp_path / "full", *common), env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    run = tmp_path / "resumed"
    first = subprocess.Popen(cli(config, run, *common), env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    wait_for_checkpoint(run, first, 10)
    first.send_signal(signal.SIGTERM)  # preemption notice: save and exit cleanly
    out = first.communicate(timeout=120)[0]
    assert first.returncode == EXIT_PREEMPTED, out
    assert "preemption requested: saved step" in out

    second = subprocess.Popen(cli(config, run, *common), env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    preempted_at = max(int(p.name) for p in (run / "checkpoints").glob("*") if p.name.isdigit())
    killed_after = wait_for_checkpoint(run, second, preempted_at + 20)
    second.kill()  # SIGKILL: no chance to clean up; an async save may be half-written
    second.communicate(timeout=60)
    assert second.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert killed_after < steps

    third = subprocess.run(cli(config, run, *common), env=env, capture_output=True, text=True, timeout=600)
    assert third.returncode == 0, third.stdout + third.stderr
    assert "resumed from" in third.stdout + third.stderr
    out_full = full.communicate(timeout=600)[0]
    assert full.returncode == 0, out_full

    batches_full, batches_run = per_step(tmp_path / "full", "batch_fingerprint"), per_step(run, "batch_fingerprint")
    assert sorted(batches_full) == list(range(1, steps + 1)) == sorted(batches_run)
    assert batches_full == batches_run, "the resumed run saw different batches"
    assert per_step(tmp_path / "full", "loss") == per_step(run, "loss")
    enc_full, step_full = train.load_trained_encoder(tmp_path / "full", steps)
    enc_run, step_run = train.load_trained_encoder(run, steps)
    assert step_full == step_run == steps
    jax.tree.map(np.testing.assert_array_equal, enc_full.params, enc_run.params)  # bitwise on CPU


def test_one_device_and_eight_devices_give_the_same_loss_curve(tiny, tmp_path):
    """Same tiny run (dropout on) on 1 device and on a 2 x 4 data/fsdp mesh, evaluation included."""
    config, root = tiny
    curves, evals = {}, {}
    for name, overrides in {"one": ["--config.mesh.num_devices=1"],
                            "eight": ["--config.mesh.data=2", "--config.mesh.fsdp=4"]}.items():
        c = load_config(str(config), ["--config.train.num_steps=12", "--config.checkpoint.every_steps=100",
                                      f"--config.eval.sts.path={root / 'dev.jsonl'}",
                                      "--config.eval.sts.columns=(('s1','s1'),('s2','s2'),('score','score'))",
                                      *overrides])
        evals[name] = train.train_and_evaluate(c, tmp_path / name).eval_metrics["sts/spearman_cosine"]
        curves[name] = per_step(tmp_path / name, "loss")
    assert sorted(curves["one"]) == list(range(1, 13))
    np.testing.assert_allclose([curves["eight"][s] for s in range(1, 13)],
                               [curves["one"][s] for s in range(1, 13)], atol=1e-5, rtol=0)
    assert evals["eight"] == pytest.approx(evals["one"], abs=1e-3)


def test_packed_training_on_eight_devices_matches_padded_on_one(tiny, tmp_path):
    """data.pack_length on a 2 x 4 mesh trains exactly like padding on 1 device (dropout off)."""
    config, _ = tiny
    curves = {}
    for name, overrides in {"padded": ["--config.mesh.num_devices=1"],
                            "packed": ["--config.mesh.data=2", "--config.mesh.fsdp=4",
                                       "--config.data.pack_length=48"]}.items():
        c = load_config(str(config), ["--config.train.num_steps=6", "--config.checkpoint.every_steps=100",
                                      "--config.train.dropout=false", *overrides])
        train.train_and_evaluate(c, tmp_path / name)
        curves[name] = per_step(tmp_path / name, "loss")
    assert sorted(curves["packed"]) == list(range(1, 7))
    np.testing.assert_allclose([curves["packed"][s] for s in range(1, 7)],
                               [curves["padded"][s] for s in range(1, 7)], atol=2e-5, rtol=0)


@pytest.fixture(scope="module")
def evaluated_run(tiny, tmp_path_factory):
    """A finished tiny run with STS evaluation every 10 steps; its s1 texts have a prompt, which
    pooling leaves out (include_prompt=False)."""
    config, root = tiny
    workdir = tmp_path_factory.mktemp("evaluated")
    c = load_config(str(config), [f"--config.eval.sts.path={root / 'dev.jsonl'}",
                                  "--config.data.train.prompts=(('s1','query: '),)",
                                  "--config.model.init.include_prompt=False",
                                  "--config.eval.sts.columns=(('s1','s1'),('s2','s2'),('score','score'))",
                                  "--config.eval.every_steps=10", "--config.train.num_steps=30",
                                  "--config.mesh.num_devices=1", "--config.checkpoint.keep=1",
                                  "--config.train.log_every_steps=5"])
    result = train.train_and_evaluate(c, workdir)
    return workdir, result


def test_metrics_files_and_best_checkpoint(evaluated_run):
    workdir, result = evaluated_run
    records = read_jsonl(workdir / "metrics.jsonl")
    logged = [r for r in records if "loss" in r]
    assert [r["step"] for r in logged] == [5, 10, 15, 20, 25, 30]
    assert all({"grad_norm", "learning_rate", "pairs_per_sec", "epoch"} <= set(r) for r in logged)
    evals = {r["step"]: r["sts/spearman_cosine"] for r in records if "sts/spearman_cosine" in r}
    assert sorted(evals) == [10, 20, 30] and result.eval_metrics["sts/spearman_cosine"] == evals[30]
    assert list((workdir / "tb").glob("events.out.tfevents.*"))
    manager = ckpt.make_manager(workdir / "checkpoints", save_interval_steps=10, max_to_keep=1,
                                keep_best=1, best_metric="sts/spearman_cosine", read_only=True)
    best = max(evals, key=evals.get)
    assert ckpt.best_or_latest_step(manager) == best
    assert set(manager.all_steps()) == {best, 30}


def test_sts_evaluation_also_scores_a_dot_models_own_similarity(tiny, minilm_dir):
    """A model whose folder says similarity_fn_name="dot" is evaluated by cosine (the default
    best_metric) and by dot product (what sentence-transformers' evaluator ranks it by)."""
    from siamjax.encoder import SentenceEncoder
    from siamjax.train import builders

    config, root = tiny
    c = load_config(str(config), [f"--config.eval.sts.path={root / 'dev.jsonl'}",
                                  "--config.eval.sts.columns=(('s1','s1'),('s2','s2'),('score','score'))"])
    encoder = SentenceEncoder.from_pretrained(minilm_dir).with_settings(similarity_fn_name="dot")
    metrics = builders.make_sts_evaluate(c.eval.sts, encoder, 16)(encoder.params)
    assert sorted(metrics) == ["sts/pearson_cosine", "sts/pearson_dot", "sts/spearman_cosine", "sts/spearman_dot"]
    # all-MiniLM-L6-v2 normalises: dot product = cosine
    assert metrics["sts/spearman_dot"] == pytest.approx(metrics["sts/spearman_cosine"], abs=1e-3)


def test_export_writes_the_best_checkpoint(evaluated_run, tmp_path, capsys):
    from siamjax.encoder import SentenceEncoder

    workdir, _ = evaluated_run
    evals = {r["step"]: r["sts/spearman_cosine"] for r in read_jsonl(workdir / "metrics.jsonl")
             if "sts/spearman_cosine" in r}
    best = max(evals, key=evals.get)
    assert cli_main(["export", "--workdir", str(workdir), "--output", str(tmp_path / "model")]) == 0
    assert f"wrote step {best}" in capsys.readouterr().out
    for name in ("config.json", "model.safetensors", "modules.json", "1_Pooling/config.json"):
        assert (tmp_path / "model" / name).exists(), name
    exported = SentenceEncoder.from_pretrained(tmp_path / "model")
    trained, step = train.load_trained_encoder(workdir)
    assert step == best
    sentences = ["red cat on a hill", "old book"]
    np.testing.assert_allclose(exported.encode(sentences), trained.encode(sentences), atol=1e-5)
    assert cli_main(["export", "--workdir", str(tmp_path / "nowhere"), "--output", str(tmp_path / "x")]) == EXIT_INPUT
    # the prompts it trained with, include_prompt=False, and a model card of the run
    assert exported.prompts["s1"] == "query: " and exported.spec.pooling.include_prompt is False
    card = (tmp_path / "model" / "README.md").read_text()
    metrics = read_jsonl(workdir / "metrics.jsonl")
    for expected in ("| s1 | 'query: ' |", "`cosent` with `{}`", "train.jsonl | 96 |",
                     "| optim.lr | 0.001 |", "| train.batch_size | 16 |", "| steps run | " + str(best),
                     f"| sts/spearman_cosine | {metrics[-1]['sts/spearman_cosine']:.4f} |",
                     f"| train loss | {[r for r in metrics if 'loss' in r][-1]['loss']:.4f} |",
                     "model.encode_query(", "SentenceTransformer(", "| jax | "):
        assert expected in card, expected
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(tmp_path / "model"), device="cpu")
    np.testing.assert_allclose(st.encode(sentences, prompt_name="s1"), exported.encode(sentences, prompt_name="s1"),
                               atol=1e-5)


def test_nan_loss_stops_the_cli_with_a_clear_message(tiny, tmp_path, capsys):
    config, _ = tiny
    code = cli_main(["train", "--config", str(config), "--workdir", str(tmp_path / "run"),
                     "--config.loss.kwargs.scale=1e400", "--config.mesh.num_devices=1"])
    err = capsys.readouterr().err
    assert code == EXIT_NONFINITE
    assert re.search(r"non-finite (grad_norm|loss)=(nan|inf).* at step 1; stopping", err), err
    assert "no checkpoint was saved" in err
    assert not [p for p in (tmp_path / "run" / "checkpoints").glob("*") if p.name.isdigit()]


def test_nan_mid_run_keeps_the_last_good_checkpoint(tmp_path):
    """The loop checks a step's metrics before saving it, so the NaN state is never written."""
    mesh = parallel.make_mesh(1, 1, devices=jax.devices()[:1])
    state = train_state.TrainState(step=jnp.int32(0), params={"encoder": {"w": jnp.ones(3)}, "loss": {}},
                          opt_state={}, rng=jnp.zeros(2, jnp.uint32))

    def fake_step(state, batch):
        step = state.step + 1
        loss = jnp.where(step >= 7, jnp.nan, 1.0 / step)
        params = jax.tree.map(lambda p: p * loss, state.params)
        return state.replace(step=step, params=params), {"loss": loss, "grad_norm": jnp.float32(1)}

    manager = ckpt.make_manager(tmp_path / "checkpoints", save_interval_steps=2, max_to_keep=10)
    writer = MetricWriter(tmp_path, total_steps=20, start_step=0, batch_size=4, log_every=1, progress_bar=False)
    batches = iter(lambda: {"x": np.zeros((1, 4, 2), np.int32)}, None)
    with pytest.raises(train.NonFiniteLossError, match=r"loss=nan at step 7.*checkpoint step 6 is kept"):
        train_loop(state=jax.device_put(state, parallel.replicated(mesh)), train_step=jax.jit(fake_step),
                         batches=batches, data_state=lambda: {"i": 0}, to_device=lambda b: b, manager=manager,
                         total_steps=20, writer=writer)
    writer.close()
    manager.wait_until_finished()
    assert max(manager.all_steps()) == 6
    assert max(r["step"] for r in read_jsonl(tmp_path / "metrics.jsonl")) == 6


def test_on_bad_row_flows_from_the_config(tiny, tmp_path, capsys):
    config, root = tiny
    bad = write_pairs(tmp_path / "bad.jsonl", 64, seed=3, bad_line=5)
    args = ["train", "--config", str(config), "--config.mesh.num_devices=1", f"--config.data.train.path={bad}",
            "--config.train.num_steps=2"]
    assert cli_main([*args, "--workdir", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert "data error" in err and "bad.jsonl:5" in err and "on_bad_row=skip" in err
    assert cli_main([*args, "--workdir", str(tmp_path / "b"), "--config.data.train.on_bad_row=skip",
                     "--config.export.dir=model"]) == 0
    out = capsys.readouterr().out
    assert "skipped 1 bad row(s)" in out
    assert f"exported step 2 to {tmp_path / 'b' / 'model'}" in out  # export.dir: written after training
    assert (tmp_path / "b" / "model" / "model.safetensors").exists()


def test_length_grouped_batches_keep_every_row(minilm_dir):
    from transformers import AutoTokenizer

    from siamjax.data import PairDataset

    tokenizer = AutoTokenizer.from_pretrained(str(minilm_dir))
    rng = np.random.default_rng(0)
    s1 = [" ".join(rng.choice(WORDS, rng.integers(1, 30))) + f" {i}" for i in range(64)]
    s2 = [f"short {i}" for i in range(64)]
    data = PairDataset("d", ("a", "b"), (s1, s2), np.arange(64, dtype=np.float32), "score")
    grouped = length_grouped(data, tokenizer, 8, epochs=2, seed=0, max_length=128)
    assert len(grouped) == 128
    for epoch in range(2):
        rows = grouped.texts[0][epoch * 64:(epoch + 1) * 64]
        assert sorted(rows) == sorted(s1)
        labels = grouped.labels[epoch * 64:(epoch + 1) * 64]
        assert [s1[int(i)] for i in labels] == rows, "labels stay with their pair"
    lengths = np.array([len(tokenizer(t)["input_ids"]) for t in grouped.texts[0][:64]]).reshape(8, 8)
    spread = (lengths.max(1) - lengths.min(1)).mean()
    shuffled = np.array([len(tokenizer(t)["input_ids"]) for t in s1]).reshape(8, 8)
    assert spread < (shuffled.max(1) - shuffled.min(1)).mean() / 2


# The full quickstart recipe trains for 9 minutes on a quiet 2-core machine, a third of the suite's
# budget: CI runs the same command for a few updates, and SIAMJAX_RECIPE_TESTS=1 runs it whole.
RECIPE_TESTS = os.environ.get("SIAMJAX_RECIPE_TESTS") == "1"


def _quickstart(stsb_dir, workdir, *overrides):
    """The README quickstart, exactly: one `siamjax train` with configs/stsb_minilm.py (which
    exports <workdir>/model at the end), on one CPU device as a user has (no XLA_FLAGS)."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    run = subprocess.run([sys.executable, "-m", "siamjax.cli", "train", "--config",
                          str(REPO / "configs" / "stsb_minilm.py"), "--workdir", str(workdir),
                          f"--config.data.train.path={stsb_dir / 'sts-train.csv'}",
                          f"--config.eval.sts.path={stsb_dir / 'sts-dev.csv'}", *overrides],
                         env=env, capture_output=True, text=True, timeout=1800, cwd=REPO)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return run


@pytest.mark.slow
def test_quickstart_command_trains_evaluates_and_exports(stsb_dir, tmp_path):
    """The quickstart command for 6 of its 179 updates: the config's data, packing, dev
    evaluation and export work, and the exported folder encodes."""
    from siamjax.encoder import SentenceEncoder

    run = _quickstart(stsb_dir, tmp_path / "run", "--config.train.num_steps=6")
    assert f"exported step 6 to {tmp_path / 'run' / 'model'}" in run.stdout
    dev = [r for r in read_jsonl(tmp_path / "run" / "metrics.jsonl") if "sts/spearman_cosine" in r]
    assert [r["step"] for r in dev] == [6] and 50 < dev[0]["sts/spearman_cosine"] < 100
    embeddings = SentenceEncoder.from_pretrained(tmp_path / "run" / "model").encode(["a cat sits", "a dog runs"])
    assert embeddings.shape == (2, 384) and np.isfinite(embeddings).all()


@pytest.mark.slow
@pytest.mark.skipif(not RECIPE_TESTS, reason="the whole quickstart recipe (9 min on 2 cores): SIAMJAX_RECIPE_TESTS=1")
def test_quickstart_reaches_85_spearman(stsb_dir, tmp_path):
    """The whole quickstart, then STS-b test on its folder (all-MiniLM-L6-v2 starts at 82.03; the
    recipe, chosen on dev, measured 85.96). Asserts >= 85.0, and that the dev score it was chosen
    by beats the base model's 86.72. Its wall time is printed, not asserted: timing never goes
    into a unit test; the quiet-machine time is measured and stated in the README."""
    from siamjax.encoder import SentenceEncoder
    from siamjax.evaluation import STSEvaluator

    start = time.perf_counter()
    run = _quickstart(stsb_dir, tmp_path / "run")
    minutes = (time.perf_counter() - start) / 60
    assert "exported step" in run.stdout
    model = SentenceEncoder.from_pretrained(tmp_path / "run" / "model")
    spearman = STSEvaluator.from_file(stsb_dir / "sts-test.csv")(model)["spearman_cosine"]
    print(f"quickstart: {minutes:.1f} min, STS-b test spearman_cosine {spearman:.2f}")
    dev = [r["sts/spearman_cosine"] for r in read_jsonl(tmp_path / "run" / "metrics.jsonl")
           if "sts/spearman_cosine" in r][-1]
    assert dev > 86.72
    assert spearman >= 85.0


def test_sharded_mnrl_with_grad_cache_from_the_config(tiny, tmp_path):
    """loss.sharded + train.grad_cache_chunk on a 2 x 4 mesh = plain MNRL on one device."""
    config, _ = tiny
    common = ["--config.loss.name=mnrl", "--config.data.train.columns=(('s1','s1'),('s2','s2'))",
              "--config.train.dropout=false", "--config.train.num_steps=4", "--config.checkpoint.every_steps=100"]
    curves = {}
    for name, overrides in {"plain": ["--config.mesh.num_devices=1"],
                            "cached": ["--config.mesh.data=2", "--config.mesh.fsdp=4", "--config.loss.sharded=true",
                                       "--config.train.grad_cache_chunk=8"]}.items():
        train.train_and_evaluate(load_config(str(config), [*common, *overrides]), tmp_path / name)
        curves[name] = [per_step(tmp_path / name, "loss")[s] for s in range(1, 5)]
    np.testing.assert_allclose(curves["cached"], curves["plain"], atol=1e-5, rtol=0)
