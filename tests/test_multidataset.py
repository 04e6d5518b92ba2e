"""Several training datasets in one run (`data.datasets`): three datasets with different columns
and losses train together, every batch comes from one dataset, proportional mixing follows the
weights, 2 processes x 4 devices equal 1 x 8, and SIGKILL + resume replays the batch sequence."""
import csv
import json
import pathlib
import re
import signal

import numpy as np
import pytest
from transformers import AutoTokenizer

from siamjax.data import GlobalBatchSampler, make_train_iterator, read_pairs
from siamjax.train.config import ConfigError
from siamjax.train.config_checks import validate
from siamjax.train.config_file import load_config
from siamjax.train.experiment import prepare_data
from siamjax.train.loop import batch_fingerprint

from config_fixtures import TINY_FIELDS, WORDS, read_jsonl
from test_multiprocess import finish, start, start_two, stop_all
from test_train import wait_for_checkpoint

pytestmark = pytest.mark.slow  # several minutes: scheduled first (tests/conftest.py)

STEPS = 12
RUN_TIMEOUT_S = 900  # three compiled steps per run, two runs at once, on a shared 2-core machine
# name -> (file, columns, own loss ("" = the run's sharded MNRL), weight, text suffixes per side)
DATASETS = {
    "nli": ("nli.tsv", (("premise", "premise"), ("entailed", "entailed"), ("contradicted", "contradicted")),
            "triplet", 0.2, ("p", "e", "c")),
    "qa": ("qa.jsonl", (("question", "question"), ("answer", "answer")), "", 0.5, ("q", "a")),
    "sts": ("sts.csv", (("s1", "s1"), ("s2", "s2"), ("score", "score")), "cosent", 0.3, ("s", "t")),
}
SIZES = {"nli": 48, "qa": 96, "sts": 64}


def write_data(root: pathlib.Path) -> None:
    """The three files: NLI-style triplets (tsv), question/answer pairs (jsonl), scored pairs (csv).
    Every text ends in its side's letter and row number (e.g. "q12"), so a batch shows its source."""
    rng = np.random.default_rng(0)
    words = lambda: " ".join(rng.choice(WORDS, rng.integers(2, 7)))  # noqa: E731
    with open(root / "nli.tsv", "w") as f:
        f.write("premise\tentailed\tcontradicted\n")
        f.writelines(f"{words()} p{i}\t{words()} e{i}\t{words()} c{i}\n" for i in range(SIZES["nli"]))
    with open(root / "qa.jsonl", "w") as f:
        f.writelines(json.dumps({"question": f"{words()} q{i}", "answer": f"{words()} a{i}"}) + "\n"
                     for i in range(SIZES["qa"]))
    with open(root / "sts.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["s1", "s2", "score"])
        writer.writerows([f"{words()} s{i}", f"{words()} t{i}", round(float(rng.random()), 3)]
                         for i in range(SIZES["sts"]))


def write_config(path: pathlib.Path, root: pathlib.Path, tokenizer) -> pathlib.Path:
    """A config module with the three datasets (proportional mixing by weight), sharded MNRL as the
    run loss, constant learning rate and no dropout (so every layout computes the same steps)."""
    tiny = "".join(f"    c.{name} = {value!r}\n" for name, value in TINY_FIELDS.items())
    groups = "".join(
        f"    g = train_dataset()\n    g.path = {str(root / file)!r}\n    g.columns = {columns!r}\n"
        f"    g.loss.name = {loss!r}\n    g.weight = {weight!r}\n    c.data.datasets[{name!r}] = g\n"
        for name, (file, columns, loss, weight, _) in DATASETS.items())
    path.write_text(
        "from siamjax.train.config import default_config, train_dataset\n\n\ndef get_config(arg=None):\n"
        f"    c = default_config()\n    c.model.init.tokenizer = {str(tokenizer)!r}\n{tiny}{groups}"
        "    c.data.mixing = 'proportional'\n    c.model.max_seq_length = 16\n    c.data.buckets = (16,)\n"
        "    c.loss.name = 'mnrl'\n    c.loss.sharded = True\n    c.optim.lr = 1e-3\n"
        "    c.optim.schedule = 'constant'\n    c.optim.warmup_steps = 0\n    c.train.dropout = False\n"
        f"    c.train.num_steps = {STEPS}\n    c.checkpoint.every_steps = 100\n    return c\n")
    return path


@pytest.fixture(scope="module")
def setup(tmp_path_factory, minilm_dir):
    root = tmp_path_factory.mktemp("multi")
    write_data(root)
    return write_config(root / "multi.py", root, minilm_dir), root


def sources(root):
    return [read_pairs(root / file, columns=dict(columns), name=name)
            for name, (file, columns, *_) in DATASETS.items()]


def test_every_batch_comes_from_one_dataset(setup, minilm_dir):
    """Decoded texts of every batch carry the suffixes of one dataset; S and labels follow it."""
    _, root = setup
    tokenizer = AutoTokenizer.from_pretrained(minilm_dir)
    weights = [spec[3] for spec in DATASETS.values()]
    it = make_train_iterator(sources(root), tokenizer, global_batch_size=16, max_seq_length=16, seed=0,
                             mixing="proportional", weights=weights, prefetch=0)
    names, seen = list(DATASETS), set()
    for _ in range(30):
        batch = next(it)
        d = int(batch["dataset"])
        suffixes = DATASETS[names[d]][4]
        assert batch["input_ids"].shape[0] == len(suffixes) and ("labels" in batch) == (names[d] == "sts")
        for side, letter in enumerate(suffixes):
            for text in tokenizer.batch_decode(batch["input_ids"][side], skip_special_tokens=True):
                assert text.split()[-1].rstrip("0123456789") == letter, (names[d], text)
        seen.add(d)
    it.close()
    assert seen == {0, 1, 2}


def test_prompts_are_prepended_per_side_and_keep_the_text_ids(setup, minilm_dir):
    _, root = setup
    tokenizer = AutoTokenizer.from_pretrained(minilm_dir)
    kwargs = dict(global_batch_size=16, max_seq_length=16, seed=0, prefetch=0)
    plain = make_train_iterator(sources(root)[1:2], tokenizer, **kwargs)
    prompted = make_train_iterator(sources(root)[1:2], tokenizer, prompts=[{"question": "query:"}], **kwargs)
    a, b = next(plain), next(prompted)
    plain.close(), prompted.close()
    questions = tokenizer.batch_decode(b["input_ids"][0], skip_special_tokens=True)
    assert all(q.startswith("query :") for q in questions)
    assert tokenizer.batch_decode(b["input_ids"][1]) == tokenizer.batch_decode(a["input_ids"][1])
    np.testing.assert_array_equal(a["text_ids"], b["text_ids"])  # ids are about the data, not the prompt
    with pytest.raises(ValueError, match=r"prompts for \['anchor'\], which are not its sides"):
        make_train_iterator(sources(root)[1:2], tokenizer, prompts=[{"anchor": "q: "}], **kwargs)


def test_proportions_over_1000_batches_follow_the_weights(setup):
    _, root = setup
    weights = np.array([spec[3] for spec in DATASETS.values()])
    sampler = GlobalBatchSampler(sources(root), global_batch_size=16, seed=3, mixing="proportional",
                                 weights=weights)
    picks = np.bincount([sampler.next()[0] for _ in range(1000)], minlength=3) / 1000
    np.testing.assert_allclose(picks, weights, atol=0.03)
    by_size = GlobalBatchSampler(sources(root), global_batch_size=16, seed=3, mixing="proportional")
    sizes = np.array([SIZES[name] // 16 for name in DATASETS])
    picks = np.bincount([by_size.next()[0] for _ in range(sizes.sum() * 10)], minlength=3)
    np.testing.assert_array_equal(picks, sizes * 10)  # no weights: one slot per batch of each dataset


@pytest.mark.parametrize("change, message", [
    ({"data.mixing": "round_robin"}, "weights are set for"),
    ({"data.datasets.qa.loss.name": "nope"}, r"data.datasets.qa.loss.name='nope': unknown"),
    ({"data.train.path": "x.jsonl"}, "data.train and data.datasets are both set"),
    ({"data.datasets.qa.prompts": (("query", "q: "),)}, r"prompts names \['query'\], which are not text sides"),
    ({"data.datasets.qa.shards": "/nowhere"}, "path and shards are both set"),
    ({"data.datasets.qa.loss.name": "gist"}, r"data.datasets.qa.loss.name='gist': a guided loss needs loss.guide"),
    ({"data.datasets.qa.loss.name": "margin_mse"}, r"data.datasets.qa.loss.name='margin_mse' distils teacher data"),
])
def test_bad_dataset_settings_name_the_field(setup, change, message):
    config, _ = setup
    c = load_config(str(config), [])
    for name, value in change.items():
        group, field = name.rsplit(".", 1)
        target = c
        for part in group.split("."):
            target = target[part]
        target[field] = value
    with pytest.raises(ConfigError, match=message):
        validate(c)


@pytest.fixture(scope="module")
def runs(setup, tmp_path_factory):
    """The same run as 1 process x 8 devices (uninterrupted) and as 2 processes x 4 devices, the
    latter killed with SIGKILL (both processes) after its step-3 checkpoint and restarted."""
    config, _ = setup
    out = tmp_path_factory.mktemp("runs")
    one = start(1, 8, config, out / "1x8")
    two = start_two(config, out / "2x4", "--config.checkpoint.every_steps=3", heartbeat_s=60)
    try:
        wait_for_checkpoint(out / "2x4", two[0], 3, timeout=RUN_TIMEOUT_S)
    finally:
        stop_all(two)  # SIGKILL: no chance to save or clean up
    assert [p.returncode for p in two] == [-signal.SIGKILL] * 2
    resumed = start(2, 4, config, out / "2x4", "--config.checkpoint.every_steps=3")
    try:
        logs = {"2x4": finish(resumed, RUN_TIMEOUT_S), "1x8": finish(one, RUN_TIMEOUT_S)}
    finally:
        for proc in (one, resumed):
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
                proc.communicate(timeout=60)
    return {name: out / name for name in logs}, logs


def per_step(workdir, *keys):
    return {r["step"]: tuple(r.get(k) for k in keys) for r in read_jsonl(pathlib.Path(workdir) / "metrics.jsonl")
            if "loss" in r}


def expected_batches(config, minilm_dir, process_index, process_count):
    """{step: (dataset, fingerprint)} of the host batches process `process_index` must see,
    from the pipeline alone (no training)."""
    c = load_config(str(config), [])
    tokenizer = AutoTokenizer.from_pretrained(minilm_dir)
    data = prepare_data(c, tokenizer)
    it = make_train_iterator([ts.source for ts in data.sets], tokenizer, global_batch_size=c.train.batch_size,
                             max_seq_length=c.model.max_seq_length, seed=c.seed, mixing=c.data.mixing,
                             weights=[ts.weight for ts in data.sets], buckets=tuple(c.data.buckets),
                             process_index=process_index, process_count=process_count, prefetch=0)
    batches = {step: next(it) for step in range(1, STEPS + 1)}
    it.close()
    return {step: (int(b["dataset"]), batch_fingerprint(b)) for step, b in batches.items()}


@pytest.mark.slow
def test_three_datasets_train_together_and_two_processes_equal_one(runs):
    workdirs, _ = runs
    one, two = per_step(workdirs["1x8"], "dataset", "loss"), per_step(workdirs["2x4"], "dataset", "loss")
    assert sorted(one) == sorted(two) == list(range(1, STEPS + 1))
    assert [one[s][0] for s in one] == [two[s][0] for s in one], "both layouts draw the same datasets"
    assert {one[s][0] for s in one} == {0, 1, 2}
    np.testing.assert_allclose([two[s][1] for s in one], [one[s][1] for s in one], atol=1e-5, rtol=0)
    for r in (r for r in read_jsonl(workdirs["1x8"] / "metrics.jsonl") if "loss" in r):
        name = list(DATASETS)[r["dataset"]]  # each step also reports its loss under its dataset's name
        assert r[f"loss/{name}"] == r["loss"] and [k for k in r if k.startswith("loss/")] == [f"loss/{name}"]
    info = json.loads((workdirs["1x8"] / "run_info.json").read_text())
    assert info["datasets"] == list(DATASETS)


@pytest.mark.slow
def test_sigkill_and_resume_replay_the_batch_sequence(setup, runs, minilm_dir):
    """Every host batch of both runs, the killed-and-resumed one included, is the batch the
    pipeline gives for that step and process: same dataset, same bytes."""
    config, _ = setup
    workdirs, logs = runs
    resumed_at = re.search(r"resumed from \S+/(\d+)", logs["2x4"])
    assert resumed_at and int(resumed_at.group(1)) < STEPS, "the kill must land before the last step"
    for name, processes in (("1x8", 1), ("2x4", 2)):  # process 0 logs its own batches
        logged = per_step(workdirs[name], "dataset", "batch_fingerprint")
        assert logged == expected_batches(config, minilm_dir, 0, processes), name
