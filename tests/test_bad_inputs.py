"""Bad inputs and faults through the real `siamjax` command, one class of problem per case.

Each case asserts what issue 18 asks of every failure: the documented exit code, exactly one line
on stderr with no traceback, the file / line / field named, and no output file or checkpoint
written or damaged. Cases that must succeed (a BOM, a bare "\\r" inside a line, a corrupt newest
checkpoint) assert the right result instead. To stay fast, the cases run in one child process
(`cli_driver.py`, each case with its own stdout/stderr file descriptors). Storage faults and
concurrent trainers are in test_bad_storage.py; the shared world is bad_input_fixtures.py.
"""
import json
import pathlib
import re

import numpy as np
import pytest

from bad_input_fixtures import assert_one_line, encode, run_driver, train, world  # noqa: F401 (a fixture)

pytestmark = pytest.mark.slow  # several minutes: scheduled first (tests/conftest.py)


# ----------------------------------------------------------------------------- the cases

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
        ("misspelt best_metric", train(w, run / "i", f"--config.eval.sts.path={f['sts']}",
                                       "--config.checkpoint.best_metric=sts/spearman_cosin"), 2,
         r"config error: checkpoint\.best_metric='sts/spearman_cosin': the evaluation reports sts/pearson_cosine, "
         r"sts/spearman_cosine$", [run / "i" / "checkpoints"]),
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
    assert len(input_cases(world)) == 20


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

