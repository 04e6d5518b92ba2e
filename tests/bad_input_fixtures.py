"""The world the bad-input tests share: a tiny model folder and its damaged copies, data files of
every bad kind, a tiny config, and the one-child-process driver (`cli_driver.py`) the cases run in.
"""
import json
import os
import pathlib
import re
import shlex
import shutil
import subprocess
import sys

import numpy as np
import pytest

from config_fixtures import WORDS, read_jsonl, write_tiny_config

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


def train(world, workdir, *overrides):
    return ["train", "--config", world["config"], "--workdir", str(workdir), *overrides]


def encode(model, inp, out):
    return ["encode", "--model", model, "--input", inp, "--output", out, "--quiet"]


def assert_one_line(result, code, pattern):
    err = result["err"]
    assert result["code"] == code, result
    assert "Traceback" not in err and err.count("\n") == 1 and err.startswith("siamjax "), err
    assert re.search(pattern, err), err

