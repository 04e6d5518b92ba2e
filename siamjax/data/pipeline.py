"""The training input pipeline: sampler -> this process's slice -> tokenise -> prefetch.

Built from grain datasets: a custom `grain.IterDataset` emits this process's share of each
global batch (the sampler runs identically on every process), `.map` reads and tokenises it
(reading only this process's examples; prepared shards are opened lazily, record by record),
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

from siamjax.data.records import LABEL_DTYPES, Example
from siamjax.data.sampler import GlobalBatchSampler
from siamjax.data.tokenization import pack_sides, token_lengths, tokenize_sides
from siamjax.encoder import rows
from siamjax.encoder.prompts import prompt_length
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

    def __next__(self) -> tuple[int, list[int], int, int, list[tuple[int, ...]]]:
        """(dataset, the global batch's indices, start and end of this process's slice, the
        batch's text keys)."""
        d, indices = self._sampler.next()
        return d, indices, self._start, self._start + self._local, self._sampler.example_keys(d, indices)

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


def global_text_ids(keys_BxS: np.ndarray) -> np.ndarray:
    """int32 `[S, B]` text ids of a global batch from its 64-bit text keys `[B, S]`.

    Why ranks instead of the hash itself: the device takes int32, and 32 bits of a hash would
    collide inside big batches (and mask a true negative); the rank of each key among the global
    batch's distinct keys is exact, and every process computes the same ranks.
    """
    _, inverse = np.unique(np.asarray(keys_BxS, np.uint64), return_inverse=True)
    return inverse.reshape(np.shape(keys_BxS)).T.astype(np.int32)


class _Materialize:
    """Read a local batch from its source and tokenise it into [S, B, L] int32 (+ labels [B]).

    Every batch also carries `text_ids [S, B]` (`global_text_ids`, for false-negative masking)
    and `dataset` (a 0-d int32: which source it came from; host-side only, not sharded).
    With `pack_length` > 0 each side is packed instead (`tokenization.pack_sides`): rows
    `[S, n * r, pack_length]` plus `text_index [S, n, B / n]`, one packed shard per batch
    device of this process (`num_shards`).
    """

    def __init__(self, sources, tokenizer, max_seq_length: int, buckets: tuple[int, ...],
                 pack_length: int = 0, num_shards: int = 1, row_multiple: int = 1, mask_prompts: bool = False):
        self._sources, self._tokenizer = sources, tokenizer
        self._max_seq_length, self._buckets = max_seq_length, buckets
        self._pack_length, self._num_shards, self._row_multiple = pack_length, num_shards, row_multiple
        # per source, each side's prompt tokens (pooling leaves them out: include_prompt=False)
        self._prompt_lengths = [tuple(prompt_length(tokenizer, p, max_seq_length)
                                      for p in getattr(src, "prompts", ("",) * len(src.sides)))
                                for src in sources] if mask_prompts else None

    def __call__(self, element: tuple[int, list[int], int, int, list]) -> dict[str, np.ndarray]:
        d, global_indices, start, end, keys = element
        source = self._sources[d]
        indices, others = global_indices[start:end], global_indices[:start] + global_indices[end:]
        getitems = getattr(source, "__getitems__", None)  # grain's batched-read protocol
        examples = getitems(indices) if getitems else [source[i] for i in indices]
        sides = [[ex.texts[s] for ex in examples] for s in range(len(examples[0].texts))]
        skips = None if self._prompt_lengths is None else self._prompt_lengths[d]
        if self._pack_length:
            batch = pack_sides(self._tokenizer, sides, max_seq_length=self._max_seq_length,
                               row_length=self._pack_length, num_shards=self._num_shards,
                               min_rows=self._rows_elsewhere(source, others, len(indices)),
                               row_multiple=self._row_multiple, prompt_lengths=skips)
        else:
            longest_elsewhere = 0
            if others and len(self._buckets) > 1:  # every process must pick the same bucket
                texts = [t for i in others for t in source.example_texts(i)]
                longest_elsewhere = max(token_lengths(self._tokenizer, texts, max_seq_length=self._max_seq_length))
            batch = tokenize_sides(self._tokenizer, sides, max_seq_length=self._max_seq_length,
                                   buckets=self._buckets, min_length=longest_elsewhere, prompt_lengths=skips)
        if source.label_kind is not None:
            batch["labels"] = np.asarray([ex.label for ex in examples], dtype=LABEL_DTYPES[source.label_kind])
        batch["text_ids"] = global_text_ids(np.asarray(keys, np.uint64))[:, start:end]
        batch["dataset"] = np.int32(d)
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


class _Prompted:
    """A source whose texts get a fixed prompt per side (sentence-transformers' `prompts`).

    The text keys stay those of the raw texts: the no-duplicates rule and the text ids are
    about the data, and every text of a side gets the same prompt.
    """

    def __init__(self, source, prompts: Mapping[str, str]):
        unknown = sorted(set(prompts) - set(source.sides))
        if unknown:
            raise ValueError(f"{source.name}: prompts for {unknown}, which are not its sides {source.sides}")
        self._source, self.prompts = source, tuple(prompts.get(side, "") for side in source.sides)
        self.name, self.label_kind, self.sides = source.name, source.label_kind, source.sides

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> Example:
        return self._prompted(self._source[index])

    def __getitems__(self, indices) -> list[Example]:
        getitems = getattr(self._source, "__getitems__", None)
        return [self._prompted(ex) for ex in (getitems(indices) if getitems else [self._source[i] for i in indices])]

    def _prompted(self, example: Example) -> Example:
        return Example(tuple(p + t for p, t in zip(self.prompts, example.texts)), example.label)

    def example_texts(self, index: int) -> tuple[str, ...]:
        return tuple(p + t for p, t in zip(self.prompts, self._source.example_texts(index)))

    def example_keys(self, index: int) -> tuple[int, ...]:
        return self._source.example_keys(index)


class TrainIterator(grain.DatasetIterator):
    """Endless iterator of host-local batches with a checkpointable, JSON-able state.

    Each batch: int32 `input_ids`, `attention_mask`, `token_type_ids` of shape [S, B_local, L]
    (L a bucket length; packed: [S, rows, pack_length] plus `text_index`
    [S, shards, B_local / shards]), `labels` [B_local, ...] (float32 scores or teacher
    targets, int32 classes) when the dataset has labels, int32 `text_ids` [S, B_local] (equal
    ids = the same text anywhere in the global batch) and `dataset`, the 0-d index of the
    batch's dataset (for the host: remove it before `to_global_array`). `get_state()` is the
    state after the last batch returned.
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
    weights: Sequence[float] | None = None,
    prompts: Sequence[Mapping[str, str] | None] | None = None,
    process_index: int | None = None,
    process_count: int | None = None,
    buckets: Sequence[int] | None = None,
    pack_length: int = 0,
    num_shards: int = 1,
    row_multiple: int = 1,
    mask_prompts: bool = False,
    prefetch: int = 2,
) -> TrainIterator:
    """Build the training iterator over one or several pair/triplet datasets.

    Why this shape: every process runs the same deterministic sampler over the global batch
    (reproducible from `seed`, reshuffled each epoch, no text twice in a global batch) and
    materialises only its own `global_batch_size // process_count` rows, which
    `to_global_array` then assembles into one sharded array. `datasets` is a source, a
    sequence or a name->source mapping of `PairDataset` / tfds / prepared-shard sources; several
    datasets are mixed per batch ("round_robin" or "proportional", the latter by size or by
    `weights`), each batch from one dataset; `prompts` gives each dataset's side -> prompt text,
    prepended before tokenising. Iterates forever unless `num_epochs` is set (then it stops
    when a dataset cannot fill another batch, logging the leftover).
    `process_index`/`process_count` default to `jax.process_index()`/`jax.process_count()`.
    With several processes each one also measures the token lengths of the other rows so
    all pick the same bucket length; `buckets=(max_seq_length,)` skips that work.
    `pack_length` > 0 packs each side into rows of that many tokens instead of padding
    (`siamjax.encoder.rows`), in `num_shards` shards per process (this process's batch
    devices), so each device's rows hold exactly its own texts; each shard's row count is a
    multiple of `row_multiple` (GradCache chunks of whole packed rows). `mask_prompts` (the
    model pools with `include_prompt=False`) adds `prompt_mask` [S, rows, L] to every batch:
    1 on the first tokens of each text that are its side's prompt (sentence-transformers'
    `prompt_length`), so pooling leaves them out in padded and packed rows alike.
    """
    sources = _with_prompts(_as_sources(datasets), prompts)
    process_index, process_count = _process(process_index, process_count)
    # packed rows are split per device, so each of them needs whole pairs too
    check_batch_divisible(global_batch_size, process_count * num_shards if pack_length else 1,
                          process_count, field="global_batch_size")
    buckets = tuple(sorted(buckets)) if buckets else rows.bucket_lengths(max_seq_length)

    def make_sampler() -> GlobalBatchSampler:
        return GlobalBatchSampler(sources, global_batch_size=global_batch_size, seed=seed,
                                  mixing=mixing, shuffle=shuffle, num_epochs=num_epochs,
                                  no_duplicates=no_duplicates, weights=weights)

    view = make_sampler()  # validates the settings now, and answers `epochs` questions
    ds = _LocalIndices(make_sampler, process_index, process_count)
    ds = ds.map(_Materialize(sources, tokenizer, max_seq_length, buckets, pack_length, num_shards, row_multiple,
                             mask_prompts))
    if prefetch > 0:
        ds = grain.experimental.ThreadPrefetchIterDataset(ds, prefetch_buffer_size=prefetch)
    iterator = TrainIterator(iter(ds), view)
    _LIVE_ITERATORS.add(iterator)
    return iterator


def _with_prompts(sources: list, prompts) -> list:
    """Each source with its side -> prompt mapping applied (None or {} = as it is)."""
    if prompts is None:
        return sources
    if len(prompts) != len(sources):
        raise ValueError(f"{len(prompts)} prompt mappings for {len(sources)} datasets")
    return [_Prompted(src, p) if p else src for src, p in zip(sources, prompts)]


def _process(process_index: int | None, process_count: int | None) -> tuple[int, int]:
    """(index, count) of this process, from JAX unless given; checked."""
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} not in [0, {process_count})")
    return process_index, process_count


def _as_sources(datasets) -> list:
    if isinstance(datasets, Mapping):
        datasets = list(datasets.values())
    elif hasattr(datasets, "example_texts"):
        datasets = [datasets]
    sources = list(datasets)
    for src in sources:
        for attr in ("example_texts", "example_keys", "label_kind", "name", "__getitem__", "__len__"):
            if not hasattr(src, attr):
                raise TypeError(f"{src!r} is not a pair dataset (missing {attr}); use "
                                f"read_pairs(...), open_shards(...) or a tfds pair source")
    return sources
