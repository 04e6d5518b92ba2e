"""In-memory pair/triplet/scored-pair datasets and the per-row validation behind them.

Every reader (jsonl/csv/tsv files, tfds builders) funnels rows through `RowParser`, so a
malformed row is reported the same way everywhere: `BadRowError` naming the file and line by
default, or — with `on_bad_row="skip"` — a recorded `BadRow` that is counted and logged when
the file is finished. Nothing is dropped silently.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

ON_BAD_ROW_CHOICES = ("error", "skip")
# Reserved role names in a column mapping; every other role is a text side, in mapping order.
# "teacher": distillation targets (a number or a list / nested list of numbers per row, e.g. a
# teacher's score margin, its scores of the candidates, or its embeddings); csv/tsv cells hold
# them as JSON text ("[0.3, -1.2]").
LABEL_ROLES = ("score", "label", "nli_label", "teacher")
# Array dtype of each label kind's `labels`.
LABEL_DTYPES = {"score": np.float32, "teacher": np.float32, "class": np.int32, "nli": np.int32}
# Canonical NLI classes (SNLI/MultiNLI order: 0 entailment, 1 neutral, 2 contradiction).
NLI_LABELS = ("entailment", "neutral", "contradiction")
_NLI_ALIASES = {name: i for i, name in enumerate(NLI_LABELS)} | {"0": 0, "1": 1, "2": 2}


class DataError(ValueError):
    """A data file or dataset that cannot be used; the message names the file (and line)."""


class BadRowError(DataError):
    """A malformed input row; the message names the file, the line and what is wrong."""

    def __init__(self, path: str, line: int, reason: str):
        super().__init__(f"{path}:{line}: {reason}")
        self.path, self.line, self.reason = str(path), line, reason


@dataclasses.dataclass(frozen=True)
class BadRow:
    """One skipped row: where it was and why it was rejected."""

    path: str
    line: int
    reason: str


@dataclasses.dataclass(frozen=True)
class Example:
    """One training example: S texts (anchor, positive[, negatives...]) and an optional label."""

    texts: tuple[str, ...]
    label: float | int | None = None


@dataclasses.dataclass
class PairDataset:
    """A random-access source of `Example`s held in memory (grain's `RandomAccessDataSource`).

    Why a plain class: grain only needs `__len__`/`__getitem__`, and the no-duplicates sampler
    needs the texts of any example cheaply. `label_kind` is "score" (float32 labels),
    "teacher" (float32 `[N, ...]` distillation targets), "class" or "nli" (int32 labels) or None. `bad_rows` lists the rows skipped while reading;
    `info` holds counts from conversions (e.g. NLI rows that could not form a triplet).
    """

    name: str
    sides: tuple[str, ...]
    texts: tuple[list[str], ...]
    labels: np.ndarray | None = None
    label_kind: str | None = None
    bad_rows: list[BadRow] = dataclasses.field(default_factory=list)
    info: dict[str, int] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        if len(self.sides) != len(self.texts) or not self.sides:
            raise ValueError(f"{self.name}: need one text column per side, got {self.sides}")
        n = len(self.texts[0])
        if any(len(col) != n for col in self.texts):
            raise ValueError(f"{self.name}: text columns have different lengths")
        if self.labels is not None and len(self.labels) != n:
            raise ValueError(f"{self.name}: {len(self.labels)} labels for {n} examples")
        if (self.labels is None) != (self.label_kind is None):
            raise ValueError(f"{self.name}: labels and label_kind must be given together")

    @property
    def num_sides(self) -> int:
        """S, the number of texts per example (2 pairs, 3 triplets, 2+K with K negatives)."""
        return len(self.sides)

    @property
    def num_bad_rows(self) -> int:
        """How many malformed rows were skipped while reading (0 with on_bad_row="error")."""
        return len(self.bad_rows)

    def __len__(self) -> int:
        return len(self.texts[0])

    def __getitem__(self, index: int) -> Example:
        index = int(index)
        label = None if self.labels is None else self.labels[index]
        if label is not None and label.ndim == 0:
            label = label.item()
        return Example(tuple(col[index] for col in self.texts), label)

    def example_texts(self, index: int) -> tuple[str, ...]:
        """The texts of one example, without building the label (used by the sampler)."""
        return tuple(col[int(index)] for col in self.texts)


def check_on_bad_row(on_bad_row: str) -> str:
    """Validate the `data.on_bad_row` setting early, with the allowed values in the message."""
    if on_bad_row not in ON_BAD_ROW_CHOICES:
        raise ValueError(f"on_bad_row must be one of {ON_BAD_ROW_CHOICES}, got {on_bad_row!r}")
    return on_bad_row


def split_roles(columns: Mapping[str, Any]) -> tuple[tuple[str, ...], str | None]:
    """Split a role->column mapping into the text sides (in order) and the one label role."""
    labels = [role for role in columns if role in LABEL_ROLES]
    if len(labels) > 1:
        raise ValueError(f"at most one of {LABEL_ROLES} may be mapped, got {labels}")
    sides = tuple(role for role in columns if role not in LABEL_ROLES)
    if not sides:
        raise ValueError(f"column mapping {dict(columns)} has no text column")
    return sides, (labels[0] if labels else None)


def label_kind_of(label_role: str | None) -> str | None:
    """The dataset-level label kind for a label role ("score", "class", "nli" or None)."""
    return {None: None, "score": "score", "label": "class", "nli_label": "nli", "teacher": "teacher"}[label_role]


def parse_nli_label(value: Any) -> int:
    """Map an NLI label (name in any case, or 0/1/2) to 0 entailment/1 neutral/2 contradiction."""
    if isinstance(value, bool):
        raise ValueError(f"unknown NLI label {value!r}")
    key = str(value).strip().lower() if value is not None else ""
    if key not in _NLI_ALIASES:
        raise ValueError(
            f"unknown NLI label {value!r} (expected one of {NLI_LABELS} or 0/1/2)")
    return _NLI_ALIASES[key]


@dataclasses.dataclass
class RowParser:
    """Turns raw column values into validated texts and a label, collecting skipped rows.

    Why one object: every reader shares the same rules (non-empty valid UTF-8 text, finite
    in-range scores, known labels) and the same error/skip policy.
    """

    path: str
    sides: tuple[str, ...]
    label_role: str | None = None
    score_range: tuple[float, float] | None = None
    normalize_scores: bool = False
    num_classes: int | None = None
    on_bad_row: str = "error"
    bad_rows: list[BadRow] = dataclasses.field(default_factory=list)
    teacher_shape: tuple[int, ...] | None = None  # set by the first row's teacher value

    def __post_init__(self):
        check_on_bad_row(self.on_bad_row)
        if self.normalize_scores and self.score_range is None:
            raise ValueError("normalize_scores=True needs score_range=(low, high), e.g. (0, 5)")
        if self.score_range is not None and not self.score_range[0] < self.score_range[1]:
            raise ValueError(f"score_range must be (low, high) with low < high: {self.score_range}")

    def reject(self, line: int, reason: str) -> None:
        """Raise `BadRowError` or record the row as skipped, per `on_bad_row`."""
        if self.on_bad_row == "error":
            raise BadRowError(self.path, line, reason)
        self.bad_rows.append(BadRow(self.path, line, reason))

    def parse(self, line: int, texts: Sequence[Any], label: Any = None):
        """Validate one row; returns (texts tuple, label) or None when the row was skipped."""
        try:
            clean = tuple(self._text(side, value) for side, value in zip(self.sides, texts))
            value = self._label(label) if self.label_role is not None else None
        except ValueError as err:
            self.reject(line, str(err))
            return None
        return clean, value

    def parse_columns(self, line: int, values: Sequence[Any]):
        """`parse` for one row's selected columns: the side texts, then the label if any."""
        label = values[len(self.sides)] if self.label_role else None
        return self.parse(line, values[: len(self.sides)], label)

    def _text(self, side: str, value: Any) -> str:
        if value is None:
            raise ValueError(f"column {side!r} is missing or null")
        if isinstance(value, bytes):
            try:
                value = value.decode("utf-8")
            except UnicodeDecodeError as err:
                raise ValueError(f"column {side!r} is not valid UTF-8 ({err.reason} at byte "
                                 f"{err.start})") from None
        if not isinstance(value, str):
            raise ValueError(f"column {side!r} must be text, got {type(value).__name__} {value!r}")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(f"column {side!r} contains non-UTF-8 bytes") from None
        if not value.strip():
            raise ValueError(f"column {side!r} is empty")
        return value

    def _label(self, value: Any):
        role = self.label_role
        if value is None or (isinstance(value, str) and not value.strip()):
            raise ValueError(f"column {role!r} is missing or empty")
        if role == "nli_label":
            return parse_nli_label(value)
        if role == "label":
            return self._class(value)
        if role == "teacher":
            return self._teacher(value)
        return self._score(value)

    def _teacher(self, value: Any) -> np.ndarray:
        """A number or (nested) list of finite numbers, shaped like the first row's."""
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                raise ValueError(f"teacher {value[:40]!r} is not a number or a JSON list of numbers") from None
        try:
            array = np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError):
            raise ValueError(f"teacher value {str(value)[:40]!r} is not a number or a (nested) list of numbers") from None
        if array.size == 0 or not np.isfinite(array).all():
            raise ValueError("teacher value is empty or holds NaN/Inf")
        if self.teacher_shape is None:
            self.teacher_shape = array.shape
        elif array.shape != self.teacher_shape:
            raise ValueError(f"teacher value has shape {array.shape}, the first row's has {self.teacher_shape}")
        return array.astype(np.float32)

    def _class(self, value: Any) -> int:
        try:
            number = float(value) if not isinstance(value, bool) else math.nan
        except (TypeError, ValueError):
            raise ValueError(f"label {value!r} is not an integer") from None
        if not math.isfinite(number) or number != int(number):
            raise ValueError(f"label {value!r} is not an integer")
        number = int(number)
        if number < 0 or (self.num_classes is not None and number >= self.num_classes):
            raise ValueError(f"label {number} out of range [0, {self.num_classes})")
        return number

    def _score(self, value: Any) -> float:
        try:
            if isinstance(value, bool):  # JSON true/false: float(True) would pass as 1.0
                raise TypeError
            number = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"score {value!r} is not a number") from None
        if not math.isfinite(number):
            raise ValueError(f"score {value!r} is not a finite number")
        if self.score_range is not None:
            low, high = self.score_range
            if not low <= number <= high:
                raise ValueError(f"score {number} out of range [{low}, {high}]")
            if self.normalize_scores:
                number = (number - low) / (high - low)
        return number

    def finish(self, name: str, rows: list[tuple[tuple[str, ...], Any]]) -> PairDataset:
        """Build the dataset from parsed rows and report (log) the skipped-row count."""
        if self.bad_rows:
            first = self.bad_rows[0]
            log.warning("%s: skipped %d bad row(s) (on_bad_row='skip'); first at line %d: %s",
                        self.path, len(self.bad_rows), first.line, first.reason)
        if not rows:
            skipped = f" ({len(self.bad_rows)} bad row(s) skipped)" if self.bad_rows else ""
            raise DataError(f"{self.path}: no data rows{skipped}")
        texts = tuple(list(col) for col in zip(*(row[0] for row in rows)))
        kind = label_kind_of(self.label_role)
        labels = None
        if kind is not None:
            labels = np.asarray([row[1] for row in rows], dtype=LABEL_DTYPES[kind])
        return PairDataset(name, self.sides, texts, labels, kind, list(self.bad_rows))
