"""Prepared datasets: array_record shards plus a small JSON index, for data larger than memory.

`prepare_shards` streams the input files through the same row reader as `read_pairs` (so the
same rows are kept, skipped or rejected with the same `FILE:LINE` message) and writes row i to
shard `i % num_shards` (one array_record file each, uncompressed records in groups of 64: see
`_WRITER_OPTIONS`), the
64-bit text keys of every row to `keys.u64`, and `index.json` last: rows, sides, label kind,
column mapping, per-shard row counts and the sha256 of each input file. Nothing is held whole.

`open_shards` gives a lazy random-access source over a prepared folder with the interface of
`PairDataset` (len, `[i]` -> `Example`, `__getitems__` for a batch, `example_texts`,
`example_keys`): grain's `ArrayRecordDataSource` opens each shard on first use and reads a
batch's records with one call per shard, and `example_keys` reads 8 bytes per text with
`os.pread`, so the no-duplicates sampler never reads a text and host memory does not grow with
the dataset. Row i of the prepared folder is row i of
the (concatenated) input, so training on the folder gives the same batches as on the file.
"""
from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import logging
import os
import pathlib
from collections.abc import Callable, Mapping, Sequence

import grain
import numpy as np
from array_record.python.array_record_module import ArrayRecordWriter
from tqdm.auto import tqdm

from siamjax.data.readers import pair_rows
from siamjax.data.records import DataError, Example, PairDataset, label_kind_of, text_key

INDEX_FILE = "index.json"
KEYS_FILE = "keys.u64"
INDEX_VERSION = 1
_KEY_BYTES = 8
_FLUSH_ROWS = 4096  # rows of keys buffered before a write
# Records are short (a few hundred bytes): compressing one alone saves nothing and doubles the
# write time, so they are stored uncompressed. Groups of 64 records per chunk: with one record per
# chunk (grain's usual advice) the writer keeps ~80 bytes per record in memory until it closes
# (400 MiB for 5M rows) and the reader an index of 8 bytes per record, and reads were slower
# (measured: 60 vs 15 us per record batched, 4 ms vs 20 us alone); a random read of one record
# here reads its ~10 KB chunk.
_GROUP_SIZE = 64
_WRITER_OPTIONS = f"group_size:{_GROUP_SIZE},uncompressed"


class _GroupSizeNotice(logging.Filter):
    """Drops array_record's "Grain requires group size 1" error for our shards (see above)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return f"was created with group size {_GROUP_SIZE}." not in record.getMessage()


logging.getLogger("absl").addFilter(_GroupSizeNotice())


def shard_file(k: int, num_shards: int) -> str:
    """The file name of shard k of n."""
    return f"shard-{k:05d}-of-{num_shards:05d}.array_record"


def expand_inputs(patterns: str | Sequence[str]) -> list[pathlib.Path]:
    """Files named by paths or glob patterns, in sorted order per pattern; none found is an error."""
    patterns = [patterns] if isinstance(patterns, (str, os.PathLike)) else list(patterns)
    files: list[pathlib.Path] = []
    for pattern in map(str, patterns):
        found = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
        if not found:
            raise DataError(f"{pattern}: no file matches")
        files.extend(pathlib.Path(f) for f in found)
    return files


def file_sha256(path: pathlib.Path) -> str:
    """sha256 of a file's bytes, read in chunks."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


@dataclasses.dataclass
class _Writers:
    """The open shard writers and key file of a preparation in progress."""

    directory: pathlib.Path
    num_shards: int

    def __post_init__(self):
        self.shards = [ArrayRecordWriter(str(self.directory / shard_file(k, self.num_shards)), _WRITER_OPTIONS)
                       for k in range(self.num_shards)]
        self.keys = open(self.directory / KEYS_FILE, "wb")
        self.pending: list[tuple[int, ...]] = []
        self.rows = 0
        self.label_max = None  # the largest int label written (class count of class labels)

    def write(self, texts: tuple[str, ...], label) -> None:
        if isinstance(label, np.ndarray):  # teacher targets: float32 values, exact through JSON
            label = label.tolist()
        record = json.dumps({"t": list(texts), "l": label}, ensure_ascii=False).encode("utf-8")
        self.shards[self.rows % self.num_shards].write(record)
        self.pending.append(tuple(text_key(t) for t in texts))
        if isinstance(label, int):
            self.label_max = label if self.label_max is None else max(self.label_max, label)
        self.rows += 1
        if len(self.pending) >= _FLUSH_ROWS:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            self.keys.write(np.asarray(self.pending, np.uint64).tobytes())
            self.pending = []

    def close(self) -> None:
        self.flush()
        self.keys.close()
        for writer in self.shards:
            writer.close()


def prepare_shards(
    inputs: str | Sequence[str],
    output: str | os.PathLike,
    *,
    columns: Mapping[str, str | int] | None,
    num_shards: int = 8,
    show_progress: bool = False,
    on_file: Callable[[pathlib.Path], None] | None = None,
    **options,
) -> dict:
    """Write the rows of `inputs` (files or glob patterns, concatenated in order) as a prepared
    folder at `output`; returns the index written to `output/index.json`.

    `columns` and `options` are those of `pair_rows` / `read_pairs` (`columns` None: a named
    layout's own, e.g. "stsb"); every input file is read with the same ones. The folder
    must not exist or be empty. On any error (e.g. a `BadRowError` naming `FILE:LINE`) the
    files written so far are removed and the error propagates.
    """
    files = expand_inputs(inputs)
    if num_shards < 1:
        raise DataError(f"num_shards must be >= 1, got {num_shards}")
    out = pathlib.Path(output)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DataError(f"{out}: the output folder exists and is not empty")
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    writers = _Writers(out, num_shards)
    try:
        sources, sides, label_role, bad = _write_rows(files, writers, dict(options, columns=columns),
                                                      show_progress, on_file)
        writers.close()
        if writers.rows == 0:
            raise DataError(f"{', '.join(map(str, files))}: no data rows ({len(bad)} bad row(s) skipped)")
        index = {
            "version": INDEX_VERSION, "rows": writers.rows, "sides": list(sides),
            "label_kind": label_kind_of(label_role), "columns": None if columns is None else [[r, c] for r, c in columns.items()],
            "num_classes": None if writers.label_max is None else writers.label_max + 1,
            "num_shards": num_shards,
            "shard_rows": [len(range(k, writers.rows, num_shards)) for k in range(num_shards)],
            "keys": KEYS_FILE, "sources": sources, "bad_rows": len(bad),
            "first_bad_rows": [dataclasses.asdict(b) for b in bad[:10]],
        }
        (out / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
    except BaseException:
        writers.close()
        for path in [out / KEYS_FILE] + [out / shard_file(k, num_shards) for k in range(num_shards)]:
            path.unlink(missing_ok=True)
        if created:
            out.rmdir()
        raise
    return index


def _write_rows(files, writers: _Writers, options: dict, show_progress: bool, on_file):
    """Stream every file's rows into the writers: (source entries, sides, label role, bad rows)."""
    sources, sides, label_role, bad = [], None, None, []
    with tqdm(desc="prepare", unit="row", disable=not show_progress) as bar:
        for path in files:
            if on_file is not None:
                on_file(path)
            stream = pair_rows(path, **options)
            before = writers.rows
            for _, texts, label in stream.rows:
                writers.write(texts, label)
                bar.update(1)
            sides, label_role = stream.parser.sides, stream.parser.label_role
            bad.extend(stream.parser.bad_rows)
            sources.append({"path": str(path), "bytes": path.stat().st_size, "sha256": file_sha256(path),
                            "rows": writers.rows - before, "bad_rows": len(stream.parser.bad_rows)})
    return sources, sides, label_role, bad


def read_index(directory: str | os.PathLike) -> dict:
    """The checked `index.json` of a prepared folder (its shard and key files must be there)."""
    directory = pathlib.Path(directory)
    path = directory / INDEX_FILE
    if not path.is_file():
        raise DataError(f"{directory}: not a prepared dataset (no {INDEX_FILE}; make one with "
                        f"`siamjax data prepare`)")
    try:
        index = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: invalid JSON ({err.msg} at line {err.lineno})") from None
    if index.get("version") != INDEX_VERSION:
        raise DataError(f"{path}: index version {index.get('version')!r}, expected {INDEX_VERSION}")
    missing = [name for name in [index["keys"]] + [shard_file(k, index["num_shards"])
                                                   for k in range(index["num_shards"])]
               if not (directory / name).is_file()]
    if missing:
        raise DataError(f"{directory}: missing {', '.join(missing)}")
    expected = index["rows"] * len(index["sides"]) * _KEY_BYTES
    if (directory / index["keys"]).stat().st_size != expected:
        raise DataError(f"{directory / index['keys']}: {(directory / index['keys']).stat().st_size} bytes, "
                        f"expected {expected} ({index['rows']} rows x {len(index['sides'])} sides)")
    return index


class ShardSource:
    """A prepared folder as a lazy pair source (the interface of `PairDataset`)."""

    def __init__(self, directory: str | os.PathLike, name: str | None = None):
        self.directory = pathlib.Path(directory)
        self.index = read_index(self.directory)
        self.name = name or self.directory.name
        self.sides = tuple(self.index["sides"])
        self.label_kind = self.index["label_kind"]
        self.num_bad_rows = int(self.index["bad_rows"])
        self.num_classes = self.index["num_classes"]  # class/NLI labels: the largest + 1
        self.info: dict[str, int] = {}
        n, counts = self.index["num_shards"], self.index["shard_rows"]
        self._num_shards = n
        self._starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
        paths = [f"{self.directory / shard_file(k, n)}[0:{counts[k]}]" for k in range(n)]
        self._records = grain.sources.ArrayRecordDataSource(paths)
        self._keys_fd = os.open(self.directory / self.index["keys"], os.O_RDONLY)

    def __del__(self):
        fd = getattr(self, "_keys_fd", None)
        if fd is not None:
            os.close(fd)

    @property
    def num_sides(self) -> int:
        """S, the number of texts per example."""
        return len(self.sides)

    def __len__(self) -> int:
        return int(self.index["rows"])

    def _position(self, index: int) -> int:
        """Where row `index` lives in the concatenated shards (row i is in shard i % n)."""
        index = int(index)
        if not 0 <= index < len(self):
            raise IndexError(f"{self.name}: row {index} out of range [0, {len(self)})")
        return int(self._starts[index % self._num_shards] + index // self._num_shards)

    def _record(self, index: int) -> dict:
        return json.loads(self._records[self._position(index)])

    def __getitem__(self, index: int) -> Example:
        record = self._record(index)
        return Example(tuple(record["t"]), record["l"])

    def __getitems__(self, indices) -> list[Example]:
        """The examples of several rows, read with one call per shard (a single-record read
        costs ~1 ms of reader overhead; a batched one ~20 us per record)."""
        records = [json.loads(r) for r in self._records.__getitems__([self._position(i) for i in indices])]
        return [Example(tuple(r["t"]), r["l"]) for r in records]

    def example_texts(self, index: int) -> tuple[str, ...]:
        """The texts of one example (reads its record)."""
        return tuple(self._record(index)["t"])

    def example_keys(self, index: int) -> tuple[int, ...]:
        """`text_key` of each text of one example, from the key file (no record is read)."""
        size = self.num_sides * _KEY_BYTES
        raw = os.pread(self._keys_fd, size, int(index) * size)
        if len(raw) != size:
            raise IndexError(f"{self.name}: row {index} out of range [0, {len(self)})")
        return tuple(int(k) for k in np.frombuffer(raw, np.uint64))

    def materialize(self) -> PairDataset:
        """Every row in memory (for whole-dataset operations such as length grouping)."""
        return PairDataset.from_examples(self.name, self.sides, self.label_kind,
                                         [self[i] for i in range(len(self))])


def open_shards(directory: str | os.PathLike, name: str | None = None) -> ShardSource:
    """The prepared folder at `directory` as a lazy pair source (see `ShardSource`)."""
    return ShardSource(directory, name)
