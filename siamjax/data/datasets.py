"""Whole-dataset operations on `PairDataset`s: reading a tfds source into memory, concatenating
datasets with the same columns, and reordering into length-grouped batches."""
from __future__ import annotations

import numpy as np

from siamjax.data.records import DataError, PairDataset
from siamjax.encoder import rows


def in_memory(dataset) -> PairDataset:
    """`dataset` as an in-memory PairDataset (tfds sources are read once)."""
    return dataset.materialize() if hasattr(dataset, "materialize") else dataset


def concat_datasets(datasets) -> PairDataset:
    """One PairDataset holding the rows of several with the same sides and label kind."""
    first = datasets[0]
    if any(d.sides != first.sides or d.label_kind != first.label_kind for d in datasets):
        raise DataError(f"cannot concatenate datasets with different columns: "
                        f"{[(d.name, d.sides, d.label_kind) for d in datasets]}")
    texts = tuple([t for d in datasets for t in d.texts[i]] for i in range(len(first.sides)))
    labels = None if first.labels is None else np.concatenate([d.labels for d in datasets])
    return PairDataset("+".join(d.name for d in datasets), first.sides, texts, labels, first.label_kind,
                       bad_rows=[r for d in datasets for r in d.bad_rows])


def length_grouped(dataset: PairDataset, tokenizer, batch_size: int, epochs: int, seed: int,
                   max_length: int) -> PairDataset:
    """The dataset reordered for `epochs` epochs into batches of similar token length.

    Each epoch is shuffled, sorted by the longest side's length (stable, so ties stay
    shuffled), cut into batches and the batches shuffled again, so batches are random in
    order but need little padding — HF Trainer's `group_by_length`. Feed it with
    `shuffle=False` and `num_epochs=1`. Lengths are counted after truncation at `max_length`.
    """
    lengths = np.max([[len(ids) for ids in rows.token_ids(tokenizer, side, max_length)]
                      for side in dataset.texts], 0)
    rng = np.random.default_rng(seed)
    order = []
    for _ in range(max(1, epochs)):
        perm = rng.permutation(len(dataset))
        perm = perm[np.argsort(lengths[perm], kind="stable")]
        batches = [perm[i:i + batch_size] for i in range(0, len(perm), batch_size)]
        rng.shuffle(batches)
        order.extend(int(i) for b in batches for i in b)
    texts = tuple([side[i] for i in order] for side in dataset.texts)
    labels = None if dataset.labels is None else dataset.labels[order]
    return PairDataset(f"{dataset.name}:grouped", dataset.sides, texts, labels, dataset.label_kind,
                       bad_rows=list(dataset.bad_rows), info=dict(dataset.info))
