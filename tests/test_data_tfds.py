"""tfds builders (STS-b, SICK, NLI): array_record output, manual_dir or download, bad rows."""
import json
import pathlib
import sys

import numpy as np
import pytest

from siamjax.data import BadRowError, make_train_iterator, nli_to_triplets, read_stsb_split
from siamjax.data.tfds_builders import NliPairs, Sick, StsBenchmark, load_tfds_pairs


@pytest.fixture(scope="module")
def stsb_source_dir(tmp_path_factory, stsb_dir):
    """STS-b prepared once for this module, from the shared files as manual_dir."""
    data_dir = tmp_path_factory.mktemp("tfds")
    load_tfds_pairs("stsb", "train", data_dir=data_dir, manual_dir=stsb_dir)
    return data_dir


def test_stsb_builder_writes_array_record_without_tensorflow(stsb_source_dir, stsb_dir):
    files = sorted(p.name for p in (stsb_source_dir / "sts_benchmark" / "1.0.0").iterdir())
    assert "sts_benchmark-train.array_record-00000-of-00001" in files
    assert "tensorflow" not in sys.modules
    sizes = {split: len(load_tfds_pairs("stsb", split, data_dir=stsb_source_dir,
                                        download=False))
             for split in ("train", "validation", "test")}
    assert sizes == {"train": 5749, "validation": 1500, "test": 1379}


def test_stsb_builder_matches_the_csv_reader(stsb_source_dir, stsb_dir):
    source = load_tfds_pairs("stsb", "validation", data_dir=stsb_source_dir, download=False,
                             normalize_scores=True)
    direct = read_stsb_split(stsb_dir / "sts-dev.csv")
    from_tfds = sorted((ex.texts, round(ex.label, 5)) for ex in
                       (source[i] for i in range(len(source))))
    from_csv = sorted((direct.example_texts(i), round(float(direct.labels[i]), 5))
                      for i in range(len(direct)))
    assert from_tfds == from_csv
    assert source.label_kind == "score" and source.num_sides == 2 and source.num_bad_rows == 0
    raw = load_tfds_pairs("stsb", "validation", data_dir=stsb_source_dir, download=False)
    assert max(raw[i].label for i in range(len(raw))) == 5.0


def test_tfds_source_feeds_the_train_iterator(stsb_source_dir, minilm_dir):
    from transformers import AutoTokenizer

    source = load_tfds_pairs("stsb", "train", data_dir=stsb_source_dir, download=False,
                             normalize_scores=True)
    it = make_train_iterator(source, AutoTokenizer.from_pretrained(minilm_dir),
                             global_batch_size=8, max_seq_length=64, seed=0, prefetch=0)
    batch = next(it)
    assert batch["input_ids"].shape[:2] == (2, 8) and batch["labels"].dtype == np.float32
    it.close()


class _OfflineDownloadManager:
    """Stands in for tfds' DownloadManager: no manual_dir, downloads served from a folder."""

    def __init__(self, extracted: pathlib.Path):
        self.extracted, self.urls = extracted, []

    @property
    def manual_dir(self):
        raise AssertionError("Manual directory not enabled.")

    def download_and_extract(self, url):
        self.urls.append(url)
        return self.extracted


def test_stsb_downloads_the_official_archive_without_manual_files(tmp_path):
    (tmp_path / "x" / "stsbenchmark").mkdir(parents=True)
    for name in ("sts-train.csv", "sts-dev.csv", "sts-test.csv"):
        (tmp_path / "x" / "stsbenchmark" / name).write_text(
            "g\tf\t2012\t1\t2.5\tA cat.\tA dog.\n")
    dl = _OfflineDownloadManager(tmp_path / "x")
    generators = StsBenchmark(data_dir=tmp_path / "d")._split_generators(dl)
    assert dl.urls == ["http://ixa2.si.ehu.eus/stswiki/images/4/48/Stsbenchmark.tar.gz"]
    assert list(generators["train"]) == [
        (0, {"sentence1": "A cat.", "sentence2": "A dog.", "score": np.float32(2.5)})]
    assert Sick.URL.startswith("https://zenodo.org/")
    assert NliPairs(data_dir=tmp_path / "d", config="multinli").URL.endswith("multinli_1.0.zip")


def test_stsb_builder_bad_row_errors_or_counts(tmp_path):
    manual = tmp_path / "manual"
    manual.mkdir()
    for name in ("sts-train.csv", "sts-dev.csv", "sts-test.csv"):
        (manual / name).write_text("g\tf\t2012\t1\t2.5\tA cat.\tA dog.\n"
                                   "g\tf\t2012\t2\tn/a\tA cat.\tA mouse.\n")
    with pytest.raises(BadRowError, match=r"sts-(train|dev|test).csv:2: score 'n/a'"):
        load_tfds_pairs("stsb", "train", data_dir=tmp_path / "a", manual_dir=manual)
    source = load_tfds_pairs("stsb", "train", data_dir=tmp_path / "b", manual_dir=manual,
                             on_bad_row="skip")
    assert len(source) == 1 and source.num_bad_rows == 1
    assert source.materialize().info == {"bad_rows_skipped_at_build": 1}
    with pytest.raises(ValueError, match="prepared with on_bad_row='skip' and 1 bad row"):
        load_tfds_pairs("stsb", "train", data_dir=tmp_path / "b", download=False)


def test_missing_inputs_are_explained(tmp_path, stsb_dir):
    with pytest.raises(FileNotFoundError, match="not prepared.*manual_dir"):
        load_tfds_pairs("stsb", "train", data_dir=tmp_path, download=False)
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "readme.txt").write_text("wrong folder")
    with pytest.raises(FileNotFoundError, match=r"no sts-\*.csv here"):
        load_tfds_pairs("stsb", "train", data_dir=tmp_path, manual_dir=tmp_path / "m")
    with pytest.raises(ValueError, match="has splits"):
        load_tfds_pairs("stsb", "dev", data_dir=tmp_path / "x", manual_dir=stsb_dir)


SICK_HEADER = ("pair_ID\tsentence_A\tsentence_B\tentailment_label\trelatedness_score\t"
               "SemEval_set\n")


def test_sick_builder_splits_scores_and_labels(tmp_path):
    manual = tmp_path / "manual"
    manual.mkdir()
    (manual / "SICK.txt").write_text(
        SICK_HEADER + "1\tA man runs.\tA person runs.\tENTAILMENT\t4.6\tTRAIN\n"
        "2\tA man runs.\tA man sleeps.\tCONTRADICTION\t2.0\tTRAIN\n"
        "3\tA dog barks.\tA cat meows.\tNEUTRAL\t1.0\tTRIAL\n"
        "4\tKids play.\tChildren play.\tENTAILMENT\t5.0\tTEST\n")
    train = load_tfds_pairs("sick", "train", data_dir=tmp_path / "d", manual_dir=manual,
                            normalize_scores=True)
    got = sorted((train[i].texts, train[i].label) for i in range(len(train)))
    assert got == [(("A man runs.", "A man sleeps."), 0.25),
                   (("A man runs.", "A person runs."), pytest.approx(0.9, abs=1e-6))]
    nli = load_tfds_pairs("sick", "validation", data_dir=tmp_path / "d", download=False,
                          columns={"premise": "sentence_A", "hypothesis": "sentence_B",
                                   "nli_label": "entailment_label"})
    assert nli.label_kind == "nli" and nli[0].label == 1


def test_sick_builder_rejects_unknown_split_and_label(tmp_path):
    manual = tmp_path / "manual"
    manual.mkdir()
    (manual / "SICK.txt").write_text(
        SICK_HEADER + "1\tA man runs.\tA person runs.\tENTAILMENT\t4.6\tTRAIN\n"
        "2\tA man runs.\tA man sleeps.\tDISAGREE\t2.0\tTRAIN\n")
    with pytest.raises(BadRowError, match=r"SICK.txt:3: unknown NLI label 'DISAGREE'"):
        load_tfds_pairs("sick", "train", data_dir=tmp_path / "d", manual_dir=manual)


def _snli_dir(tmp_path, extra_train_rows=()):
    manual = tmp_path / "manual"
    manual.mkdir(exist_ok=True)
    rows = [("A man plays.", "A person plays.", "entailment"),
            ("A man plays.", "A man sleeps.", "contradiction"),
            ("A man plays.", "A man plays well.", "neutral"),
            ("A man plays.", "Maybe a man.", "-"),
            ("Dogs run.", "Animals move.", "entailment"),
            ("Dogs run.", "Dogs sit.", "contradiction"), *extra_train_rows]
    for split in ("train", "dev", "test"):
        with open(manual / f"snli_1.0_{split}.jsonl", "w") as f:
            for s1, s2, label in rows:
                f.write(json.dumps({"sentence1": s1, "sentence2": s2, "gold_label": label,
                                    "annotator_labels": [label]}) + "\n")
    return manual


def test_nli_builder_to_triplets(tmp_path):
    source = load_tfds_pairs("nli", "train", config="snli", data_dir=tmp_path / "d",
                             manual_dir=_snli_dir(tmp_path))
    assert len(source) == 5 and source.label_kind == "nli"
    meta = json.loads((tmp_path / "d" / "nli_pairs" / "snli" / "1.0.0" / "metadata.json")
                      .read_text())
    assert meta["no_gold_label"] == {"train": 1, "validation": 1, "test": 1}
    assert meta["bad_rows"]["train"] == 0
    triplets = nli_to_triplets(source.materialize())
    assert sorted(zip(*triplets.texts)) == [
        ("A man plays.", "A person plays.", "A man sleeps."),
        ("Dogs run.", "Animals move.", "Dogs sit.")]


def test_nli_builder_unknown_label_errors_or_is_counted(tmp_path):
    manual = _snli_dir(tmp_path, [("A cat.", "A pet.", "entails")])
    with pytest.raises(BadRowError, match=r"snli_1.0_\w+.jsonl:7: unknown NLI label 'entails'"):
        load_tfds_pairs("nli", "train", config="snli", data_dir=tmp_path / "a",
                        manual_dir=manual)
    source = load_tfds_pairs("nli", "train", config="snli", data_dir=tmp_path / "b",
                             manual_dir=manual, on_bad_row="skip")
    assert len(source) == 5 and source.num_bad_rows == 1
