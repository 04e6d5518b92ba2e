"""Bad inputs and faults through the real `siamjax` command, one class of problem per case.

Each case asserts what issue 18 asks of every failure: the documented exit code, exactly one line
on stderr with no traceback, the file / line / field named, and no output file or checkpoint
written or damaged. Cases that must succeed (a BOM, a bare "\\r" inside a line, a corrupt newest
checkpoint) assert the right result instead. To stay fast, the cases run in one child process
(`cli_driver.py`, each case with its own stdout/stderr file descriptors); the storage cases run
in a second one inside a private mount namespace (tmpfs for disk full, read-only mounts), and
the workdir-lock cases start real concurrent trainers.
"""
import hashlib
import json
import os
import pathlib
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from config_fixtures import WORDS, read_jsonl, write_tiny_config

pytestmark = pytest.mark.slow  # several minutes: scheduled first (tests/conftest.py)

DRIVER = pathlib.Path(__file__).with_name("cli_driver.py")
TIMEOUT = 900


# ----------------------------------------------------------------------------- fixtures
def run_driver(steps: list, workdir: pathlib.Path, wrap: list[str] | None = None) -> list[dict]:
    """Runs `steps` (argv lists / {"exec": code}) in one child process; one result per step."""
    cases, results = workdir / "cases.json", workdir / "results.json"
    cases.write_text(json.dumps(steps, default=str))
    command = [sys.executable, str(DRIVER), str(cases), str(results)]
    if wrap:  # the command goes inside the wrapper's shell script
        command = [*wrap[:-1], f"{wrap[-1]} {shlex.join(command)}"]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 0 and results.exists(), proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(results.read_text())


def tree_digest(folder: pathlib.Path) -> dict[str, str]:
    """relative path -> sha1 of every file under `folder` (to prove nothing changed)."""
    return {str(p.relative_to(folder)): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def write_pairs(path: pathlib.Path, n: int, seed: int) -> pathlib.Path:
    rng = np.random.default_rng(seed)
    rows = [{"s1": " ".join(rng.choice(WORDS, 4)) + f" {i}", "s2": " ".join(rng.choice(WORDS, 5)) + f" {i}",
             "score": float(rng.random())} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def damaged_copy(model: pathlib.Path, target: pathlib.Path, damage) -> str:
    shutil.copytree(model, target)
    damage(target)
    return str(target)


def garble(folder: pathlib.Path) -> None:
    """Random bytes over 4 KB in the middle of the tensor data (header and sizes intact)."""
    path = folder / "model.safetensors"
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 4096] = np.random.default_rng(0).bytes(4096)
    path.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def world(tmp_path_factory, minilm_dir):
    """A tiny model folder, its damaged copies, data files of every bad kind, a tiny config."""
    import siamjax
    from transformers import AutoTokenizer

    root = tmp_path_factory.mktemp("bad_inputs")
    tok = AutoTokenizer.from_pretrained(str(minilm_dir))
    cfg = siamjax.BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                             intermediate_size=64, max_position_embeddings=64)
    model = siamjax.SentenceEncoder.from_config(cfg, tok, normalize=True, seed=0).save(root / "tiny")
    st = model / "model.safetensors"
    models = {
        "tiny": str(model),
        "notok": damaged_copy(model, root / "notok", lambda p: [os.remove(p / f) for f in
                                                               ("tokenizer.json", "tokenizer_config.json")]),
        "garbled": damaged_copy(model, root / "garbled", garble),
        "truncated": damaged_copy(model, root / "truncated",
                                  lambda p: (p / "model.safetensors").write_bytes(st.read_bytes()[:100_000])),
        "empty": damaged_copy(model, root / "empty", lambda p: (p / "model.safetensors").write_bytes(b"")),
    }
    d = root / "data"
    d.mkdir()
    train = write_pairs(d / "train.jsonl", 64, seed=0)
    rows = read_jsonl(train)
    files = {
        "train": train,
        "empty": d / "empty.jsonl",
        "nocol": d / "nocol.csv", "suffix": d / "train.parquet2", "allbad": d / "allbad.jsonl",
        "dups": d / "dups.jsonl", "nulltrain": d / "nulltrain.jsonl",
        "sts": d / "sts.csv", "sts_bom": d / "sts_bom.csv", "sts_75": d / "sts_75.csv", "sts_true": d / "sts_true.jsonl",
        "nulltext": d / "null.jsonl", "cr": d / "cr.txt", "corpus": d / "corpus.txt", "nan": d / "nan.npy",
        "nullcorpus": d / "nullcorpus.jsonl",
    }
    files["empty"].write_text("")
    files["nocol"].write_text("s1,s3,score\n" + "".join(f"{r['s1']},{r['s2']},{r['score']}\n" for r in rows))
    files["suffix"].write_text(train.read_text())
    files["allbad"].write_text("".join(json.dumps({"s1": "a", "s2": "b", "score": "high"}) + "\n" for _ in range(40)))
    files["dups"].write_text("".join(json.dumps({"s1": "a b", "s2": "c d", "score": 0.5}) + "\n" for _ in range(40)))
    files["nulltrain"].write_text(train.read_text() + json.dumps({"s1": None, "s2": "x", "score": 0.1}) + "\n")
    sts = "sentence1,sentence2,score\nA man eats.,A man is eating.,4.5\nA cat.,The stock market.,0.2\nDogs run.,A dog runs.,3.8\n"
    files["sts"].write_text(sts)
    files["sts_bom"].write_bytes(b"\xef\xbb\xbf" + sts.encode())
    files["sts_75"].write_text(sts.replace("0.2", "7.5"))
    files["sts_true"].write_text('{"sentence1": "a", "sentence2": "b", "score": true}\n'
                                 '{"sentence1": "c", "sentence2": "d", "score": 1}\n')
    files["nulltext"].write_text('{"text": "hello"}\n{"text": null}\n')
    files["nullcorpus"].write_text('{"_id": "a", "text": "a cat"}\n{"_id": "b", "text": null}\n')
    files["cr"].write_bytes(b"hello\rworld\nfoo\n")
    files["corpus"].write_text("a cat\na dog\na fish\n")
    np.save(files["nan"], np.array([[0.5] * 32, [np.nan] * 32, [1.0] * 32], np.float32))
    beirs = {}
    for name, qrels, bom in (("beir_missing", "q1\td1\t1\nq1\tnope\t1\n", False), ("beir_bom", "q1\td1\t1\n", True)):
        b = root / name
        (b / "qrels").mkdir(parents=True)
        prefix = b"\xef\xbb\xbf" if bom else b""
        (b / "corpus.jsonl").write_bytes(prefix + b'{"_id": "d1", "text": "a cat"}\n{"_id": "d2", "text": "a dog"}\n')
        (b / "queries.jsonl").write_bytes(prefix + b'{"_id": "q1", "text": "cat"}\n')
        (b / "qrels" / "test.tsv").write_bytes(prefix + b"query-id\tcorpus-id\tscore\n" + qrels.encode())
        beirs[name] = str(b)
    config = write_tiny_config(root / "tiny.py", tokenizer=minilm_dir, fields={
        "model.max_seq_length": 32, "data.train.path": str(train),
        "data.train.columns": (("s1", "s1"), ("s2", "s2"), ("score", "score")), "data.buckets": (16, 32),
        "loss.name": "cosent", "train.num_steps": 4, "checkpoint.every_steps": 2, "mesh.num_devices": 1})
    return {"root": root, "models": models, "files": {k: str(v) for k, v in files.items()}, **beirs,
            "config": str(config)}


# ----------------------------------------------------------------------------- the cases
def train(world, workdir, *overrides):
    return ["train", "--config", world["config"], "--workdir", str(workdir), *overrides]


def encode(model, inp, out):
    return ["encode", "--model", model, "--input", inp, "--output", out, "--quiet"]


def input_cases(w) -> list[tuple]:
    """(name, argv, exit code, stderr regex, paths that must not exist afterwards)."""
    m, f, out = w["models"], w["files"], w["root"] / "out"
    run = w["root"] / "runs"
    return [
        # model folders: silent garbage before, now one line naming the file
        ("missing tokenizer", encode(m["notok"], f["corpus"], out / "a.npy"), 2,
         r"notok: no tokenizer files", [out / "a.npy"]),
        ("garbled tensor bytes", encode(m["garbled"], f["corpus"], out / "b.npy"), 2,
         r"garbled: tensor '[\w.]+' has (\d+ non-finite value|a value of magnitude)", [out / "b.npy"]),
        ("truncated safetensors", encode(m["truncated"], f["corpus"], out / "c.npy"), 2,
         r"truncated/model\.safetensors: truncated", [out / "c.npy"]),
        ("0-byte safetensors", ["eval", "sts", "--model", m["empty"], "--data", f["sts"], "--output", out / "d.json"],
         2, r"empty/model\.safetensors: truncated safetensors file \(0 bytes", [out / "d.json"]),
        ("damaged model in training", train(w, run / "m", f"--config.model.name_or_path={m['garbled']}"), 2,
         r"config error: model\.name_or_path=.*garbled.*(non-finite|magnitude)", [run / "m" / "checkpoints"]),
        # training data and config: one line, the file/line or the field
        ("empty training file", train(w, run / "a", f"--config.data.train.path={f['empty']}"), 2,
         r"empty\.jsonl: file is empty", [run / "a" / "checkpoints"]),
        ("header without a named column", train(w, run / "b", f"--config.data.train.path={f['nocol']}"), 2,
         r"nocol\.csv:1: no column 's2' for s2", [run / "b" / "checkpoints"]),
        ("unknown suffix", train(w, run / "c", f"--config.data.train.path={f['suffix']}"), 2,
         r"train\.parquet2: cannot tell the format", [run / "c" / "checkpoints"]),
        ("every row bad with skip", train(w, run / "d", f"--config.data.train.path={f['allbad']}",
                                          "--config.data.train.on_bad_row=skip"), 2,
         r"allbad\.jsonl: no data rows \(40 bad row", [run / "d" / "checkpoints"]),
        ("score_range reversed", train(w, run / "e", "--config.data.train.score_range=(5.0, 0.0)"), 2,
         r"config error: data\.train\.score_range=\(5\.0, 0\.0\): must be \(low, high\)", [run / "e" / "checkpoints"]),
        ("all-duplicate rows", train(w, run / "f", f"--config.data.train.path={f['dups']}"), 2,
         r"cannot fill a batch of 16.*data\.no_duplicates=false", []),
        ("num_steps=0", train(w, run / "g", "--config.train.num_steps=0"), 2,
         r"config error: train\.num_steps=0: must be >= 1, or -1", [run / "g" / "checkpoints"]),
        ("null text in training", train(w, run / "h", f"--config.data.train.path={f['nulltrain']}"), 2,
         r"nulltrain\.jsonl:65: column 's1' is missing or null.*on_bad_row=skip", [run / "h" / "checkpoints"]),
        # readers that once disagreed with training
        ("STS score out of range", ["eval", "sts", "--model", m["tiny"], "--data", f["sts_75"], "--quiet"], 2,
         r"sts_75\.csv:3: score 7\.5 out of range \[0\.0, 5\.0\]", []),
        ("JSON true as a score", ["eval", "sts", "--model", m["tiny"], "--data", f["sts_true"], "--quiet"], 2,
         r"sts_true\.jsonl:1: score True is not a number", []),
        ("null text to encode", encode(m["tiny"], f["nulltext"], out / "e.npy"), 2,
         r'null\.jsonl:2: expected an object with a non-empty string "text"', [out / "e.npy"]),
        ("null text in a search corpus", ["search", "--model", m["tiny"], "--corpus", f["nullcorpus"], "--query", "cat",
                                         "--output", out / "f.json"], 2, r"nullcorpus\.jsonl:2: ", [out / "f.json"]),
        ("qrels naming a missing document", ["eval", "retrieval", "--model", m["tiny"], "--data", w["beir_missing"],
                                             "--output", out / "g.json"], 2,
         r"qrels/test\.tsv:3: corpus-id 'nope' is not in corpus\.jsonl", [out / "g.json"]),
        ("NaN rows in corpus embeddings", ["search", "--model", m["tiny"], "--corpus", f["corpus"], "--query", "cat",
                                           "--corpus-embeddings", f["nan"]], 2,
         r"nan\.npy: row 1 \(text 2 of .*corpus\.txt\) is not finite", []),
    ]


def success_cases(w) -> list[tuple]:
    """(name, argv, check(result)) for inputs that must work, and work right."""
    m, f, out = w["models"], w["files"], w["root"] / "out"

    def npy_rows(path, n):
        return lambda r: np.load(path).shape[0] == n
    return [
        ("bare \\r stays inside its line", encode(m["tiny"], f["cr"], out / "cr.npy"), npy_rows(out / "cr.npy", 2)),
        ("BOM in an eval csv header", ["eval", "sts", "--model", m["tiny"], "--data", f["sts_bom"], "--quiet",
                                       "--output", out / "bom.json"], lambda r: "3 pairs" in r["out"]),
        ("BOM in every BEIR file", ["eval", "retrieval", "--model", m["tiny"], "--data", w["beir_bom"], "--quiet"],
         lambda r: "1 queries, 2 documents" in r["out"]),
        ("qrels skipped with --on-bad-row skip", ["eval", "retrieval", "--model", m["tiny"], "--data",
                                                  w["beir_missing"], "--quiet", "--on-bad-row", "skip"],
         lambda r: "skipped 1 qrels line(s)" in r["out"] and "test.tsv:3: corpus-id 'nope'" in r["out"]),
    ]


def checkpoint_steps(w) -> list:
    """A run, then: bad config/data on it (checkpoints untouched), a corrupt newest checkpoint
    (export falls back; train resumes without a flood), every checkpoint corrupt (export fails)."""
    ck, out = w["root"] / "ck", w["root"] / "out"
    digest = f"import hashlib, pathlib\nresult = {{str(p): hashlib.sha1(p.read_bytes()).hexdigest() " \
             f"for p in sorted(pathlib.Path({str(ck)!r}).rglob('*')) if p.is_file() and " \
             f"(p.name == 'config.json' or 'checkpoints' in p.parts)}}"

    def corrupt(*steps):
        return {"exec": "import pathlib\n" + "".join(
            f"for p in (pathlib.Path({str(ck / 'checkpoints' / str(s))!r}) / 'state').rglob('*'):\n"
            f"    p.write_bytes(b'garbage') if p.is_file() and p.stat().st_size else None\n" for s in steps)}
    return [
        ("train", train(w, ck)),
        ("digest before", {"exec": digest}),
        ("bad config on a run", train(w, ck, "--config.train.num_steps=0")),
        ("bad data on a run", train(w, ck, f"--config.data.train.path={w['files']['empty']}",
                                    "--config.train.num_steps=8")),
        ("digest after", {"exec": digest}),
        ("corrupt step 4", corrupt(4)),
        ("export falls back", ["export", "--workdir", ck, "--output", out / "fallback"]),
        ("resume past it", train(w, ck, "--config.train.num_steps=6")),
        ("corrupt all", corrupt(4, 6)),
        ("export with none usable", ["export", "--workdir", ck, "--output", out / "none"]),
        ("internal bug", {"exec": "import siamjax.cli.encode_cmd as m\n"
                                  "def boom(path): raise RuntimeError('boom')\nm.read_texts = boom"}),
        ("internal bug reported", encode(w["models"]["tiny"], w["files"]["corpus"], out / "bug.npy")),
    ]


@pytest.fixture(scope="module")
def results(world):
    """Every case of this module's first three lists, run in one child process."""
    (world["root"] / "out").mkdir()
    steps = ([c[1] for c in input_cases(world)] + [c[1] for c in success_cases(world)]
             + [s[1] for s in checkpoint_steps(world)])
    outcome = run_driver(steps, world["root"])
    print("seconds per step:", [r["seconds"] for r in outcome])  # shown when a test fails
    names = ([c[0] for c in input_cases(world)] + [c[0] for c in success_cases(world)]
             + [s[0] for s in checkpoint_steps(world)])
    return dict(zip(names, outcome))


def assert_one_line(result, code, pattern):
    err = result["err"]
    assert result["code"] == code, result
    assert "Traceback" not in err and err.count("\n") == 1 and err.startswith("siamjax "), err
    assert re.search(pattern, err), err


# ----------------------------------------------------------------------------- tests
@pytest.mark.parametrize("index", range(19))
def test_bad_input_is_one_line_with_its_exit_code(world, results, index):
    name, argv, code, pattern, absent = input_cases(world)[index]
    assert_one_line(results[name], code, pattern)
    for path in absent:
        assert not pathlib.Path(path).exists(), f"{name}: {path} was written"
    if argv[0] == "train":
        workdir = pathlib.Path(argv[argv.index("--workdir") + 1])
        assert not list(workdir.glob("checkpoints/*")), f"{name}: a checkpoint was written"
        if name in ("score_range reversed", "num_steps=0"):  # caught before anything is written
            assert not workdir.exists(), f"{name}: a bad config writes nothing"
        elif name != "all-duplicate rows":  # that one fails at the first batch, after the run folder is set up
            left = {p.name for p in workdir.iterdir()}  # only the lock and the log of why it failed
            assert left <= {"lock", "log.txt"}, f"{name}: {left}"


def test_every_input_case_is_checked(world):
    assert len(input_cases(world)) == 19


@pytest.mark.parametrize("index", range(4))
def test_inputs_that_must_work(world, results, index):
    name, _, check = success_cases(world)[index]
    result = results[name]
    assert result["code"] == 0 and "Traceback" not in result["err"], result
    assert check(result), result


def test_bom_does_not_change_the_numbers(world, results):
    assert results["BOM in an eval csv header"]["code"] == 0
    from siamjax import SentenceEncoder, evaluation

    model = SentenceEncoder.from_pretrained(world["models"]["tiny"])
    plain = evaluation.STSEvaluator.from_file(world["files"]["sts"])(model)
    written = json.loads((world["root"] / "out" / "bom.json").read_text())
    assert written == pytest.approx(plain, abs=1e-6)


def test_failed_runs_leave_checkpoints_untouched(results):
    assert results["train"]["code"] == 0, results["train"]
    assert_one_line(results["bad config on a run"], 2, r"train\.num_steps=0")
    assert_one_line(results["bad data on a run"], 2, r"empty\.jsonl: file is empty")
    before, after = results["digest before"]["code"], results["digest after"]["code"]
    assert before and before == after


def test_export_falls_back_to_the_newest_good_checkpoint(world, results):
    result = results["export falls back"]
    assert result["code"] == 0 and not result["err"], result
    assert re.search(r"^warning: skipped corrupt checkpoint\(s\) .*\(step 4: .*\); using step 2$", result["out"], re.M)
    assert "wrote step 2 of" in result["out"]
    assert (world["root"] / "out" / "fallback" / "model.safetensors").is_file()


def test_resume_after_a_corrupt_checkpoint_is_quiet(world, results):
    result = results["resume past it"]
    assert result["code"] == 0 and result["err"] == "", result  # orbax's tracebacks went to log.txt
    lines = result["out"].splitlines()
    assert len([line for line in lines if "corrupt" in line]) == 1, lines
    assert "resumed from" in result["out"] and "finished at step 6" in result["out"]
    assert "corrupt" in (world["root"] / "ck" / "log.txt").read_text()  # the details are kept there
    assert any((world["root"] / "ck" / "corrupt_checkpoints").iterdir())


def test_export_with_no_usable_checkpoint(world, results):
    assert_one_line(results["export with none usable"], 2, r"checkpoint error: no usable checkpoint in .*step 6: .*step 4: ")
    assert not (world["root"] / "out" / "none").exists()


def test_an_internal_error_is_one_line_not_exit_1(world, results):
    assert_one_line(results["internal bug reported"], 70,
                    r"internal error: RuntimeError: boom \(a bug in siamjax; rerun with --debug")


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
