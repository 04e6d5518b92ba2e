"""Prepared datasets: `siamjax data prepare` streams files into array_record shards + index.json;
training on the folder gives exactly the batches of training on the file; bad rows stop it with
FILE:LINE or are skipped and counted."""
import hashlib
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from siamjax import train
from siamjax.cli import main as cli_main
from siamjax.data import BadRowError, DataError, open_shards, prepare_shards, read_pairs
from siamjax.train.config_file import load_config

from config_fixtures import WORDS, read_jsonl, write_tiny_config

COLUMNS = {"anchor": "q", "positive": "p", "score": "s"}


def rows(n, seed=0):
    rng = np.random.default_rng(seed)
    return [{"q": " ".join(rng.choice(WORDS, rng.integers(2, 9))) + f" q{i}",
             "p": " ".join(rng.choice(WORDS, rng.integers(2, 9))) + f" p{i % 40}",  # repeated positives
             "s": round(float(rng.random()), 4)} for i in range(n)]


def write_jsonl(path, records, bad_line=None):
    lines = [json.dumps(r) for r in records]
    if bad_line:
        lines[bad_line - 1] = '{"q": "broken", "p": "row", "s": "high"}'
    path.write_text("\n".join(lines) + "\n")
    return path


def write_table(path, records, fmt):
    if fmt == "parquet":
        pq.write_table(pa.Table.from_pylist(records), path, row_group_size=17)
        return path
    sep = "\t" if fmt == "tsv" else ","
    quote = (lambda v: f'"{v}"') if fmt == "csv" else str
    body = "".join(sep.join(quote(r[k]) for k in ("q", "p", "s")) + "\n" for r in records)
    path.write_text(sep.join(("q", "p", "s")) + "\n" + body)
    return path


def assert_same_rows(source, dataset):
    assert len(source) == len(dataset) and source.sides == dataset.sides
    for i in range(len(dataset)):
        ex, ref = source[i], dataset[i]
        assert ex.texts == ref.texts and np.float32(ex.label) == np.float32(ref.label), i
        assert source.example_keys(i) == dataset.example_keys(i)


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "tsv", "parquet"])
def test_prepared_rows_equal_the_file_rows(fmt, tmp_path):
    records = rows(101)
    path = write_jsonl(tmp_path / "d.jsonl", records) if fmt == "jsonl" else write_table(tmp_path / f"d.{fmt}", records, fmt)
    index = prepare_shards(str(path), tmp_path / "out", columns=COLUMNS, num_shards=4)
    assert index["rows"] == 101 and index["shard_rows"] == [26, 25, 25, 25] and index["label_kind"] == "score"
    assert index["sources"][0]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "index.json", "keys.u64"] + [f"shard-0000{k}-of-00004.array_record" for k in range(4)]
    assert_same_rows(open_shards(tmp_path / "out"), read_pairs(path, columns=COLUMNS))


def test_teacher_targets_survive_preparing(tmp_path):
    records = [{"q": f"q{i}", "p": f"p{i}", "m": [0.1 * i, 1 / 3]} for i in range(7)]
    columns = {"anchor": "q", "positive": "p", "teacher": "m"}
    path = write_jsonl(tmp_path / "t.jsonl", records)
    source, dataset = open_shards(prepare_shards(str(path), tmp_path / "out", columns=columns, num_shards=2)
                                  and tmp_path / "out"), read_pairs(path, columns=columns)
    assert source.label_kind == "teacher" == dataset.label_kind
    for i in range(7):
        np.testing.assert_array_equal(np.asarray(source[i].label, np.float32), dataset[i].label)


def test_a_glob_of_files_is_prepared_in_order(tmp_path):
    write_jsonl(tmp_path / "part-1.jsonl", rows(30, seed=1))
    write_jsonl(tmp_path / "part-0.jsonl", rows(20, seed=0))
    index = prepare_shards(str(tmp_path / "part-*.jsonl"), tmp_path / "out", columns=COLUMNS, num_shards=3)
    assert [s["rows"] for s in index["sources"]] == [20, 30]
    source = open_shards(tmp_path / "out")
    assert [source[i].texts[0] for i in (0, 20)] == [rows(20, seed=0)[0]["q"], rows(30, seed=1)[0]["q"]]
    with pytest.raises(DataError, match="no file matches"):
        prepare_shards(str(tmp_path / "none-*.jsonl"), tmp_path / "x", columns=COLUMNS)
    with pytest.raises(DataError, match="exists and is not empty"):
        prepare_shards(str(tmp_path / "part-0.jsonl"), tmp_path / "out", columns=COLUMNS)


def test_a_malformed_row_stops_prepare_with_file_and_line(tmp_path, capsys):
    path = write_jsonl(tmp_path / "bad.jsonl", rows(50), bad_line=37)
    with pytest.raises(BadRowError, match=r"bad\.jsonl:37: score 'high' is not a number"):
        prepare_shards(str(path), tmp_path / "out", columns=COLUMNS)
    assert not (tmp_path / "out").exists(), "a failed prepare leaves nothing behind"
    args = ["data", "prepare", "--input", str(path), "--output", str(tmp_path / "cli"), "--shards", "2",
            "--column", "anchor=q", "--column", "positive=p", "--column", "score=s", "--quiet"]
    assert cli_main(args) == 2
    err = capsys.readouterr().err
    assert "data error" in err and "bad.jsonl:37: score 'high' is not a number" in err and "--on-bad-row skip" in err
    assert cli_main([*args, "--on-bad-row", "skip"]) == 0
    assert "wrote 49 rows (anchor, positive; score labels) in 2 shards" in capsys.readouterr().out
    index = json.loads((tmp_path / "cli" / "index.json").read_text())
    assert index["bad_rows"] == 1 and index["first_bad_rows"][0]["line"] == 37
    assert_same_rows(open_shards(tmp_path / "cli"), read_pairs(path, columns=COLUMNS, on_bad_row="skip"))


def test_a_damaged_folder_is_refused(tmp_path):
    prepare_shards(str(write_jsonl(tmp_path / "d.jsonl", rows(10))), tmp_path / "out", columns=COLUMNS, num_shards=2)
    (tmp_path / "out" / "shard-00001-of-00002.array_record").unlink()
    with pytest.raises(DataError, match="missing shard-00001-of-00002.array_record"):
        open_shards(tmp_path / "out")
    with pytest.raises(DataError, match="not a prepared dataset"):
        open_shards(tmp_path)


def test_training_on_prepared_shards_equals_training_on_the_file(tmp_path, minilm_dir):
    """Same seed: the same batches (fingerprints of every host batch) and the same losses."""
    path = write_jsonl(tmp_path / "train.jsonl", rows(80))
    assert cli_main(["data", "prepare", "--input", str(path), "--output", str(tmp_path / "shards"),
                     "--shards", "3", "--column", "anchor=q", "--column", "positive=p", "--quiet"]) == 0
    config = write_tiny_config(tmp_path / "tiny.py", tokenizer=minilm_dir, fields={
        "model.max_seq_length": 16, "data.buckets": (16,), "loss.name": "mnrl", "train.num_steps": 6,
        "train.dropout": False, "mesh.num_devices": 1, "checkpoint.every_steps": 100,
        "data.train.columns": (("anchor", "q"), ("positive", "p"))})
    logs = {}
    for name, source in {"file": f"--config.data.train.path={path}",
                         "shards": f"--config.data.train.shards={tmp_path / 'shards'}"}.items():
        train.train_and_evaluate(load_config(str(config), [source]), tmp_path / name)
        logs[name] = [(r["step"], r["batch_fingerprint"], r["loss"]) for r in read_jsonl(tmp_path / name / "metrics.jsonl")]
    assert [step for step, _, _ in logs["file"]] == list(range(1, 7))
    assert logs["shards"] == logs["file"]
