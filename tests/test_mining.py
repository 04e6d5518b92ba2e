"""Hard-negative mining against sentence-transformers 6.x's `mine_hard_negatives`: the same model
(all-MiniLM-L6-v2) and options must give the same negatives, in the same order, with scores
within 1e-5, for every output format, on 1 device and on 8 (encoding and search sharded)."""
import json
import random

import jax
import numpy as np
import pytest

from siamjax import SentenceEncoder, mining
from siamjax.cli import main as cli_main
from siamjax.search import mine_hard_negatives, search_mesh

pytestmark = pytest.mark.slow  # several minutes: scheduled first (tests/conftest.py)

TOPICS = ["cat", "dog", "car", "rain", "music", "coffee", "football", "river", "computer", "garden"]


def pairs() -> dict[str, list[str]]:
    """30 (query, answer) pairs on 10 topics, plus a repeated query with a second answer."""
    queries, answers = [], []
    for i, topic in enumerate(TOPICS):
        for j in range(3):
            queries.append(f"What do people say about the {topic} number {j}?")
            answers.append(f"The {topic} is discussed here, item {j} of {i}.")
    queries.append(queries[0])
    answers.append("Another answer about the cat, indeed.")
    return {"query": queries, "answer": answers}


CORPUS = [f"Unrelated sentence {k} about {TOPICS[k % 10]} and the weather." for k in range(20)]
CASES = {
    "triplet": dict(output_format="triplet", output_scores=True),
    "triplet-random-filters": dict(output_format="triplet", output_scores=True, sampling_strategy="random",
                                   num_negatives=4, range_max=15, max_score=0.8, min_score=0.1,
                                   absolute_margin=0.02),
    "n-tuple": dict(output_format="n-tuple", range_min=2, relative_margin=0.05, corpus=CORPUS),
    "n-tuple-scores": dict(output_format="n-tuple-scores", num_negatives=5, corpus=CORPUS),
    "labeled-pair": dict(output_format="labeled-pair", output_scores=True),
    "labeled-pair-labels": dict(output_format="labeled-pair", max_score=0.7, num_negatives=2),
    "labeled-list": dict(output_format="labeled-list", output_scores=True, corpus=CORPUS),
    "include-positives": dict(output_format="labeled-list", include_positives=True, num_negatives=4),
    # the queries' own texts are in the corpus: a query is never its own negative (sentence-transformers >= 6.3)
    "queries-in-corpus": dict(output_format="triplet", output_scores=True, corpus=CORPUS + pairs()["query"][:6]),
}
# On 8 devices one case per output format (each costs ~10 s on the 2-core machine); the CLI test
# below runs n-tuple-scores on 8 devices.
RUNS = [(case, 1) for case in CASES] + [(case, 8) for case in ("triplet-random-filters", "labeled-pair",
                                                                "labeled-list")]


@pytest.fixture(scope="module")
def models(minilm_dir):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(minilm_dir), device="cpu"), SentenceEncoder.from_pretrained(minilm_dir)


@pytest.fixture(scope="module")
def reference(models):
    """case -> sentence-transformers' result columns (computed once per case)."""
    from datasets import Dataset
    from sentence_transformers.util import mine_hard_negatives as st_mine

    cache = {}

    def get(case):
        if case not in cache:
            random.seed(0)
            cache[case] = st_mine(Dataset.from_dict(pairs()), models[0], batch_size=64, verbose=False,
                                  **CASES[case]).to_dict()
        return cache[case]

    return get


def assert_same_columns(ours: dict, ref: dict):
    assert list(ours) == list(ref)
    assert len(next(iter(ref.values()))) > 0
    for name, values in ref.items():
        if name in ("score", "scores"):
            assert len(ours[name]) == len(values)
            flat = lambda col: np.asarray([x for row in col for x in (row if isinstance(row, list) else [row])])  # noqa: E731
            np.testing.assert_allclose(flat(ours[name]), flat(values), atol=1e-5, rtol=0)
        else:
            assert ours[name] == values, name


@pytest.mark.parametrize("case, devices", RUNS)
def test_same_negatives_order_and_scores_as_sentence_transformers(case, devices, models, reference):
    random.seed(0)
    ours = mine_hard_negatives(pairs(), models[1], batch_size=64, show_progress=False,
                               mesh=search_mesh(jax.devices()[:devices]), **CASES[case])
    assert_same_columns(ours, reference(case))


def test_a_query_in_the_corpus_is_not_its_own_negative(models):
    ours = mine_hard_negatives(pairs(), models[1], batch_size=64, show_progress=False,
                               mesh=search_mesh(jax.devices()[:1]), **CASES["queries-in-corpus"])
    assert set(ours["query"][:6]) <= set(ours["negative"])  # they are mined for the other queries
    assert all(q != n for q, n in zip(ours["query"], ours["negative"]))


def test_random_sampling_follows_the_given_rng(models, reference):
    """A seeded `random.Random` gives a reproducible sample, different from another seed's."""
    kwargs = dict(CASES["triplet-random-filters"], mesh=search_mesh(jax.devices()[:1]), batch_size=64,
                  show_progress=False)
    a = mining.mine_hard_negatives(pairs(), models[1], rng=random.Random(1), **kwargs)
    b = mining.mine_hard_negatives(pairs(), models[1], rng=random.Random(1), **kwargs)
    c = mining.mine_hard_negatives(pairs(), models[1], rng=random.Random(2), **kwargs)
    assert a == b and a["negative"] != c["negative"]


def test_bad_options_fail_like_sentence_transformers(models):
    one = search_mesh(jax.devices()[:1])
    with pytest.raises(ValueError, match="num_negatives must be at least 1"):
        mine_hard_negatives(pairs(), models[1], num_negatives=0, mesh=one)
    with pytest.raises(ValueError, match="Cannot mine 5 negatives per query"):
        mine_hard_negatives(pairs(), models[1], num_negatives=5, range_min=3, range_max=6, mesh=one)
    with pytest.raises(ValueError, match="Invalid output_format"):
        mine_hard_negatives(pairs(), models[1], output_format="quadruplet", mesh=one)


def test_mine_cli_on_8_devices_writes_the_reference_tuples(models, reference, minilm_dir, tmp_path, capsys):
    """`siamjax mine` (all 8 devices) = sentence-transformers' n-tuple-scores with an extra corpus."""
    data = pairs()
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps({"q": q, "a": a}) + "\n" for q, a in zip(data["query"], data["answer"])))
    (tmp_path / "corpus.txt").write_text("".join(t + "\n" for t in CORPUS))
    out = tmp_path / "tuples.jsonl"
    assert cli_main(["mine", "--model", str(minilm_dir), "--data", str(path), "--column", "query=q",
                     "--column", "answer=a", "--corpus", str(tmp_path / "corpus.txt"), "--output", str(out),
                     "--output-format", "n-tuple-scores", "--num-negatives", "5", "--batch-size", "64",
                     "--quiet"]) == 0
    assert "n-tuple-scores rows (query, answer, negative_1" in capsys.readouterr().out
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert_same_columns({k: [r[k] for r in rows] for k in rows[0]}, reference("n-tuple-scores"))
    assert cli_main(["mine", "--model", str(minilm_dir), "--data", str(path), "--column", "query=q",
                     "--column", "answer=a", "--output", str(out), "--range-min", "9", "--range-max", "10",
                     "--quiet"]) == 2
    assert "Cannot mine 3 negatives per query" in capsys.readouterr().err
