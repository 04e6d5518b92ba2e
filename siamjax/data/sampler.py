"""Global batch sampling: reproducible shuffling, no duplicate texts, dataset mixing.

Why a deterministic sampler instead of a grain shuffle buffer: every process must agree on
the whole global batch (so no text appears twice across hosts — in-batch negatives would
become false negatives), and the state must be a few integers a checkpoint can hold. The
order of each dataset is grain's stateless index shuffle, a pure function of
(seed, epoch, position); the no-duplicates rule defers a conflicting example to a later batch
instead of dropping it, so batches are always full. The state is the batch counter, one
cursor per dataset and the (usually tiny) list of deferred examples. A text repeated in more
examples than there are batches per epoch cannot be placed every time; the deferred list is
therefore capped at one global batch, and overflow is counted and logged, not dropped silently.
"""
from __future__ import annotations

import functools
import hashlib
import logging
from collections.abc import Sequence
from typing import Any, Protocol

import grain
import numpy as np

from siamjax.data.records import DataError

log = logging.getLogger(__name__)
MIXING_CHOICES = ("round_robin", "proportional")
STATE_VERSION = 1


class TextSource(Protocol):
    """What the sampler needs from a dataset: its length and the texts of one example."""

    name: str

    def __len__(self) -> int: ...

    def example_texts(self, index: int) -> tuple[str, ...]: ...


def text_key(text: str) -> int:
    """A stable 64-bit key of a text (Python's hash() differs between processes)."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little")


def _derived_seed(*parts: int) -> int:
    """A 32-bit seed from several integers, so streams of different datasets differ."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


class DuplicateTextsError(DataError):
    """A dataset whose texts repeat so much that no batch without a repeated text exists; the fix
    is a smaller batch or allowing repeats (callers name their own setting for each)."""


class _Stream:
    """One dataset's endless (or `num_epochs`-long) stream of no-duplicate batches."""

    def __init__(self, source: TextSource, batch_size: int, seed: int, *, shuffle: bool,
                 num_epochs: int | None, no_duplicates: bool):
        self.source, self.size, self.batch_size = source, len(source), batch_size
        if self.size == 0:
            raise ValueError(f"dataset {source.name!r} is empty")
        order = grain.MapDataset.range(self.size)
        if shuffle:  # grain reshuffles each epoch with seed + epoch.
            order = order.shuffle(seed=seed)
        self.order = order.repeat(None)
        self.limit = None if num_epochs is None else num_epochs * self.size
        self.no_duplicates = no_duplicates
        # dropped: examples skipped because the deferred list overflowed (see module doc).
        self.cursor, self.deferred, self.dropped = 0, [], 0
        self.keys = functools.lru_cache(maxsize=1 << 16)(self._keys)

    def _keys(self, index: int) -> frozenset[int]:
        return frozenset(text_key(t) for t in self.source.example_texts(index))

    @property
    def epoch(self) -> float:
        """Epochs consumed so far (fractional): position in the stream / dataset size."""
        return self.cursor / self.size

    def leftover(self) -> int:
        """Examples of the finite stream never yielded: too few for a full batch, or dropped."""
        return len(self.deferred) + max(0, (self.limit or 0) - self.cursor) + self.dropped

    def next_batch(self) -> list[int] | None:
        """The next full batch of dataset indices, or None when a finite stream is exhausted."""
        batch: list[int] = []
        seen: set[int] = set()
        deferred: list[int] = []
        for index in self.deferred:
            if len(batch) < self.batch_size and self._fits(index, seen):
                self._add(index, batch, seen)
            else:
                deferred.append(index)
        cursor, scanned = self.cursor, 0
        while len(batch) < self.batch_size:
            if self.limit is not None and cursor >= self.limit:
                return None
            if scanned >= self.size:
                raise DuplicateTextsError(
                    f"dataset {self.source.name!r}: cannot fill a batch of {self.batch_size} "
                    f"examples without repeating a text (only {len(batch)} fit after scanning "
                    f"a whole epoch): too few distinct texts for this batch size")
            index = int(self.order[cursor])
            cursor += 1
            scanned += 1
            if self._fits(index, seen):
                self._add(index, batch, seen)
            else:
                deferred.append(index)
        if len(deferred) > self.batch_size:  # keep the newest; the oldest keep conflicting
            self._drop(len(deferred) - self.batch_size)
            deferred = deferred[-self.batch_size:]
        self.cursor, self.deferred = cursor, deferred
        return batch

    def _drop(self, count: int) -> None:
        before, self.dropped = self.dropped, self.dropped + count
        if len(str(before)) != len(str(self.dropped)) or before == 0:  # 1, 10, 100, ...
            log.warning("dataset %r: %d example(s) skipped so far because their text repeats "
                        "more often than there are batches per epoch (no_duplicates=True); "
                        "de-duplicate the data or pass no_duplicates=False",
                        self.source.name, self.dropped)

    def _fits(self, index: int, seen: set[int]) -> bool:
        return not self.no_duplicates or self.keys(index).isdisjoint(seen)

    def _add(self, index: int, batch: list[int], seen: set[int]) -> None:
        batch.append(index)
        if self.no_duplicates:
            seen.update(self.keys(index))


class GlobalBatchSampler:
    """Yields (dataset index, global batch indices); identical on every process.

    Mixing is per batch (each batch comes from one dataset, as in sentence-transformers,
    so S and the label type are uniform inside a batch): "round_robin" cycles through the
    datasets; "proportional" draws datasets in proportion to their size, through a shuffled
    schedule with one slot per batch of each dataset, reshuffled every round.
    """

    def __init__(self, sources: Sequence[TextSource], *, global_batch_size: int, seed: int,
                 mixing: str = "round_robin", shuffle: bool = True,
                 num_epochs: int | None = None, no_duplicates: bool = True):
        if mixing not in MIXING_CHOICES:
            raise ValueError(f"mixing must be one of {MIXING_CHOICES}, got {mixing!r}")
        if global_batch_size < 1:
            raise ValueError(f"global_batch_size must be >= 1, got {global_batch_size}")
        if not sources:
            raise ValueError("need at least one dataset")
        self.sources, self.mixing, self.batch_size = list(sources), mixing, global_batch_size
        self.streams = [
            _Stream(src, global_batch_size, _derived_seed(seed, d), shuffle=shuffle,
                    num_epochs=num_epochs, no_duplicates=no_duplicates)
            for d, src in enumerate(self.sources)]
        counts = np.array([max(1, len(src) // global_batch_size) for src in self.sources])
        self._slot_ends = np.cumsum(counts)
        self._schedule = grain.MapDataset.range(int(counts.sum())).shuffle(
            seed=_derived_seed(seed, len(self.sources), 0x5EED)).repeat(None)
        self.step = 0
        self.fingerprint = {
            "datasets": [f"{src.name}:{len(src)}" for src in self.sources],
            "global_batch_size": global_batch_size, "seed": seed, "mixing": mixing,
            "shuffle": shuffle, "num_epochs": num_epochs, "no_duplicates": no_duplicates}

    def dataset_for_step(self, step: int) -> int:
        """Which dataset batch number `step` comes from (a pure function of seed and step)."""
        if self.mixing == "round_robin":
            return step % len(self.streams)
        slot = int(self._schedule[step])
        return int(np.searchsorted(self._slot_ends, slot, side="right"))

    def next(self) -> tuple[int, list[int]]:
        """The next global batch; raises StopIteration once a finite stream runs out."""
        d = self.dataset_for_step(self.step)
        batch = self.streams[d].next_batch()
        if batch is None:
            leftover = {s.source.name: s.leftover() for s in self.streams}
            log.warning("data exhausted after %d batches; examples left that do not fill a "
                        "global batch of %d: %s", self.step, self.batch_size, leftover)
            raise StopIteration
        self.step += 1
        return d, batch

    @property
    def epochs(self) -> dict[str, float]:
        """Epochs consumed per dataset (fractional), for logging."""
        return {s.source.name: s.epoch for s in self.streams}

    def get_state(self) -> dict[str, Any]:
        """A small JSON-able dict: batch counter, per-dataset cursor and deferred indices."""
        return {"version": STATE_VERSION, "step": self.step,
                "cursors": [s.cursor for s in self.streams],
                "deferred": [list(s.deferred) for s in self.streams],
                "dropped_duplicates": [s.dropped for s in self.streams],
                "fingerprint": dict(self.fingerprint)}

    def set_state(self, state: dict[str, Any]) -> None:
        """Restore a state from `get_state`; refuses one made for different data or settings."""
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"data iterator state version {state.get('version')!r} is not "
                             f"{STATE_VERSION}")
        saved = state["fingerprint"]
        diff = {k: (saved.get(k), v) for k, v in self.fingerprint.items() if saved.get(k) != v}
        if diff:
            raise ValueError(f"data iterator state was saved for other data/settings; "
                             f"(saved, current): {diff}")
        self.step = int(state["step"])
        for d, stream in enumerate(self.streams):
            stream.cursor = int(state["cursors"][d])
            stream.deferred = [int(i) for i in state["deferred"][d]]
            stream.dropped = int(state["dropped_duplicates"][d])
