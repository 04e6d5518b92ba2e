"""tensorflow-datasets builders for STS benchmark, SICK and NLI, written as array_record.

Why tfds: a prepared, versioned, random-access copy of each dataset (array_record files that
grain reads directly), built once per machine; no TensorFlow is needed to build or read them.
Each builder reads local files from `manual_dir` (offline) when they are there, and
otherwise downloads the official archive from its real URL. Rows pass through the same
validation as local files (`RowParser`): bad rows fail the build naming file and line, or
with `on_bad_row="skip"` are skipped and their count is stored in the dataset's metadata.
"""
from __future__ import annotations

import inspect
import logging
import os
import pathlib

import numpy as np
import tensorflow_datasets as tfds
from etils import epath
from tensorflow_datasets.core import utils as tfds_utils

from siamjax.data.files import table_rows
from siamjax.data.readers import read_pairs
from siamjax.data.records import (NLI_LABELS, BadRowError, RowParser, check_on_bad_row,
                                  parse_nli_label)
from siamjax.data.tfds_source import TfdsPairSource

log = logging.getLogger(__name__)


class _PairBuilder(tfds.core.GeneratorBasedBuilder):
    """Shared plumbing: array_record by default, `on_bad_row`, manual-dir-or-download."""

    VERSION = tfds.core.Version("1.0.0")
    URL = ""
    DEFAULT_COLUMNS: dict[str, str] = {}
    SCORE_RANGE: tuple[float, float] | None = None

    @tfds_utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        """This file. tfds 4.9.10 otherwise imports `importlib_resources`, which it only
        declares as a dependency for Python < 3.9, and fails on 3.11 without it."""
        return epath.Path(inspect.getfile(cls))

    def __init__(self, *, on_bad_row: str = "error", **kwargs):
        self.on_bad_row = check_on_bad_row(on_bad_row)
        kwargs.setdefault("file_format", "array_record")
        super().__init__(**kwargs)

    def _metadata(self) -> tfds.core.MetadataDict:
        return tfds.core.MetadataDict(on_bad_row=self.on_bad_row, bad_rows={})

    def _source_dir(self, dl_manager, expected: str) -> pathlib.Path:
        """`manual_dir` (or its `expected` subfolder) if it holds the files, else download."""
        try:
            manual = pathlib.Path(dl_manager.manual_dir)
        except (AssertionError, ValueError):
            manual = None
        if manual is not None:
            for folder in (manual, manual / expected):
                if any(folder.glob(self.MANUAL_PROBE)):
                    return folder
            raise FileNotFoundError(f"{manual}: no {self.MANUAL_PROBE} here or in "
                                    f"{expected}/. {self.MANUAL_DOWNLOAD_INSTRUCTIONS}")
        log.info("%s: downloading %s", self.name, self.URL)
        return pathlib.Path(dl_manager.download_and_extract(self.URL)) / expected

    def _record_bad_rows(self, split: str, bad_rows: list) -> None:
        self.info.metadata["bad_rows"][split] = len(bad_rows)


class StsBenchmark(_PairBuilder):
    """STS benchmark: (sentence1, sentence2, score in [0, 5]); 5,749 / 1,500 / 1,379 pairs."""

    URL = "http://ixa2.si.ehu.eus/stswiki/images/4/48/Stsbenchmark.tar.gz"
    MANUAL_PROBE = "sts-*.csv"
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Put sts-train.csv, sts-dev.csv and sts-test.csv (from Stsbenchmark.tar.gz, "
        "tab-separated, no header) in manual_dir, or leave it empty to download.")
    DEFAULT_COLUMNS = {"sentence1": "sentence1", "sentence2": "sentence2", "score": "score"}
    SCORE_RANGE = (0.0, 5.0)
    _FILES = {"train": "sts-train.csv", "validation": "sts-dev.csv", "test": "sts-test.csv"}

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description="STS benchmark (SemEval 2012-2017 English STS), scores 0-5.",
            features=tfds.features.FeaturesDict({
                "sentence1": tfds.features.Text(), "sentence2": tfds.features.Text(),
                "score": np.float32}),
            homepage="https://ixa2.si.ehu.eus/stswiki/index.php/STSbenchmark",
            metadata=self._metadata())

    def _split_generators(self, dl_manager):
        root = self._source_dir(dl_manager, "stsbenchmark")
        return {split: self._generate_examples(split, root / name)
                for split, name in self._FILES.items()}

    def _generate_examples(self, split: str, path: pathlib.Path):
        data = read_pairs(path, format="stsb", on_bad_row=self.on_bad_row)
        self._record_bad_rows(split, data.bad_rows)
        for i in range(len(data)):
            s1, s2 = data.example_texts(i)
            yield i, {"sentence1": s1, "sentence2": s2, "score": data.labels[i]}


class Sick(_PairBuilder):
    """SICK: (sentence_A, sentence_B) with a relatedness score in [1, 5] and an NLI label."""

    URL = "https://zenodo.org/record/2787612/files/SICK.zip?download=1"
    MANUAL_PROBE = "SICK.txt"
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Put SICK.txt (tab-separated with header; from SICK.zip) in manual_dir, or leave it "
        "empty to download.")
    DEFAULT_COLUMNS = {"sentence_A": "sentence_A", "sentence_B": "sentence_B",
                       "score": "relatedness_score"}
    SCORE_RANGE = (1.0, 5.0)
    _SETS = {"TRAIN": "train", "TRIAL": "validation", "TEST": "test"}

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description="SICK (Sentences Involving Compositional Knowledge), SemEval 2014.",
            features=tfds.features.FeaturesDict({
                "sentence_A": tfds.features.Text(), "sentence_B": tfds.features.Text(),
                "relatedness_score": np.float32,
                "entailment_label": tfds.features.ClassLabel(names=NLI_LABELS)}),
            homepage="https://marcobaroni.org/composes/sick.html",
            metadata=self._metadata())

    def _split_generators(self, dl_manager):
        path = self._source_dir(dl_manager, "") / "SICK.txt"
        return {split: self._generate_examples(split, path) for split in self._SETS.values()}

    def _generate_examples(self, split: str, path: pathlib.Path):
        parser = RowParser(str(path), ("sentence_A", "sentence_B"), "score", self.SCORE_RANGE,
                           on_bad_row=self.on_bad_row)
        _, rows = table_rows(path, "tsv", reject=parser.reject)
        for line, row in rows:
            semeval = (row.get("SemEval_set") or "").strip().upper()
            if semeval not in self._SETS:
                parser.reject(line, f"unknown SemEval_set {row.get('SemEval_set')!r} "
                                    f"(expected one of {tuple(self._SETS)})")
                continue
            if self._SETS[semeval] != split:
                continue
            parsed = parser.parse(line, [row.get("sentence_A"), row.get("sentence_B")],
                                  row.get("relatedness_score"))
            if parsed is None:
                continue
            try:
                label = parse_nli_label(row.get("entailment_label"))
            except ValueError as err:
                parser.reject(line, str(err))
                continue
            (a, b), score = parsed
            yield row.get("pair_ID") or line, {"sentence_A": a, "sentence_B": b,
                                                "relatedness_score": score,
                                                "entailment_label": label}
        self._record_bad_rows(split, parser.bad_rows)


class NliPairsConfig(tfds.core.BuilderConfig):
    """Which NLI corpus: its archive URL, folder and split files (jsonl, SNLI format)."""

    def __init__(self, *, url: str, folder: str, files: dict[str, str], **kwargs):
        super().__init__(version=tfds.core.Version("1.0.0"), **kwargs)
        self.url, self.folder, self.files = url, folder, files


class NliPairs(_PairBuilder):
    """NLI (premise, hypothesis, label) from SNLI / MultiNLI jsonl (sentence1, sentence2,
    gold_label). Rows whose gold_label is "-" (annotators did not agree; SNLI marks them so)
    are left out and counted in metadata["no_gold_label"]; any other unknown label is a bad
    row."""

    MANUAL_PROBE = "*.jsonl"
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Put the corpus jsonl files (e.g. snli_1.0_train.jsonl, snli_1.0_dev.jsonl, "
        "snli_1.0_test.jsonl) in manual_dir, or leave it empty to download.")
    DEFAULT_COLUMNS = {"premise": "premise", "hypothesis": "hypothesis", "nli_label": "label"}
    BUILDER_CONFIGS = [
        NliPairsConfig(name="snli", url="https://nlp.stanford.edu/projects/snli/snli_1.0.zip",
                       folder="snli_1.0",
                       files={"train": "snli_1.0_train.jsonl",
                              "validation": "snli_1.0_dev.jsonl",
                              "test": "snli_1.0_test.jsonl"}),
        NliPairsConfig(name="multinli",
                       url="https://cims.nyu.edu/~sbowman/multinli/multinli_1.0.zip",
                       folder="multinli_1.0",
                       files={"train": "multinli_1.0_train.jsonl",
                              "validation_matched": "multinli_1.0_dev_matched.jsonl",
                              "validation_mismatched": "multinli_1.0_dev_mismatched.jsonl"}),
    ]

    @property
    def URL(self) -> str:  # noqa: N802 - the per-config download URL
        return self.builder_config.url

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description="Natural language inference pairs (premise, hypothesis, label).",
            features=tfds.features.FeaturesDict({
                "premise": tfds.features.Text(), "hypothesis": tfds.features.Text(),
                "label": tfds.features.ClassLabel(names=NLI_LABELS)}),
            homepage="https://nlp.stanford.edu/projects/snli/",
            metadata=tfds.core.MetadataDict(on_bad_row=self.on_bad_row, bad_rows={},
                                            no_gold_label={}))

    def _split_generators(self, dl_manager):
        root = self._source_dir(dl_manager, self.builder_config.folder)
        return {split: self._generate_examples(split, root / name)
                for split, name in self.builder_config.files.items()}

    def _generate_examples(self, split: str, path: pathlib.Path):
        # "-" rows become bad rows of a "skip" pass, then are counted apart from real ones.
        data = read_pairs(path, format="jsonl", on_bad_row="skip", columns={
            "premise": "sentence1", "hypothesis": "sentence2", "nli_label": "gold_label"})
        no_gold = _no_gold_label_lines(path)
        real_bad = [b for b in data.bad_rows if b.line not in no_gold]
        if real_bad and self.on_bad_row == "error":
            raise BadRowError(real_bad[0].path, real_bad[0].line, real_bad[0].reason)
        self._record_bad_rows(split, real_bad)
        self.info.metadata["no_gold_label"][split] = len(no_gold)
        if no_gold:
            log.info("%s: left out %d rows with gold_label '-'", path, len(no_gold))
        premises, hypotheses = data.texts
        for i in range(len(data)):
            yield i, {"premise": premises[i], "hypothesis": hypotheses[i],
                      "label": int(data.labels[i])}


def _no_gold_label_lines(path: pathlib.Path) -> set[int]:
    """Line numbers whose gold_label is exactly "-" (SNLI's no-consensus marker)."""
    _, rows = table_rows(path, "jsonl", reject=lambda line, reason: None)  # read_pairs reports those
    return {n for n, record in rows if record.get("gold_label") == "-"}


BUILDERS = {"stsb": StsBenchmark, "sick": Sick, "nli": NliPairs}


def load_tfds_pairs(builder: str | type[_PairBuilder], split: str, *,
                    data_dir: str | os.PathLike, manual_dir: str | os.PathLike | None = None,
                    config: str | None = None, columns: dict[str, str] | None = None,
                    normalize_scores: bool = False, on_bad_row: str = "error",
                    download: bool = True) -> TfdsPairSource:
    """Prepare (once) and open one split of a builder as a grain-readable pair source.

    Why: the training config names a builder ("stsb", "sick", "nli") and a split; this
    builds the array_record files under `data_dir` if missing (from `manual_dir` when given,
    else from the builder's URL unless `download=False`) and returns a random-access
    `TfdsPairSource` for `make_train_iterator`. `columns` maps roles to features (defaults
    per builder); `normalize_scores` maps the builder's score range to [0, 1]. A copy
    prepared with on_bad_row="skip" that skipped rows is refused under "error".
    """
    cls = BUILDERS[builder] if isinstance(builder, str) else builder
    kwargs = {"config": config} if config else {}
    instance = cls(data_dir=os.fspath(data_dir), on_bad_row=on_bad_row, **kwargs)
    if not instance.is_prepared():
        if manual_dir is None and not download:
            raise FileNotFoundError(f"{instance.name} is not prepared in {data_dir}; pass "
                                    f"manual_dir= with the source files or allow download")
        dl_config = tfds.download.DownloadConfig(
            manual_dir=os.fspath(manual_dir) if manual_dir is not None else None)
        instance.download_and_prepare(download_config=dl_config)
    sources = instance.as_data_source()
    if split not in sources:
        raise ValueError(f"{instance.name} has splits {sorted(sources)}, not {split!r}")
    skipped = (instance.info.metadata or {}).get("bad_rows", {}).get(split, 0)
    if skipped and on_bad_row == "error":
        raise ValueError(f"{instance.name} in {instance.data_dir} was prepared with "
                         f"on_bad_row='skip' and {skipped} bad row(s) of {split!r} were "
                         f"skipped; pass on_bad_row='skip', or delete that folder to rebuild "
                         f"and see the errors")
    return TfdsPairSource(sources[split], columns or dict(cls.DEFAULT_COLUMNS),
                          name=f"{instance.name}:{split}", score_range=cls.SCORE_RANGE,
                          normalize_scores=normalize_scores, bad_rows=skipped)
