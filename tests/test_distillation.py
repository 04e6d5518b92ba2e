"""Distillation end to end: a data column with the 'teacher' role (numbers or JSON lists) becomes
float32 `labels [B, ...]`, split over the batch devices like any per-pair array, and drives the
distillation losses (margin MSE, KL over score lists, embedding MSE with a learnable projection)."""
import json

import jax
import numpy as np
import pytest

from siamjax import losses, parallel
from siamjax.data import make_train_iterator, read_pairs
from siamjax.data.records import BadRowError
from siamjax.encoder import BertConfig, SentenceEncoder
from siamjax.train import optim, state as train_state, step as train_step

from config_fixtures import WORDS

VOCAB = 96


def test_teacher_column_reads_numbers_and_lists(tmp_path):
    rows = [{"q": "a b", "p": "c d", "n": "e f", "t": [0.5, -1.0]}, {"q": "g", "p": "h", "n": "i", "t": [2, 3]}]
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = read_pairs(jsonl, columns={"q": "q", "p": "p", "n": "n", "teacher": "t"})
    assert data.label_kind == "teacher" and data.labels.dtype == np.float32 and data.labels.shape == (2, 2)
    np.testing.assert_array_equal(data[1].label, [2.0, 3.0])
    csv = tmp_path / "d.csv"
    csv.write_text('q,p,margin\na b,c d,0.25\ne,f,"[1.5]"\n')
    with pytest.raises(BadRowError, match=r"d.csv:3: teacher value has shape \(1,\), the first row's has \(\)"):
        read_pairs(csv, columns={"q": "q", "p": "p", "teacher": "margin"})
    csv.write_text('q,p,margin\na b,c d,0.25\ne,f,oops\ng,h,-2\n')
    with pytest.raises(BadRowError, match=r"d.csv:3: teacher 'oops' is not a number or a JSON list"):
        read_pairs(csv, columns={"q": "q", "p": "p", "teacher": "margin"})
    skipped = read_pairs(csv, columns={"q": "q", "p": "p", "teacher": "margin"}, on_bad_row="skip")
    np.testing.assert_array_equal(skipped.labels, np.float32([0.25, -2.0]))


def test_projection_params_are_trainable_loss_params():
    lp = losses.init_loss_params("embed_distill", 6, None, jax.random.key(0), projection_dim=9)
    assert lp["projection"]["kernel"].shape == (6, 9) and lp["projection"]["bias"].shape == (9,)
    assert losses.init_loss_params("mse", 6) == {}
    emb, teacher = jax.random.normal(jax.random.key(1), (2, 4, 6)), jax.random.normal(jax.random.key(2), (4, 9))
    g = jax.grad(losses.get_loss("mse", projection_dim=9), argnums=2)(emb, teacher, lp)
    assert float(np.abs(g["projection"]["kernel"]).sum()) > 0
    with pytest.raises(ValueError, match="student width 6 != teacher width 9; set projection_dim=9"):
        losses.get_loss("mse")(emb, teacher, {})


def write_scored_triplets(path, n, seed=0):
    """(query, positive, negative) with the teacher's scores of (positive, negative)."""
    rng = np.random.default_rng(seed)
    with open(path, "w") as f:
        for i in range(n):
            texts = [" ".join(rng.choice(WORDS, rng.integers(2, 10))) + f" {k} {i}" for k in range(3)]
            f.write(json.dumps({"q": texts[0], "p": texts[1], "n": texts[2],
                                "scores": [float(rng.normal(3, 1)), float(rng.normal(0, 1))]}) + "\n")
    return path


def test_kl_distillation_on_eight_devices_equals_one(minilm_dir, tmp_path):
    """Batches from the real pipeline (teacher scores [B, 2] as labels), KL distillation with a
    2 x 4 mesh equals one device: the teacher labels split over the devices with their rows."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(minilm_dir))
    data = read_pairs(write_scored_triplets(tmp_path / "train.jsonl", 64),
                      columns={"q": "q", "p": "p", "n": "n", "teacher": "scores"})
    iterator = make_train_iterator([data], tokenizer, global_batch_size=16, max_seq_length=32, buckets=(32,),
                                   prefetch=0)
    batches = [next(iterator) for _ in range(2)]
    iterator.close()
    assert batches[0]["labels"].shape == (16, 2) and batches[0]["labels"].dtype == np.float32
    for b in batches:
        b["input_ids"] = b["input_ids"] % VOCAB
        del b["dataset"], b["text_ids"]  # as siamjax train does: the dataset picks the step, and text
        # ids reach only losses that mask false negatives (infonce/mnrl)
    cfg = BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=64)
    encoder = SentenceEncoder.from_config(cfg, tokenizer, seed=0, max_seq_length=32)
    loss_fn = losses.get_loss("distill_kl_div", temperature=2.0)
    curves = {}
    for shape in ((1, 1), (2, 4)):
        mesh = parallel.make_mesh(*shape, devices=jax.devices()[:shape[0] * shape[1]])
        optimizer = optim.make_optimizer(1e-3)
        state, shardings = train_state.create_train_state({"encoder": encoder.params, "loss": {}}, optimizer,
                                                          jax.random.PRNGKey(0), mesh, 64)
        step = train_step.compile_train_step(train_step.make_train_step(encoder.encode_fn, loss_fn, optimizer,
                                                                        dropout=False), shardings, batches[0], mesh)
        curves[shape] = []
        for batch in batches:
            state, metrics = step(state, batch)
            curves[shape].append(float(metrics["loss"]))
    assert np.all(np.isfinite(curves[(1, 1)]))
    np.testing.assert_allclose(curves[(2, 4)], curves[(1, 1)], atol=1e-5, rtol=0)
