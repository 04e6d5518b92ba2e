"""The training input pipeline: sampler -> this process's slice -> tokenise -> prefetch.

Built from grain datasets: a custom `grain.IterDataset` emits this process's share of each
global batch (the sampler runs identically on every process), `.map` reads and tokenises it,
and `ThreadPrefetchIterDataset` overlaps that with the train step. grain keeps the state of
the batch the caller actually consumed, so `get_state()` / `set_state()` (and orbax through
`grain.checkpoint.CheckpointSave/CheckpointRestore`) resume on exactly the next batch.
"""
from __future__ import annotations

import atexit
import weakref
from collections.abc import Mapping, Sequence
from typing import Any

import grain
import jax
import numpy as np

from siamjax.data.records import LABEL_DTYPES
from siamjax.data.sampler import GlobalBatchSampler
from siamjax.data.tokenization import pack_sides, token_lengths, tokenize_sides
from siamjax.encoder import rows
from siamjax.parallel.batch import check_batch_divisible


# Open iterators, closed before interpreter teardown (see TrainIterator.close).
_LIVE_ITERATORS: weakref.WeakSet = weakref.WeakSet()
atexit.register(lambda: [it.close() for it in list(_LIVE_ITERATORS)])


class _LocalIndicesIterator(grain.DatasetIterator):
    """(dataset index, this process's slice of the global batch indices), checkpointable."""

    def __init__(self, sampler: GlobalBatchSampler, process_index: int, process_count: int):
        super().__init__()
        self._sampler = sampler
        self._local = sampler.batch_size // process_count
        self._start = process_index * self._local

    def __next__(self) -> tuple[int, list[int], list[int]]:
        """(dataset, this process's indices, the other processes' indices)."""
        d, indices = self._sampler.next()
        end = self._start + self._local
        return d, indices[self._start:end], indices[: self._start] + indices[end:]

    def get_state(self) -> dict[str, Any]:
        return self._sampler.get_state()

    def set_state(self, state: dict[str, Any]) -> None:
        self._sampler.set_state(state)


class _LocalIndices(grain.IterDataset):
    """grain dataset over the sampler; a fresh sampler (step 0) per iterator."""

    def __init__(self, make_sampler, process_index: int, process_count: int):
        super().__init__()
        self._make_sampler = make_sampler
        self._process = (process_index, process_count)

    def __iter__(self) -> _LocalIndicesIterator:
        return _LocalIndicesIterator(self._make_sampler(), *self._process)


class _Materialize:
    """Read a local batch from its source and tokenise it into [S, B, L] int32 (+ labels [B]).

    With `pack_length` > 0 each side is packed instead (`tokenization.pack_sides`): rows
    `[S, n * r, pack_length]` plus `text_index [S, n, B / n]`, one packed shard per batch
    device of this process (`num_shards`).
    """

    def __init__(self, sources, tokenizer, max_seq_length: int, buckets: tuple[int, ...],
                 pack_length: int = 0, num_shards: int = 1, row_multiple: int = 1):
        self._sources, self._tokenizer = sources, tokenizer
        self._max_seq_length, self._buckets = max_seq_length, buckets
        self._pack_length, self._num_shards, self._row_multiple = pack_length, num_shards, row_multiple

    def __call__(self, element: tuple[int, list[int], list[int]]) -> dict[str, np.ndarray]:
        d, indices, others = element
        source = self._sources[d]
        examples = [source[i] for i in indices]
        sides = [[ex.texts[s] for ex in examples] for s in range(len(examples[0].texts))]
        if self._pack_length:
            batch = pack_sides(self._tokenizer, sides, max_seq_length=self._max_seq_length,
                               row_length=self._pack_length, num_shards=self._num_shards,
                               min_rows=self._rows_elsewhere(source, others, len(indices)),
                               row_multiple=self._row_multiple)
        else:
            longest_elsewhere = 0
            if others and len(self._buckets) > 1:  # every process must pick the same bucket
                texts = [t for i in others for t in source.example_texts(i)]
                longest_elsewhere = max(token_lengths(self._tokenizer, texts, max_seq_length=self._max_seq_length))
            batch = tokenize_sides(self._tokenizer, sides, max_seq_length=self._max_seq_length,
                                   buckets=self._buckets, min_length=longest_elsewhere)
        if source.label_kind is not None:
            batch["labels"] = np.asarray([ex.label for ex in examples], dtype=LABEL_DTYPES[source.label_kind])
        return batch

    def _rows_elsewhere(self, source, others: list[int], local: int) -> int:
        """Packed rows the fullest shard of the other processes needs: every process must agree."""
        if not others:
            return 1
        texts = [source.example_texts(i) for i in others]
        shards = len(others) * self._num_shards // local
        return max(rows.rows_needed(rows.shard_layouts(
            token_lengths(self._tokenizer, [t[s] for t in texts], max_seq_length=self._max_seq_length),
            self._pack_length, shards)) for s in range(len(texts[0])))


class TrainIterator(grain.DatasetIterator):
    """Endless iterator of host-local batches with a checkpointable, JSON-able state.

    Each batch: int32 `input_ids`, `attention_mask`, `token_type_ids` of shape [S, B_local, L]
    (L a bucket length; packed: [S, rows, pack_length] plus `text_index`
    [S, shards, B_local / shards]) and `labels` [B_local, ...] (float32 scores or teacher
    targets, int32 classes) when the dataset has labels. `get_state()` is the state after the last batch returned.
    """

    def __init__(self, parent: grain.DatasetIterator, sampler_view: GlobalBatchSampler):
        super().__init__(parent)
        self._view = sampler_view

    def __next__(self) -> dict[str, np.ndarray]:
        self._assert_not_closed()
        return next(self._parent)

    def close(self) -> None:
        """Stop the prefetch thread and release the pipeline (idempotent)."""
        super().close()
        # Drop the parents now, while modules are alive: grain's prefetch iterator would
        # otherwise close again from __del__ during interpreter teardown and print errors.
        self._parents = ()

    def get_state(self) -> dict[str, Any]:
        return self._parent.get_state()

    def set_state(self, state: dict[str, Any]) -> None:
        self._view.set_state(state)  # validates the fingerprint with a clear message first
        self._parent.set_state(state)

    @property
    def step(self) -> int:
        """Global batches returned so far (restored with the state)."""
        return int(self.get_state()["step"])

    @property
    def epochs(self) -> dict[str, float]:
        """Epochs consumed per dataset (fractional) as of the last returned batch."""
        self._view.set_state(self.get_state())
        return self._view.epochs


def make_train_iterator(
    datasets,
    tokenizer,
    *,
    global_batch_size: int,
    max_seq_length: int,
    seed: int = 0,
    mixing: str = "round_robin",
    no_duplicates: bool = True,
    shuffle: bool = True,
    num_epochs: int | None = None,
    process_index: int | None = None,
    process_count: int | None = None,
    buckets: Sequence[int] | None = None,
    pack_length: int = 0,
    num_shards: int = 1,
    row_multiple: int = 1,
    prefetch: int = 2,
) -> TrainIterator:
    """Build the training iterator over one or several pair/triplet datasets.

    Why this shape: every process runs the same deterministic sampler over the global batch
    (reproducible from `seed`, reshuffled each epoch, no text twice in a global batch) and
    materialises only its own `global_batch_size // process_count` rows, which
    `to_global_array` then assembles into one sharded array. `datasets` is a source, a
    sequence or a name->source mapping of `PairDataset` / tfds sources; several datasets are
    mixed per batch ("round_robin" or "proportional"). Iterates forever unless `num_epochs`
    is set (then it stops when a dataset cannot fill another batch, logging the leftover).
    `process_index`/`process_count` default to `jax.process_index()`/`jax.process_count()`.
    With several processes each one also measures the token lengths of the other rows so
    all pick the same bucket length; `buckets=(max_seq_length,)` skips that work.
    `pack_length` > 0 packs each side into rows of that many tokens instead of padding
    (`siamjax.encoder.rows`), in `num_shards` shards per process (this process's batch
    devices), so each device's rows hold exactly its own texts; each shard's row count is a
    multiple of `row_multiple` (GradCache chunks of whole packed rows).
    """
    sources = _as_sources(datasets)
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} not in [0, {process_count})")
    # packed rows are split per device, so each of them needs whole pairs too
    check_batch_divisible(global_batch_size, process_count * num_shards if pack_length else 1,
                          process_count, field="global_batch_size")
    buckets = tuple(sorted(buckets)) if buckets else rows.bucket_lengths(max_seq_length)

    def make_sampler() -> GlobalBatchSampler:
        return GlobalBatchSampler(sources, global_batch_size=global_batch_size, seed=seed,
                                  mixing=mixing, shuffle=shuffle, num_epochs=num_epochs,
                                  no_duplicates=no_duplicates)

    view = make_sampler()  # validates the settings now, and answers `epochs` questions
    ds = _LocalIndices(make_sampler, process_index, process_count)
    ds = ds.map(_Materialize(sources, tokenizer, max_seq_length, buckets, pack_length, num_shards, row_multiple))
    if prefetch > 0:
        ds = grain.experimental.ThreadPrefetchIterDataset(ds, prefetch_buffer_size=prefetch)
    iterator = TrainIterator(iter(ds), view)
    _LIVE_ITERATORS.add(iterator)
    return iterator


def _as_sources(datasets) -> list:
    if isinstance(datasets, Mapping):
        datasets = list(datasets.values())
    elif hasattr(datasets, "example_texts"):
        datasets = [datasets]
    sources = list(datasets)
    for src in sources:
        for attr in ("example_texts", "label_kind", "name", "__getitem__", "__len__"):
            if not hasattr(src, attr):
                raise TypeError(f"{src!r} is not a pair dataset (missing {attr}); use "
                                f"read_pairs(...) or a tfds pair source")
    return sources
