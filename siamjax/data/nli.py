"""NLI (premise, hypothesis, label) data -> (anchor, positive, hard negative) triplets.

SBERT's NLI recipe for MultipleNegativesRanking: for each premise, every entailed hypothesis is
a positive and a contradicted hypothesis of the same premise is its hard negative. Neutral
pairs carry no signal here. What cannot become a triplet is counted in `PairDataset.info`
and logged, never dropped silently.
"""
from __future__ import annotations

import logging
from collections.abc import Iterable

import numpy as np

from siamjax.data.records import NLI_LABELS, PairDataset

log = logging.getLogger(__name__)
ENTAILMENT, NEUTRAL, CONTRADICTION = range(len(NLI_LABELS))


def nli_to_triplets(dataset: PairDataset, *, seed: int = 0, symmetric: bool = False,
                    name: str | None = None) -> PairDataset:
    """Convert an NLI `PairDataset` (2 sides, label_kind "nli") into (anchor, positive, negative).

    Why grouping by premise: the hard negative must contradict the same anchor the positive
    entails. Each (anchor, entailed hypothesis) pair becomes one triplet whose negative is a
    contradicted hypothesis of that anchor, picked reproducibly from `seed`. With
    `symmetric=True` hypotheses are also used as anchors (the sentence-transformers
    training_nli_v2 recipe). `info` of the result counts the neutral rows and the entailed
    pairs left out because their anchor has no contradiction.
    """
    if dataset.label_kind != "nli" or dataset.num_sides != 2:
        raise ValueError(f"{dataset.name}: nli_to_triplets needs 2 text sides and NLI labels "
                         f"(columns premise, hypothesis, nli_label); got sides "
                         f"{dataset.sides} and label kind {dataset.label_kind!r}")
    premises, hypotheses = dataset.texts
    labels = dataset.labels.tolist()
    rows = list(zip(premises, hypotheses, labels))
    if symmetric:
        rows += list(zip(hypotheses, premises, labels))
    groups = _group_by_anchor(rows)
    rng = np.random.default_rng(seed)
    anchors, positives, negatives = [], [], []
    no_negative = 0
    for anchor, (entailed, contradicted) in groups.items():
        if not contradicted:
            no_negative += len(entailed)
            continue
        for positive in entailed:
            anchors.append(anchor)
            positives.append(positive)
            negatives.append(contradicted[int(rng.integers(len(contradicted)))])
    info = {
        "nli_rows": len(dataset),
        "triplets": len(anchors),
        "neutral_rows_unused": labels.count(NEUTRAL),
        "entailments_without_contradiction": no_negative,
        "contradictions_without_entailment": sum(
            len(c) for e, c in groups.values() if not e),
    }
    log.info("%s: NLI -> triplets: %s", dataset.name, info)
    if not anchors:
        raise ValueError(f"{dataset.name}: no premise has both an entailed and a contradicted "
                         f"hypothesis, so no triplet can be formed ({info})")
    return PairDataset(name or f"{dataset.name}:triplets", ("anchor", "positive", "negative"),
                       (anchors, positives, negatives), bad_rows=list(dataset.bad_rows),
                       info=info)


def _group_by_anchor(rows: Iterable[tuple[str, str, int]]) -> dict[str, tuple[list, list]]:
    """anchor -> (entailed hypotheses, contradicted hypotheses), de-duplicated, first-seen order."""
    groups: dict[str, tuple[dict, dict]] = {}
    for anchor, hypothesis, label in rows:
        entailed, contradicted = groups.setdefault(anchor, ({}, {}))
        if label == ENTAILMENT:
            entailed[hypothesis] = None
        elif label == CONTRADICTION:
            contradicted[hypothesis] = None
    return {a: (list(e), list(c)) for a, (e, c) in groups.items()}
