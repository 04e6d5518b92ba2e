"""The `siamjax eval | encode | search` verbs: output, files written, --help, and bad inputs.

All but one test use a tiny random encoder saved as a model folder; the acceptance test runs the
real all-MiniLM-L6-v2 over the STS-b test set once and checks the printed Spearman (82.03).
"""
import json
import re
import subprocess
import sys

import numpy as np
import pytest

import siamjax
from siamjax import evaluation
from siamjax.cli import main
from siamjax.quantization import quantize_embeddings

CORPUS = ["A man is eating food.", "A man is riding a horse.", "Stock markets fell sharply.",
          "A woman plays the violin.", "The cat sleeps on the mat.", "Two dogs run in a field.",
          "Interest rates rose again.", "Someone is cooking pasta.", "A child reads a book."]


@pytest.fixture(scope="module")
def tiny_dir(minilm_dir, tmp_path_factory):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(minilm_dir))
    cfg = siamjax.BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                             intermediate_size=64, max_position_embeddings=64)
    model = siamjax.SentenceEncoder.from_config(cfg, tok, normalize=True, seed=0)
    return str(model.save(tmp_path_factory.mktemp("models") / "tiny"))


@pytest.fixture(scope="module")
def tiny(tiny_dir):
    return siamjax.SentenceEncoder.from_pretrained(tiny_dir)


@pytest.fixture
def files(tmp_path):
    def write(name, text):
        p = tmp_path / name
        p.write_text(text, encoding="utf-8")
        return str(p)
    return write


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


# ----------------------------------------------------------------------------- acceptance
def test_eval_sts_minilm_prints_published_spearman(capsys, minilm_dir, stsb_dir, tmp_path):
    code, out, err = run_cli(capsys, "eval", "sts", "--model", minilm_dir, "--data", stsb_dir / "sts-test.csv",
                             "--batch-size", 128, "--output", tmp_path / "m.json")
    assert code == 0, err
    row = re.search(r"^cosine\s+([\d.]+)\s+([\d.]+)$", out, re.M)
    assert row, out
    assert abs(float(row.group(2)) - 82.03) <= 0.05, out
    assert "1379 pairs" in out and "encode" in err  # progress bar on stderr
    assert json.loads((tmp_path / "m.json").read_text())["spearman_cosine"] == pytest.approx(float(row.group(2)), abs=0.006)


# ----------------------------------------------------------------------------- eval
def test_eval_sts_generic_file_and_columns(capsys, tiny_dir, tiny, files, tmp_path):
    data = files("p.csv", "a,b,gold\n" + "".join(f"{CORPUS[i]},{CORPUS[i + 1]},{i % 5}\n" for i in range(8)))
    code, out, err = run_cli(capsys, "eval", "sts", "--model", tiny_dir, "--data", data, "--columns",
                             "sentence1=a,sentence2=b,score=gold", "--quiet", "--output", tmp_path / "m.json")
    assert code == 0, err
    assert re.search(r"^similarity\s+Pearson\s+Spearman$", out, re.M) and "8 pairs" in out and not err
    written = json.loads((tmp_path / "m.json").read_text())
    expected = evaluation.STSEvaluator.from_file(
        data, columns={"sentence1": "a", "sentence2": "b", "score": "gold"})(tiny)
    assert written == pytest.approx(expected, abs=1e-4)


def write_beir(root, files):
    import pathlib

    root = pathlib.Path(root)
    (root / "qrels").mkdir(parents=True)
    (root / "corpus.jsonl").write_text("".join(json.dumps({"_id": f"d{i}", "text": t}) + "\n" for i, t in enumerate(CORPUS)))
    (root / "queries.jsonl").write_text('{"_id": "q1", "text": "who eats?"}\n{"_id": "q2", "text": "markets"}\n')
    (root / "qrels" / "dev.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td0\t1\nq1\td7\t1\nq2\td2\t1\n")
    return str(root)


def test_eval_retrieval(capsys, tiny_dir, tiny, tmp_path, files):
    beir = write_beir(tmp_path / "beir", files)
    code, out, err = run_cli(capsys, "eval", "retrieval", "--model", tiny_dir, "--data", beir, "--split", "dev",
                             "--output", tmp_path / "r.json")
    assert code == 0, err
    assert re.search(r"^ndcg@10\s+[\d.]+$", out, re.M) and re.search(r"^metric\s+cosine$", out, re.M)
    assert "2 queries, 9 documents" in out
    expected = evaluation.RetrievalEvaluator.from_beir(beir, "dev")(tiny)
    assert json.loads((tmp_path / "r.json").read_text()) == pytest.approx(expected)


def test_eval_triplet_binary_paraphrase(capsys, tiny_dir, files):
    trip = files("t.jsonl", "".join(json.dumps({"anchor": a, "positive": p, "negative": n}) + "\n"
                                    for a, p, n in zip(CORPUS, CORPUS[1:], CORPUS[2:])))
    pairs = files("p.tsv", "sentence1\tsentence2\tlabel\n" + "".join(
        f"{CORPUS[i]}\t{CORPUS[(i * 4) % 9]}\t{i % 2}\n" for i in range(9)))
    code, out, err = run_cli(capsys, "eval", "triplet", "--model", tiny_dir, "--data", trip, "--quiet")
    assert code == 0, err
    assert re.search(r"^accuracy\s+[\d.]+\s+[\d.]+\s+[\d.]+\s+[\d.]+$", out, re.M) and "7 triplets" in out
    code, out, err = run_cli(capsys, "eval", "binary", "--model", tiny_dir, "--data", pairs, "--quiet")
    assert code == 0, err
    assert re.search(r"^f1_threshold\s+-?\d+\.\d{4}\s", out, re.M) and re.search(r"^ap\s", out, re.M)
    code, out, err = run_cli(capsys, "eval", "paraphrase", "--model", tiny_dir, "--data", pairs, "--quiet")
    assert code == 0, err
    assert re.search(r"^average_precision\s+[\d.]+$", out, re.M)


@pytest.mark.parametrize("verb", [["eval", "sts"], ["eval", "retrieval"], ["eval", "triplet"], ["eval", "binary"],
                                  ["eval", "paraphrase"], ["encode"], ["search"], ["eval"]])
def test_help(capsys, verb):
    with pytest.raises(SystemExit) as exit_info:
        main([*verb, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: siamjax " + " ".join(verb)) and len(out) > 200


def test_console_entry_point_help():
    proc = subprocess.run([sys.executable, "-m", "siamjax.cli", "search", "--help"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0 and "--top-k" in proc.stdout


@pytest.mark.parametrize(
    "argv,match",
    [
        (["eval", "sts", "--data", "{missing}"], r"missing\.csv: no such file"),
        (["eval", "sts", "--data", "{bad_sts}"], r"bad\.csv:2: no column 6 for sentence2"),
        (["eval", "sts", "--data", "{pairs}", "--columns", "score=gold"], r"no column 'gold' for score"),
        (["eval", "binary", "--data", "{pairs}"], r"no column 'label'"),
        (["eval", "retrieval", "--data", "{tmp}"], r"qrels/test\.tsv: no such file"),
        (["eval", "sts", "--data", "{pairs}", "--output", "{tmp}/nodir/m.json"], "--output directory"),
        (["encode", "--input", "{blank}", "--output", "{tmp}/e.npy"], r"blank\.txt:2: empty line"),
        (["encode", "--input", "{corpus}", "--output", "{tmp}/e.txt"], "must end in .npy"),
        (["encode", "--input", "{bad_jsonl}", "--output", "{tmp}/e.npy"], r"c\.jsonl:1: invalid JSON"),
        (["encode", "--input", "{latin1}", "--output", "{tmp}/e.npy"], r"latin1\.txt:1: not valid UTF-8"),
        (["encode", "--input", "{corpus}", "--output", "{tmp}/e.npy", "--calibration", "{corpus}"], "not a readable .npy"),
        (["search", "--corpus", "{corpus}", "--queries", "{missing}"], r"missing\.csv: no such file"),
        (["search", "--corpus", "{corpus}", "--query", "x", "--corpus-embeddings", "{short_npy}"],
         r"shape \(2, 32\) does not match the 9 texts"),
    ],
)
def test_bad_inputs_exit_2_with_one_line(capsys, tiny_dir, files, tmp_path, argv, match):
    paths = {
        "missing": str(tmp_path / "missing.csv"), "tmp": str(tmp_path),
        "bad_sts": files("bad.csv", "a\tb\tc\td\t1.0\tx\ty\na\tb\tc\td\t2.0\tx\n"),
        "pairs": files("pairs.csv", "sentence1,sentence2,score\na,b,1\nc,d,2\n"),
        "blank": files("blank.txt", "one\n\nthree\n"), "corpus": files("corpus.txt", "\n".join(CORPUS) + "\n"),
        "bad_jsonl": files("c.jsonl", "{oops\n"),
    }
    (tmp_path / "latin1.txt").write_bytes(b"caf\xe9\n")
    paths["latin1"] = str(tmp_path / "latin1.txt")
    np.save(tmp_path / "short.npy", np.zeros((2, 32), np.float32))
    paths["short_npy"] = str(tmp_path / "short.npy")
    argv = [a.format(**paths) for a in argv]
    code, out, err = run_cli(capsys, *argv[:1], *([argv[1]] if argv[0] == "eval" else []), "--model", tiny_dir,
                             *argv[2 if argv[0] == "eval" else 1:])
    assert code == 2, (out, err)
    assert re.search(match, err), err
    assert err.startswith("siamjax ") and "Traceback" not in err and err.count("\n") == 1


def test_missing_model_and_usage_errors(capsys, files, tmp_path):
    data = files("p.csv", "sentence1,sentence2,score\na,b,1\nc,d,2\n")
    code, _, err = run_cli(capsys, "eval", "sts", "--model", tmp_path / "no_model", "--data", data)
    assert code == 2 and "no_model" in err and "does not exist" in err
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", "sts", "--model", "m", "--data", data, "--columns", "score"])
    assert exit_info.value.code == 2 and "FIELD=COLUMN" in capsys.readouterr().err
    for flag in ("--top-k", "--batch-size"):  # numeric flags are checked by argparse: usage error, exit 2
        with pytest.raises(SystemExit) as exit_info:
            main(["search", "--model", "m", "--corpus", data, "--query", "x", flag, "0"])
        assert exit_info.value.code == 2 and f"{flag}: must be >= 1, got 0" in capsys.readouterr().err


# ----------------------------------------------------------------------------- encode
@pytest.mark.parametrize("precision", ["float32", "int8", "ubinary"])
def test_encode_writes_npy(capsys, tiny_dir, tiny, files, tmp_path, precision):
    inp = files("in.txt", "\n".join(CORPUS) + "\n\n")
    code, out, err = run_cli(capsys, "encode", "--model", tiny_dir, "--input", inp, "--output", tmp_path / "e.npy",
                             "--precision", precision, "--batch-size", 4)
    assert code == 0, err
    got = np.load(tmp_path / "e.npy")
    emb = tiny.encode(CORPUS, batch_size=4)
    if precision == "float32":
        np.testing.assert_allclose(got, emb, atol=1e-6)
    else:
        np.testing.assert_array_equal(got, quantize_embeddings(emb, precision))
    assert f"wrote 9 x {got.shape[1]} {got.dtype}" in out and "encode" in err


def test_encode_jsonl_with_calibration(capsys, tiny_dir, tiny, files, tmp_path):
    inp = files("in.jsonl", "".join(json.dumps({"_id": str(i), "title": "T", "text": t}) + "\n"
                                    for i, t in enumerate(CORPUS[:3])))
    calib = tiny.encode(CORPUS)
    np.save(tmp_path / "calib.npy", calib)
    code, _, err = run_cli(capsys, "encode", "--model", tiny_dir, "--input", inp, "--output", tmp_path / "e.npy",
                           "--precision", "uint8", "--calibration", tmp_path / "calib.npy", "--quiet")
    assert code == 0, err
    expected = quantize_embeddings(tiny.encode([f"T {t}" for t in CORPUS[:3]]), "uint8", calibration=calib)
    np.testing.assert_array_equal(np.load(tmp_path / "e.npy"), expected)


# ----------------------------------------------------------------------------- search
def test_search_prints_table_and_matches_brute_force(capsys, tiny_dir, tiny, files, tmp_path):
    corpus = files("corpus.txt", "\n".join(CORPUS) + "\n")
    queries = files("q.txt", "who is eating?\nfinance\n")
    code, out, err = run_cli(capsys, "search", "--model", tiny_dir, "--corpus", corpus, "--queries", queries,
                             "--top-k", 3, "--output", tmp_path / "hits.json")
    assert code == 0, err
    assert "query 1: who is eating?" in out and "query 2: finance" in out
    assert len(re.findall(r"^\s+\d\s+-?\d\.\d{4}\s+\d+\s+\S", out, re.M)) == 6
    hits = json.loads((tmp_path / "hits.json").read_text())
    q = tiny.encode(["who is eating?", "finance"])
    c = tiny.encode(CORPUS)
    ref = np.argsort(-(q @ c.T), axis=1, kind="stable")[:, :3]  # the tiny model normalises
    assert [[CORPUS.index(h["text"]) for h in row["hits"]] for row in hits] == ref.tolist()
    assert hits[0]["hits"][0]["id"] == str(ref[0, 0] + 1)  # ids of a .txt are line numbers


def test_search_with_embeddings_file_and_binary_precision(capsys, tiny_dir, tiny, files, tmp_path):
    corpus = files("corpus.txt", "\n".join(CORPUS) + "\n")
    np.save(tmp_path / "c.npy", tiny.encode(CORPUS))
    code, out, err = run_cli(capsys, "search", "--model", tiny_dir, "--corpus", corpus, "--corpus-embeddings",
                             tmp_path / "c.npy", "--query", "a man", "--top-k", 2, "--precision", "binary",
                             "--rescore-multiplier", 5, "--quiet", "--output", tmp_path / "h.json")
    assert code == 0, err
    # 2 x 5 >= 9 candidates re-scored with the float embeddings: exactly the float search's top-2
    q, c = tiny.encode(["a man"]), tiny.encode(CORPUS)
    ref = np.argsort(-(q @ c.T)[0], kind="stable")[:2]
    got = [CORPUS.index(h["text"]) for h in json.loads((tmp_path / "h.json").read_text())[0]["hits"]]
    assert got == ref.tolist() and "query 1: a man" in out


# ----------------------------------------------------------------------------- one reader
@pytest.mark.parametrize("bad_row,reason", [
    ("g\tf\t2012\t2\thigh\tA\tB", "score 'high' is not a number"),
    ("g\tf\t2012\t2\t7.5\tA\tB", "score 7.5 out of range [0.0, 5.0]"),
    ("g\tf\t2012\t2\t4.0\tA", "no column 6 for sentence2: the row has 6 field(s)"),
])
def test_train_and_eval_report_a_bad_file_alike(capsys, tiny_dir, tmp_path, bad_row, reason):
    """The same bad STS-b file, read by `siamjax train` (as training data) and by `siamjax eval sts`,
    stops both with the same `FILE:LINE: reason` from the one row reader."""
    data = tmp_path / "sts-bad.csv"
    data.write_text("g\tf\t2012\t1\t4.0\tA man plays.\tA person plays.\n" + bad_row + "\n", encoding="utf-8")
    config = tmp_path / "c.py"
    config.write_text(
        "from siamjax.train.config import default_config\n\n\ndef get_config(arg=None):\n"
        "    c = default_config()\n"
        f"    c.model.name_or_path = {tiny_dir!r}\n"
        f"    c.data.train.path = {str(data)!r}\n"
        "    c.data.train.format = 'tsv'\n    c.data.train.header = False\n"
        "    c.data.train.columns = (('sentence1', 5), ('sentence2', 6), ('score', 4))\n"
        "    c.data.train.score_range = (0.0, 5.0)\n    c.train.batch_size = 8\n    c.mesh.num_devices = 1\n"
        "    c.model.max_seq_length = 32\n"
        "    return c\n")
    code, _, train_err = run_cli(capsys, "train", "--config", config, "--workdir", tmp_path / "run")
    assert code == 2, train_err
    code, _, eval_err = run_cli(capsys, "eval", "sts", "--model", tiny_dir, "--data", data, "--quiet")
    assert code == 2, eval_err
    expected = f"{data}:2: {reason}"
    assert train_err.startswith(f"siamjax train: data error: {expected} (set data.train.on_bad_row=skip"), train_err
    assert eval_err == f"siamjax eval sts: data error: {expected}\n", eval_err
