"""Smoke tests for bench/: every benchmark's core runs end to end at a tiny size.

Why: benchmark scripts are run rarely and rot silently when the library moves; these run each
script's real code path (both libraries, the real train step, the FLOP counter, the charts) on
a tiny random encoder saved as a sentence-transformers folder. No timing is asserted.
"""
import json
import re
import pathlib
import sys

import numpy as np
import pytest

BENCH = pathlib.Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))

import device_check  # noqa: E402
import device_report  # noqa: E402
import encode_throughput  # noqa: E402
import loss_memory  # noqa: E402
import mfu  # noqa: E402
import plot  # noqa: E402
import shapes  # noqa: E402
import train_throughput  # noqa: E402


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, minilm_dir):
    """A tiny random BERT saved as a sentence-transformers folder (both libraries load it)."""
    from transformers import AutoTokenizer

    import siamjax

    tokenizer = AutoTokenizer.from_pretrained(str(minilm_dir))
    cfg = siamjax.BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                             num_attention_heads=4, intermediate_size=64, max_position_embeddings=64)
    enc = siamjax.SentenceEncoder.from_config(cfg, tokenizer, seed=0, max_seq_length=32)
    return str(enc.save(tmp_path_factory.mktemp("tiny_st")))


@pytest.fixture(scope="module")
def stsb_test(stsb_dir):
    s1, s2, scores = train_throughput.read_stsb(stsb_dir / "sts-test.csv")
    return s1[:24], s2[:24], scores[:24]


def test_read_stsb_rejects_short_rows(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("a\tb\tc\td\t1.0\tonly one sentence\n")
    with pytest.raises(ValueError, match="bad.csv:1"):
        train_throughput.read_stsb(bad)


def test_pair_batches_cycle_in_a_fixed_order():
    s1, s2 = [f"a{i}" for i in range(10)], [f"b{i}" for i in range(10)]
    batches = train_throughput.pair_batches(s1, s2, batch_size=4, count=3, seed=1)
    assert [len(a) for a, _ in batches] == [4, 4, 4]
    assert batches[2] == batches[0]  # 2 full batches per epoch, then it cycles
    for anchors, positives in batches:
        assert [a[1:] for a in anchors] == [p[1:] for p in positives]  # pairs stay aligned
    assert batches == train_throughput.pair_batches(s1, s2, batch_size=4, count=3, seed=1)


def test_train_throughput_core_runs_both_libraries(tiny_dir, stsb_test):
    s1, s2, _ = stsb_test
    row = train_throughput.bench_batch_size(tiny_dir, s1, s2, batch_size=4, warmup=1, steps=2, rounds=2,
                                            max_seq_length=32, buckets=(16, 32), pack_length=32, padded=True,
                                            log=lambda *_: None)
    assert row["torch_pairs_per_s"] > 0 and row["jax_pairs_per_s"] > 0 and row["jax_padded_pairs_per_s"] > 0
    assert row["ratio"] == pytest.approx(row["jax_pairs_per_s"] / row["torch_pairs_per_s"])
    assert row["jax_compile_s"] > 0 and all(shape[-1] == 32 for shape in row["jax_shapes"])
    # padding accounting: nobody computes on fewer tokens than are real; packing never on more
    real = row["real_tokens_per_pair"]
    assert real <= min(row[f"{k}_tokens_per_pair"] for k in ("torch", "jax", "jax_padded"))
    assert row["jax_tokens_per_pair"] <= row["jax_padded_tokens_per_pair"]
    # the same weights and texts with dropout off: the same loss in both libraries (float32)
    assert row["jax_eval_loss"] == pytest.approx(row["torch_eval_loss"], abs=1e-4)
    # packed and padded siamjax train on the same texts: same loss up to dropout
    assert abs(row["jax_mean_loss"] - row["jax_padded_mean_loss"]) < 0.5
    # same loss on the same data: both start near log(batch) for a random encoder
    assert np.isfinite(row["torch_mean_loss"]) and np.isfinite(row["jax_mean_loss"])
    assert abs(row["torch_mean_loss"] - row["jax_mean_loss"]) < 0.5


def test_grad_cache_row_runs_packed_and_padded(tiny_dir, stsb_test):
    s1, s2, _ = stsb_test
    row = train_throughput.bench_grad_cache(tiny_dir, s1, s2, batch_size=8, warmup=1, steps=1, rounds=1,
                                            max_seq_length=32, buckets=(32,), pack_length=32, chunk=4,
                                            chunk_tokens=64, log=lambda *_: None)
    assert row["gc_packed_pairs_per_s"] > 0 and row["gc_padded_pairs_per_s"] > 0
    assert row["packed_over_padded"] == pytest.approx(row["gc_packed_pairs_per_s"] / row["gc_padded_pairs_per_s"])
    assert row["gc_packed_tokens_per_pair"] <= row["gc_padded_tokens_per_pair"]
    assert abs(row["gc_packed_mean_loss"] - row["gc_padded_mean_loss"]) < 0.5  # same pairs, up to dropout


def test_loss_memory_ring_table_runs():
    rows = loss_memory.ring_rows(32, [1, 2], 8)
    assert [r["devices"] for r in rows] == [1, 2] and all(r["ring_temp_mib"] > 0 for r in rows)


def test_train_throughput_cli_writes_json(tiny_dir, stsb_dir, tmp_path):
    out = tmp_path / "train.json"
    rc = train_throughput.main(["--model", tiny_dir, "--data", str(stsb_dir / "sts-test.csv"), "--batch", "4",
                                "--steps", "2", "--warmup", "1", "--rounds", "1", "--max-seq-length", "32",
                                "--threads", "2", "--json", str(out)])
    assert rc == 0
    data = json.loads(out.read_text())
    assert data["results"][0]["batch_size"] == 4 and "jax" in data["environment"]
    assert data["command"].startswith("python bench/train_throughput.py --model")


def test_encode_throughput_core_agrees_between_libraries(tiny_dir, stsb_test):
    s1, s2, scores = stsb_test
    st, sj = encode_throughput.load_encoders(tiny_dir, 32)
    row = encode_throughput.bench_batch_size(st, sj, s1 + s2, scores, batch_size=8, rounds=1,
                                             log=lambda *_: None)
    assert row["torch_sentences_per_s"] > 0 and row["jax_sentences_per_s"] > 0
    assert row["max_abs_diff"] < 1e-4
    assert row["jax_spearman"] == pytest.approx(row["torch_spearman"], abs=0.5)


def test_spearman_cosine_pairs_first_and_second_halves():
    emb = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [1.0, 0.0], [1.0, 0.0]])
    # cosines: (1,0)-(1,1)=0.707, (1,0)-(1,0)=1, (0,1)-(1,0)=0
    assert encode_throughput.spearman_cosine(emb, np.array([2.0, 3.0, 1.0])) == pytest.approx(100.0)


def test_flop_count_matches_hand_computed_bert_base():
    cfg = mfu.MODELS["bert-base"]
    # per token per layer: 2*(4*768^2 + 2*768*3072) + 4*128*768 = 14,155,776 + 393,216
    assert mfu.forward_flops_per_token(cfg, 128) == 12 * (14_155_776 + 393_216)
    tokens = 2 * 8 * 128
    assert mfu.train_step_flops(cfg, 8, 128) == 3 * (tokens * 12 * 14_548_992 + 2 * 64 * 768)


def test_cpu_peak_is_measured():
    peak, how = mfu.device_peak("float32", matmul_size=128)
    assert peak > 0 and "measured" in how


def test_plot_renders_both_charts(tmp_path):
    pytest.importorskip("matplotlib", reason="matplotlib is in the `bench` extra, not `dev`")
    train = {"environment": {}, "results": [{"batch_size": 32, "ratio": 1.7, "torch_pairs_per_s": 10.0,
                                             "jax_pairs_per_s": 17.0, "jax_padded_ratio": 0.6,
                                             "jax_padded_pairs_per_s": 6.0}]}
    encode = {"environment": {}, "results": [{"batch_size": 64, "ratio": 1.2, "torch_sentences_per_s": 100.0,
                                              "jax_sentences_per_s": 120.0}]}
    mfu_run = {"environment": {"device": "cpu: cpu"},
               "results": [{"model": "minilm", "dtype": "bfloat16", "batch": b, "mfu": m}
                           for b, m in ((4, 0.3), (8, 0.4))]}
    for name, data in (("train", train), ("encode", encode), ("mfu_cpu", mfu_run)):
        (tmp_path / f"{name}.json").write_text(json.dumps(data))
    assert [b[4] for b in plot.ratio_bars(train, encode)] == [False, True, False]
    written = plot.render(tmp_path, tmp_path)
    assert sorted(p.name for p in written) == ["mfu.png", "throughput.png"]
    assert all(p.stat().st_size > 1000 for p in written)


def test_plot_without_results_fails_clearly(tmp_path, capsys):
    assert plot.main(["--results", str(tmp_path), "--out", str(tmp_path)]) == 1
    assert "no results" in capsys.readouterr().err


@pytest.fixture(scope="module")
def device_check_record(tmp_path_factory, stsb_dir):
    """`bench/device_check.py --smoke`, run once: every section on CPU with tiny shapes."""
    out = tmp_path_factory.mktemp("device_check")
    assert device_check.main(["--smoke", "--out", str(out), "--data", str(stsb_dir)]) == 0
    return json.loads((out / "device_check.json").read_text()), (out / "device_check.md").read_text()


def test_device_check_smoke_runs_every_section(device_check_record):
    record, md = device_check_record
    assert record["smoke"] and "load_avg_1m" in record["environment"] and record["total_s"] > 0
    assert record["command"].startswith("python bench/device_check.py --smoke --out")
    sections = ("mfu", "train", "encode", "attention", "plan")
    assert not [r for s in sections for r in record[s] if "error" in r or "skipped" in r]
    assert [(r["shape"], r["seq_len"]) for r in record["mfu"]] == [("bert-base", 32), ("gemma3-300m", 32)]
    for row in record["mfu"]:
        assert row["packed"] and row["rows"] == 2 and row["dtype"] == "bfloat16" and np.isfinite(row["loss"])
        assert row["mfu"] > 0 and row["xla_flops"] > 0.5 * row["model_flops"]  # XLA counts what we count
        cfg = shapes.family_config(row["shape"], tiny=True)
        assert row["model_flops"] == mfu.train_step_flops(cfg, row["batch"], row["seq_len"], texts_per_row=4)
    assert [r["shape"] for r in record["train"]] == [r["shape"] for r in record["encode"]] == ["bert-base"]
    for row in record["train"]:  # same weights, same pairs, dropout off: the same loss (bf16 in both)
        assert row["torch_pairs_per_s"] > 0 and row["jax_pairs_per_s"] > 0 and row["dtype"] == "bfloat16"
        assert row["jax_eval_loss"] == pytest.approx(row["torch_eval_loss"], rel=0.03)
    for row in record["encode"]:  # same embeddings up to bf16 rounding, same Spearman
        assert row["min_cosine"] > 0.99 and abs(row["torch_spearman"] - row["jax_spearman"]) < 2.0
    assert [r["attention"] for r in record["attention"]] == ["cudnn", "splash"]  # refused on CPU, with the reason
    assert "needs a GPU" in record["attention"][0]["refused"] and "needs a TPU" in record["attention"][1]["refused"]
    planned = record["plan"][0]
    assert planned["plan_rc"] == 0 and planned["measure_rc"] == 0, planned
    assert re.search(r"^(fits|does not fit) \(", planned["plan_output"], re.M) and planned["measured_step_s"] > 0
    assert "compiled program written to" in planned["plan_output"]
    for title in ("MFU of the train step", "Training, siamjax vs", "Encoding, siamjax vs", "Fused attention",
                  "`siamjax plan`"):
        assert title in md


def test_device_check_budget_skips_and_errors_are_recorded():
    budget = device_check.Budget({"s": 0.0})
    assert "budget" in device_check.guarded("s", budget, {"shape": "x"}, lambda: {"a": 1.0})["skipped"]
    failing = device_check.guarded("t", device_check.Budget({"t": 60.0}), {"shape": "x"},
                                   lambda: 1 / 0)
    assert failing["error"].startswith("ZeroDivisionError")
    assert "error: ZeroDivisionError" in device_report.row_line(failing)


def test_device_check_names_what_is_missing_in_one_line(tmp_path, capsys):
    assert device_check.main(["--out", str(tmp_path), "--data", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "sts-train.csv" in err[0] and err[0].startswith("device_check: missing")


def test_every_shape_builds_tiny_and_loads_in_both_libraries(tmp_path, stsb_dir, minilm_dir):
    from sentence_transformers import SentenceTransformer

    import siamjax

    s1, s2, _ = train_throughput.read_stsb(stsb_dir / "sts-test.csv")
    for name in shapes.SHAPES:
        folder = shapes.build_shape(name, tmp_path / name, corpus=s1 + s2, minilm_dir=minilm_dir, tiny=True)
        enc = siamjax.SentenceEncoder.from_pretrained(folder)  # checks the tokenizer fits the embedding
        assert enc.spec.transformer.hidden_size == shapes.TINY_WIDTH
        assert enc.spec.transformer.model_type == shapes.SHAPES[name][0]["model_type"]
        assert SentenceTransformer(str(folder), device="cpu").get_embedding_dimension() == shapes.TINY_WIDTH


def test_fill_vocabulary_keeps_tokenisation(tmp_path, stsb_dir):
    from transformers import AutoTokenizer

    s1, _, _ = train_throughput.read_stsb(stsb_dir / "sts-test.csv")
    tok = shapes.tiny_tokenizer("gemma3", s1)
    tok.save_pretrained(str(tmp_path))
    before = tok(s1[:20])["input_ids"]
    shapes.fill_vocabulary(tmp_path, 4096)
    filled = AutoTokenizer.from_pretrained(str(tmp_path))
    assert len(filled) == 4096 and filled(s1[:20])["input_ids"] == before


def test_flop_count_matches_hand_computed_gemma3_300m():
    cfg = mfu.MODELS["gemma3-300m"]  # 768 wide, 3 heads x 256, 1 kv head, gated MLP 1152, 24 layers
    per_layer = 2 * (2 * 768 * 768 + 2 * 768 * 256 + 3 * 768 * 1152) + 4 * 512 * 768
    assert mfu.forward_flops_per_token(cfg, 512) == 24 * per_layer
    assert mfu.train_step_flops(cfg, 64, 512, texts_per_row=4) == 3 * (2 * 16 * 512 * 24 * per_layer
                                                                       + 2 * 64 * 64 * 768)
