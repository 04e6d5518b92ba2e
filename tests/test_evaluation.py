"""Evaluators: metric maths against plain-python references and sentence-transformers."""
import json
import pathlib

import numpy as np
import pytest
from scipy import stats

from siamjax import evaluation as ev
from siamjax.data import DataError, read_beir, read_scored_pairs
from siamjax.evaluation import classification
from siamjax.similarity import SIMILARITIES


def hashed_encode(texts):
    """Deterministic bag-of-character-trigram embeddings: similar strings get similar vectors."""
    out = np.zeros((len(texts), 64), np.float32)
    for r, t in enumerate(texts):
        t = f"  {t.lower()} "
        for i in range(len(t) - 2):
            out[r, hash(t[i:i + 3]) % 64] += 1.0
    return out


# ----------------------------------------------------------------------------- shared fixtures
@pytest.fixture(scope="module")
def st_model(minilm_dir):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(minilm_dir), device="cpu")


DOCS = {
    "d07": "The cat sat on the mat.", "d02": "A dog is running in the park.",
    "d13": "Stock markets fell sharply on Monday.", "d04": "The recipe needs two eggs and flour.",
    "d05": "Python is a popular programming language.", "d06": "The football match ended in a draw.",
    "d01": "A kitten is sleeping on a rug.", "d08": "Investors worry about rising interest rates.",
    "d09": "Bake the cake for thirty minutes.", "d10": "JAX compiles numerical programs with XLA.",
    "d11": "The team scored a late goal.", "d12": "Puppies love to play fetch.",
    "d03": "Stock markets fell sharply on Monday.",  # duplicate text: a tie broken by corpus id
    "d14": "Whisk the eggs with sugar.", "d15": "Compilers turn source code into machine code.",
    "d16": "The referee showed a red card.", "d17": "Central banks raised rates again.",
    "d18": "A bird is singing in the tree.", "d19": "Knead the dough until smooth.",
    "d20": "Rust guarantees memory safety.",
}
QUERIES = {
    "q1": "Where is the cat sleeping?", "q2": "What happened to the stock market?",
    "q3": "How do I bake a cake?", "q4": "Which languages are used for programming?",
    "q5": "Who won the football game?", "q6": "A query with no judgements", "q7": "Tell me about pets.",
}
QRELS = {"q1": {"d07", "d01"}, "q2": {"d03", "d08", "d17"}, "q3": {"d09", "d04", "d14", "d19"},
         "q4": {"d05", "d20"}, "q5": {"d06", "d11", "d16"}, "q7": {"d18", "d20"}}


@pytest.fixture
def beir_dir(tmp_path):
    (tmp_path / "qrels").mkdir()
    with open(tmp_path / "corpus.jsonl", "w") as f:
        for i, (k, v) in enumerate(DOCS.items()):
            f.write(json.dumps({"_id": k, "title": "Title" if i == 0 else "", "text": v}) + "\n")
    with open(tmp_path / "queries.jsonl", "w") as f:
        for k, v in QUERIES.items():
            f.write(json.dumps({"_id": k, "text": v}) + "\n")
    with open(tmp_path / "qrels" / "test.tsv", "w") as f:
        f.write("query-id\tcorpus-id\tscore\n")
        for q, docs in QRELS.items():
            for d in sorted(docs):
                f.write(f"{q}\t{d}\t1\n")
        f.write("q1\td02\t0\n")  # judged non-relevant
    return tmp_path


def write(path: pathlib.Path, text: str) -> pathlib.Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_read_beir(beir_dir):
    data = read_beir(beir_dir)
    assert data.corpus["d07"] == "Title The cat sat on the mat." and data.corpus["d02"].startswith("A dog")
    assert data.relevant_docs["q1"] == {"d07", "d01"} and "q6" not in data.relevant_docs


def test_read_beir_errors(beir_dir):
    with pytest.raises(DataError, match=r"dev\.tsv: no such file \(splits found: test\)"):
        read_beir(beir_dir, split="dev")
    with open(beir_dir / "qrels" / "test.tsv", "a") as f:
        f.write("q9\td01\t1\n")
    with pytest.raises(DataError, match=r"test\.tsv:\d+: query-id 'q9' is not in queries"):
        read_beir(beir_dir)
    with open(beir_dir / "qrels" / "test.tsv", "a") as f:
        f.write("q1\tnope\t1\n")
    skipped = read_beir(beir_dir, on_bad_row="skip")  # judgements no document could satisfy: counted
    assert [r.reason for r in skipped.bad_rows] == ["query-id 'q9' is not in queries.jsonl",
                                                    "corpus-id 'nope' is not in corpus.jsonl"]
    assert skipped.relevant_docs == read_beir(beir_dir, on_bad_row="skip").relevant_docs
    assert "nope" not in skipped.relevant_docs["q1"]
    with pytest.raises(ValueError, match=r"1 relevant document id\(s\) are not in the corpus, e\.g\. \['nope'\]"):
        ev.RetrievalEvaluator(skipped.queries, skipped.corpus, {"q1": {"d01", "nope"}})
    write(beir_dir / "corpus.jsonl", '{"_id": "a", "text": "x"}\n{"_id": "a", "text": "y"}\n')
    with pytest.raises(DataError, match=r"corpus\.jsonl:2: duplicate _id 'a'"):
        read_beir(beir_dir)
    with pytest.raises(DataError, match="not a directory"):
        read_beir(beir_dir / "corpus.jsonl")


# ----------------------------------------------------------------------------- STS
def test_sts_metrics_match_scipy():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(40, 8)), rng.normal(size=(40, 8))
    gold = rng.uniform(0, 5, size=40)
    m = ev.sts_metrics(a, b, gold)
    cos = np.sum(a * b, 1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert m["spearman_cosine"] == pytest.approx(100 * stats.spearmanr(gold, cos)[0])
    assert m["pearson_dot"] == pytest.approx(100 * stats.pearsonr(gold, np.sum(a * b, 1))[0])
    assert m["spearman_euclidean"] == pytest.approx(100 * stats.spearmanr(gold, -np.linalg.norm(a - b, axis=1))[0])
    assert m["pearson_manhattan"] == pytest.approx(100 * stats.pearsonr(gold, -np.abs(a - b).sum(1))[0])


def test_sts_evaluator_encodes_each_sentence_once():
    calls = []

    def encode(texts):
        calls.append(list(texts))
        return hashed_encode(texts)

    s1, s2 = ["a cat", "a dog", "a cat"], ["a cat sits", "the cat", "a dog"]
    m = ev.STSEvaluator(s1, s2, [4.0, 1.0, 2.0])(encode)
    assert len(calls) == 1 and sorted(calls[0]) == sorted(set(s1 + s2))
    assert set(m) == {f"{c}_{s}" for c in ("pearson", "spearman") for s in SIMILARITIES}


def test_sts_evaluator_rejects_broken_encoders():
    evaluator = ev.STSEvaluator(["a", "b"], ["c", "d"], [1, 2])
    with pytest.raises(ValueError, match="encode returned shape"):
        evaluator(lambda t: np.zeros((1, 3)))
    with pytest.raises(ValueError, match="NaN"):
        evaluator(lambda t: np.full((len(t), 3), np.nan))
    with pytest.raises(ValueError, match="similarity must be"):
        ev.STSEvaluator(["a"], ["b"], [1], similarities=("jaccard",))


def test_sts_matches_sentence_transformers(st_model, stsb_dir):
    from sentence_transformers.sentence_transformer.evaluation import EmbeddingSimilarityEvaluator

    data = read_scored_pairs(stsb_dir / "sts-dev.csv")
    s1, s2, gold = data.texts[0][:60], data.texts[1][:60], data.labels[:60].astype(np.float64)
    ref = EmbeddingSimilarityEvaluator(s1, s2, list(gold / 5), similarity_fn_names=list(SIMILARITIES))(st_model)
    ours = ev.STSEvaluator(s1, s2, gold)(st_model)  # an object with .encode works as the model
    for key, value in ours.items():
        assert value == pytest.approx(100 * ref[key], abs=1e-4), key


def test_sts_primary_metric_follows_the_models_similarity_like_sentence_transformers(st_model, stsb_dir,
                                                                                      minilm_dir):
    """A model that says it scores by dot product is ranked by spearman_dot, as
    sentence-transformers' evaluator ranks it; a bare encode function by cosine."""
    from sentence_transformers.sentence_transformer.evaluation import EmbeddingSimilarityEvaluator

    from siamjax import SentenceEncoder

    data = read_scored_pairs(stsb_dir / "sts-dev.csv")
    s1, s2, gold = data.texts[0][:20], data.texts[1][:20], data.labels[:20].astype(np.float64)
    st_model.similarity_fn_name = "dot"
    try:
        ref = EmbeddingSimilarityEvaluator(s1, s2, list(gold / 5))
        ref(st_model)
    finally:
        st_model.similarity_fn_name = "cosine"
    dot_model = SentenceEncoder.from_pretrained(minilm_dir).with_settings(similarity_fn_name="dot")
    ours = ev.STSEvaluator(s1, s2, gold)
    assert ours.primary_metric == "spearman_cosine"
    ours(dot_model)
    assert ours.primary_metric == ref.primary_metric == "spearman_dot"
    bare = ev.STSEvaluator(s1, s2, gold)
    bare(hashed_encode)
    assert bare.primary_metric == "spearman_cosine"
    assert ev.STSEvaluator(s1, s2, gold, main_similarity="manhattan").primary_metric == "spearman_manhattan"
    with pytest.raises(ValueError, match="main_similarity 'dot' is not among"):
        ev.STSEvaluator(s1, s2, gold, similarities=("cosine",), main_similarity="dot")


# ----------------------------------------------------------------------------- retrieval
def naive_metrics(ranked, relevant, k_acc, k_pr, k_mrr, k_ndcg, k_map):
    """Plain loops, one query at a time."""
    out = {}
    q = len(ranked)
    for k in k_acc:
        out[f"accuracy@{k}"] = sum(any(d in rel for d in r[:k]) for r, rel in zip(ranked, relevant)) / q
    for k in k_pr:
        out[f"precision@{k}"] = sum(sum(d in rel for d in r[:k]) / k for r, rel in zip(ranked, relevant)) / q
        out[f"recall@{k}"] = sum(sum(d in rel for d in r[:k]) / len(rel) for r, rel in zip(ranked, relevant)) / q
    for k in k_mrr:
        total = 0.0
        for r, rel in zip(ranked, relevant):
            for rank, d in enumerate(r[:k]):
                if d in rel:
                    total += 1 / (rank + 1)
                    break
        out[f"mrr@{k}"] = total / q
    for k in k_ndcg:
        vals = []
        for r, rel in zip(ranked, relevant):
            dcg = sum(1 / np.log2(i + 2) for i, d in enumerate(r[:k]) if d in rel)
            idcg = sum(1 / np.log2(i + 2) for i in range(min(len(rel), k)))
            vals.append(dcg / idcg)
        out[f"ndcg@{k}"] = float(np.mean(vals))
    for k in k_map:
        vals = []
        for r, rel in zip(ranked, relevant):
            correct, total = 0, 0.0
            for i, d in enumerate(r[:k]):
                if d in rel:
                    correct += 1
                    total += correct / (i + 1)
            vals.append(total / min(k, len(rel)))
        out[f"map@{k}"] = float(np.mean(vals))
    return {k: 100 * v for k, v in out.items()}


def test_ranking_metrics_match_naive_loops():
    rng = np.random.default_rng(1)
    ranked, relevant = [], []
    for q in range(30):
        n_docs = int(rng.integers(3, 150))  # some lists shorter than 100
        ranked.append([f"d{i}" for i in rng.permutation(200)[:n_docs]])
        relevant.append({f"d{i}" for i in rng.choice(200, size=int(rng.integers(1, 30)), replace=False)})
    ks = dict(accuracy_at_k=(1, 3, 10), precision_recall_at_k=(1, 10, 100), mrr_at_k=(10,), ndcg_at_k=(5, 10),
              map_at_k=(100,))
    got = ev.ranking_metrics(ev.hit_matrix(ranked, relevant, 100), [len(r) for r in relevant], **ks)
    ref = naive_metrics(ranked, relevant, ks["accuracy_at_k"], ks["precision_recall_at_k"], ks["mrr_at_k"],
                        ks["ndcg_at_k"], ks["map_at_k"])
    assert got.keys() == ref.keys()
    for k in ref:
        assert got[k] == pytest.approx(ref[k], abs=1e-9), k


def test_retrieval_matches_sentence_transformers(st_model, beir_dir):
    from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator

    data = read_beir(beir_dir)
    ks = dict(mrr_at_k=[10], ndcg_at_k=[3, 10], accuracy_at_k=[1, 3, 5, 10], precision_recall_at_k=[1, 3, 10, 100],
              map_at_k=[100])
    ref = InformationRetrievalEvaluator(data.queries, data.corpus, data.relevant_docs, **ks)(st_model)
    ours = ev.RetrievalEvaluator.from_beir(beir_dir, **ks)(st_model)
    assert len(ours) == len(ref) == 16
    for key, value in ref.items():
        assert ours[key] / 100 == pytest.approx(value, abs=1e-6), key
    assert ours["cosine_recall@100"] == 100.0  # the corpus is smaller than 100


def test_retrieval_compute_and_errors():
    evaluator = ev.RetrievalEvaluator({"q": "x", "p": "y"}, {"b": "1", "a": "2"}, {"q": {"a"}}, scores=("cosine", "dot"),
                                      accuracy_at_k=(1,), precision_recall_at_k=(1,), map_at_k=(2,))
    assert evaluator.corpus_ids == ["a", "b"] and evaluator.query_ids == ["q"]
    m = evaluator.compute(np.array([[1.0, 0.0]]), np.array([[1.0, 0.0], [0.0, 1.0]]))
    assert m["cosine_mrr@10"] == 100.0 and m["dot_accuracy@1"] == 100.0
    with pytest.raises(ValueError, match="expected 1 query and 2 corpus"):
        evaluator.compute(np.ones((2, 2)), np.ones((2, 2)))
    with pytest.raises(ValueError, match="no query has a relevant"):
        ev.RetrievalEvaluator({"q": "x"}, {"a": "1"}, {})
    with pytest.raises(ValueError, match="'cosine' or 'dot'"):
        ev.RetrievalEvaluator({"q": "x"}, {"a": "1"}, {"q": {"a"}}, scores=("manhattan",))


# ----------------------------------------------------------------------------- triplets, pairs, mining
def test_triplet_evaluator(tmp_path):
    rng = np.random.default_rng(2)
    a, p, n = (rng.normal(size=(25, 6)) for _ in range(3))
    acc = ev.triplet_accuracy(a, p, n, "euclidean")
    assert acc == pytest.approx(100 * np.mean(np.linalg.norm(a - p, axis=1) < np.linalg.norm(a - n, axis=1)))
    f = write(tmp_path / "t.jsonl", "".join(json.dumps({"anchor": x, "positive": x + "s", "negative": y}) + "\n"
                                            for x, y in [("the cat", "stock market"), ("a dog", "cake recipe")]))
    m = ev.TripletEvaluator.from_file(f)(hashed_encode)
    assert m["cosine_accuracy"] == 100.0 and set(m) == {f"{s}_accuracy" for s in SIMILARITIES}


@pytest.mark.parametrize("greater", [True, False])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_binary_classification_matches_sentence_transformers(greater, seed):
    from sentence_transformers.sentence_transformer.evaluation import BinaryClassificationEvaluator as STBinary
    from sklearn.metrics import average_precision_score

    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, size=80)
    scores = np.round(labels * 0.3 + rng.normal(size=80), 1).astype(np.float32)  # rounding makes ties
    m = ev.binary_classification_metrics(scores, labels, greater_is_better=greater)
    acc, acc_thr = STBinary.find_best_acc_and_threshold(scores, labels, greater)
    f1, p, r, f1_thr = STBinary.find_best_f1_and_threshold(scores, labels, greater)
    ap = average_precision_score(labels, scores * (1 if greater else -1))
    assert m["accuracy"] == pytest.approx(100 * acc) and m["f1"] == pytest.approx(100 * f1)
    assert m["accuracy_threshold"] == pytest.approx(acc_thr, abs=1e-6)
    assert m["f1_threshold"] == pytest.approx(f1_thr, abs=1e-6)
    assert (m["precision"], m["recall"]) == (pytest.approx(100 * p), pytest.approx(100 * r))
    assert m["ap"] == pytest.approx(100 * ap)


def test_binary_evaluator_from_file(tmp_path):
    f = write(tmp_path / "pairs.tsv", "sentence1\tsentence2\tlabel\nthe cat sat\tthe cat sat down\t1\n"
              "stock markets\tbake a cake\t0\nred card\tthe red card\t1\nknead dough\tmemory safety\t0\n")
    m = ev.BinaryClassificationEvaluator.from_file(f)(hashed_encode)
    assert m["cosine_accuracy"] == 100.0 and m["cosine_ap"] == 100.0 and m["manhattan_f1"] == 100.0
    assert m["manhattan_f1_threshold"] > 0  # distances are reported as distances
    with pytest.raises(ValueError, match="labels must be 0 or 1"):
        ev.BinaryClassificationEvaluator(["a"], ["b"], [3])


def test_paraphrase_mining_metrics_with_ties():
    gold = {(0, 1), (2, 3), (4, 5)}
    mined = [(0.9, 0, 1), (0.8, 0, 2), (0.8, 2, 3), (0.5, 1, 4), (0.4, 4, 5)]
    m = ev.paraphrase_mining_metrics(mined, gold)
    # the tied pair at 0.8 is one decision: after it, 2 of 3 correct
    assert m["average_precision"] == pytest.approx(100 * (1.0 + 2 / 3 + 3 / 5) / 3)
    assert m["f1"] == pytest.approx(100 * 2 * 0.6 * 1.0 / 1.6) and m["threshold"] == pytest.approx(0.4)
    with pytest.raises(ValueError, match="no gold"):
        ev.paraphrase_mining_metrics(mined, set())


def test_paraphrase_mining_matches_sentence_transformers(st_model, tmp_path):
    from sentence_transformers.sentence_transformer.evaluation import ParaphraseMiningEvaluator as STMining

    sentences = list(dict.fromkeys(DOCS.values())) + list(QUERIES.values())[:5]
    dup = [(0, 6), (2, 7), (2, 15), (3, 8), (5, 10), (5, 14), (4, 13)]
    ref = STMining({str(i): s for i, s in enumerate(sentences)}, [(str(i), str(j)) for i, j in dup], top_k=5)(st_model)
    ours = ev.ParaphraseMiningEvaluator(sentences, dup, top_k=5)(st_model)
    for key in ("average_precision", "f1", "precision", "recall"):
        assert ours[key] / 100 == pytest.approx(ref[key], abs=1e-6), key
    assert ours["threshold"] == pytest.approx(ref["threshold"], abs=1e-5)
    f = write(tmp_path / "p.csv", "sentence1,sentence2,label\na cat,a cat!,1\na dog,stocks,0\n")
    e = ev.ParaphraseMiningEvaluator.from_file(f)
    assert e.sentences == ["a cat", "a dog", "a cat!", "stocks"] and e.gold == {(0, 2)}
    with pytest.raises(ValueError, match="two distinct indices"):
        ev.ParaphraseMiningEvaluator(["a", "b"], [(0, 0)])


def test_classification_module_exposes_threshold_helpers():
    s = np.array([3.0, 2.0, 2.0, 1.0])
    np.testing.assert_array_equal(classification._group_ends(s), [0, 2, 3])
    assert classification._threshold_after(s, 0) == 2.5 and classification._threshold_after(s, 3) == 1.0
