"""A tfds array_record split seen as a pair source (same interface as `PairDataset`).

Why a wrapper: `builder.as_data_source()` gives grain-compatible random access to feature
dicts with bytes; the pipeline wants `Example(texts, label)` with str texts, and a role
mapping chooses which features are the sides and which is the label.
"""
from __future__ import annotations

import functools
from collections.abc import Mapping

from siamjax.data.records import Example, PairDataset, label_kind_of, split_roles, text_key


class TfdsPairSource:
    """Random access over a tfds data source split, yielding `Example`s."""

    def __init__(self, data_source, columns: Mapping[str, str], *, name: str,
                 score_range: tuple[float, float] | None = None,
                 normalize_scores: bool = False, bad_rows: int = 0):
        self.sides, self._label_role = split_roles(columns)
        self._features = [columns[s] for s in self.sides]
        self._label_feature = columns[self._label_role] if self._label_role else None
        self.label_kind = label_kind_of(self._label_role)
        if normalize_scores and (self.label_kind != "score" or score_range is None):
            raise ValueError(f"{name}: normalize_scores needs a score label and a score range")
        self._scale = score_range if normalize_scores else None
        self._source, self.name, self.num_bad_rows = data_source, name, int(bad_rows)
        # Decoding a record costs ~0.2 ms; the sampler (duplicate check) and the batch
        # reader ask for the same records one after the other, so keep recent ones.
        self._record = functools.lru_cache(maxsize=1 << 15)(self._read)
        first = data_source[0] if len(data_source) else {}
        missing = [f for f in self._features + [self._label_feature] if f and f not in first]
        if missing:
            raise ValueError(f"{name}: features {missing} not in the dataset {sorted(first)}")

    @property
    def num_sides(self) -> int:
        """S, the number of texts per example."""
        return len(self.sides)

    def __len__(self) -> int:
        return len(self._source)

    def _read(self, index: int) -> dict:
        return self._source[index]

    def _texts(self, record) -> tuple[str, ...]:
        return tuple(_to_str(record[f]) for f in self._features)

    def example_texts(self, index: int) -> tuple[str, ...]:
        """The texts of one example."""
        return self._texts(self._record(int(index)))

    def example_keys(self, index: int) -> tuple[int, ...]:
        """`text_key` of each text of one example (the sampler's duplicate check, text ids)."""
        return tuple(text_key(t) for t in self.example_texts(index))

    def __getitem__(self, index: int) -> Example:
        record = self._record(int(index))
        label = None
        if self._label_feature is not None:
            label = record[self._label_feature]
            if self.label_kind == "score":
                label = float(label)
                if self._scale is not None:
                    low, high = self._scale
                    label = (label - low) / (high - low)
            else:
                label = int(label)
        return Example(self._texts(record), label)

    def materialize(self) -> PairDataset:
        """Read the whole split into memory (e.g. to convert NLI pairs into triplets)."""
        examples = [self[i] for i in range(len(self))]
        return PairDataset.from_examples(self.name, self.sides, self.label_kind, examples,
                                         info={"bad_rows_skipped_at_build": self.num_bad_rows})


def _to_str(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)
