"""Sequence packing: row layout, packed == padded embeddings and gradients, sharded packed training.

Packing must be invisible in the numbers: a text packed with others gets the embedding (and
gradient) it gets alone in a padded row, for BERT and RoBERTa position schemes and every pooling
mode, on one device and split over 8.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from siamjax import losses, parallel
from siamjax.train import optim
from siamjax.train import state as train_state, step as train_step
from siamjax.data import make_train_iterator
from siamjax.data.records import PairDataset
from siamjax.data.tokenization import pack_sides, tokenize_sides
from siamjax.encoder import BertConfig, SentenceEncoder, rows as packing
from siamjax.encoder.pooling import POOLING_MODES

VOCAB = 96


@pytest.fixture(scope="module")
def tokenizer(minilm_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(minilm_dir))


def tiny(tokenizer, *, roberta=False, pooling=("mean",), dense_dim=None, normalize=False):
    extra = dict(position_offset=2, pad_token_id=1, type_vocab_size=1, model_type="roberta") if roberta else {}
    cfg = BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=70, **extra)
    return SentenceEncoder.from_config(cfg, tokenizer, pooling=pooling, dense_dim=dense_dim,
                                       normalize=normalize, seed=3, max_seq_length=32)


def random_ids(n, seed=0, low=2, high=32):
    rng = np.random.default_rng(seed)
    return [list(rng.integers(5, VOCAB, size=int(k))) for k in rng.integers(low, high + 1, size=n)]


# ------------------------------------------------------------------ layout

@pytest.mark.parametrize("row_length", [8, 16, 33])
def test_fit_rows_places_every_text_once_within_capacity(row_length):
    rng = np.random.default_rng(row_length)
    lengths = list(rng.integers(0, row_length + 1, size=60)) + [0, 0, row_length]
    rows = packing.fit_rows(lengths, row_length)
    assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
    for row in rows:
        assert sum(lengths[i] for i in row) <= row_length
        assert len(row) <= packing.num_slots(row_length)
    # best fit decreasing is near the lower bound of total / capacity
    assert len(rows) <= -(-sum(lengths) // row_length) + 2 + len(lengths) // packing.num_slots(row_length)


def test_fit_rows_rejects_a_text_longer_than_the_row():
    with pytest.raises(ValueError, match="text 1 has 9 tokens, more than the packing row length 8"):
        packing.fit_rows([3, 9], 8)


def test_round_rows_ladder():
    assert [packing.round_rows(r) for r in range(1, 18)] == [
        1, 2, 3, 4, 6, 6, 8, 8, 12, 12, 12, 12, 16, 16, 16, 16, 24]
    for r in range(1, 300):
        assert r <= packing.round_rows(r) < 1.5 * r or r <= 4


def test_pack_lays_out_shards_and_text_index(tokenizer):
    ids = random_ids(12, seed=1, high=10)
    batch = packing.pack(ids, row_length=16, num_shards=3, pad_id=0)
    n, b = batch["text_index"].shape
    assert (n, b) == (3, 4) and batch["input_ids"].shape[0] % 3 == 0
    r, slots = batch["input_ids"].shape[0] // 3, packing.num_slots(16)
    for g in range(3):
        for j in range(4):
            row, slot = divmod(int(batch["text_index"][g, j]), slots)
            seg = batch["attention_mask"][g * r + row]
            np.testing.assert_array_equal(batch["input_ids"][g * r + row][seg == slot + 1], ids[g * 4 + j])


def test_plan_calls_covers_a_corpus_with_few_shapes():
    lengths = [int(x) for x in np.random.default_rng(0).integers(2, 120, size=500)]
    row_for = lambda n: 64 if n <= 64 else 128  # noqa: E731
    calls = packing.plan_calls(lengths, row_for, lambda row_length: 4096 // row_length)
    assert sorted(i for _, _, layout in calls for row in layout for i in row) == list(range(500))
    for row_length, rows, layout in calls:
        assert len(layout) <= rows
        assert all(sum(lengths[i] for i in row) <= row_length and row_for(lengths[row[0]]) == row_length
                   for row in layout)
    assert len({c[:2] for c in calls}) <= 4  # one full shape per row length, plus each group's last call


# ------------------------------------------------------------------ packed == padded

@pytest.mark.parametrize("roberta", [False, True], ids=["bert", "roberta"])
@pytest.mark.parametrize("num_shards", [1, 3])
def test_packed_embeddings_and_gradients_equal_padded(tokenizer, roberta, num_shards):
    enc = tiny(tokenizer, roberta=roberta, pooling=POOLING_MODES, dense_dim=24, normalize=True)
    pad_id = 1 if roberta else 0
    ids = random_ids(24, seed=2)
    ref_batch, packed_batch = packing.pad_rows(ids, 32, pad_id), packing.pack(ids, row_length=48, num_shards=num_shards,
                                                                      pad_id=pad_id)
    assert packed_batch["input_ids"].size < ref_batch["input_ids"].size
    w = jax.random.normal(jax.random.key(0), (24, 24))

    def loss(params, batch):
        return jnp.sum(enc.encode_fn(params, batch) * w)

    for fn in (lambda p, b: enc.encode_fn(p, b), jax.grad(loss)):
        want = jax.jit(fn)(enc.params, jax.tree.map(jnp.asarray, ref_batch))
        got = jax.jit(fn)(enc.params, jax.tree.map(jnp.asarray, packed_batch))
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5), got, want)


def test_encode_packs_and_matches_each_text_alone(tokenizer):
    enc = tiny(tokenizer, pooling=("cls", "mean"))
    texts = ["", "a", "hello world"] + [" ".join(["word"] * k) for k in range(1, 40, 3)] * 3
    got = enc.encode(texts, batch_size=4)
    for i, text in enumerate(texts):
        alone = np.asarray(enc.encode_fn(enc.params, enc.pad(enc.token_ids([text]))))[0]
        np.testing.assert_allclose(got[i], alone, rtol=2e-4, atol=2e-5, err_msg=repr(text))
    calls = enc.plan_calls(enc.token_ids(texts), batch_size=4)
    assert sum(r * L for L, r, _ in calls) < len(texts) * 32  # fewer tokens than padding each to 32


# ------------------------------------------------------------------ training

def run(encoder, loss_fn, mesh, batches):
    optimizer = optim.make_optimizer(1e-3)
    state, shardings = train_state.create_train_state({"encoder": encoder.params, "loss": {}}, optimizer,
                                             jax.random.PRNGKey(1), mesh, 64)
    step = train_step.make_train_step(encoder.encode_fn, loss_fn, optimizer, dropout=False)
    curve = []
    for batch in batches:
        compiled = train_step.compile_train_step(step, shardings, batch, mesh)
        state, metrics = compiled(state, batch)
        curve.append(float(metrics["loss"]))
    return np.array(curve), jax.device_get(state.params)


def test_sharded_packed_training_matches_padded_on_one_device(tokenizer):
    """Padded on 1 device == packed on 1 device == packed over 8 devices (2 x 4 data/fsdp)."""
    enc = tiny(tokenizer)
    rng = np.random.default_rng(5)
    sides = [[[" ".join(rng.choice(["cat", "dog", "tree", "blue", "river"], rng.integers(1, 12)))
               for _ in range(16)] for _ in range(2)] for _ in range(3)]
    padded_batches = [tokenize_sides(tokenizer, s, max_seq_length=32, buckets=(32,)) for s in sides]
    packed_1 = [pack_sides(tokenizer, s, max_seq_length=32, row_length=48) for s in sides]
    packed_8 = [pack_sides(tokenizer, s, max_seq_length=32, row_length=48, num_shards=8) for s in sides]
    for b in padded_batches + packed_1 + packed_8:
        b["input_ids"] = b["input_ids"] % VOCAB
    one = parallel.make_mesh(1, 1, devices=jax.devices()[:1])
    eight = parallel.make_mesh(2, 4, devices=jax.devices()[:8])
    ref_curve, ref_params = run(enc, losses.get_loss("mnrl"), one, padded_batches)
    curve_1, params_1 = run(enc, losses.get_loss("mnrl"), one, packed_1)
    with jax.set_mesh(eight):
        curve_8, params_8 = run(enc, losses.get_loss("mnrl", mesh=eight, batch_axes=("data", "fsdp")), eight,
                                packed_8)
    for curve, params in ((curve_1, params_1), (curve_8, params_8)):
        np.testing.assert_allclose(curve, ref_curve, atol=2e-5, rtol=0)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=5e-5), params, ref_params)


def test_pack_sides_checks_row_length(tokenizer):
    with pytest.raises(ValueError, match="data.pack_length 16 < max_seq_length 32"):
        pack_sides(tokenizer, [["a"], ["b"]], max_seq_length=32, row_length=16)


def test_packed_pipeline_processes_agree_on_shapes_and_keep_texts(tokenizer):
    rng = np.random.default_rng(6)
    words = ["cat", "dog", "tree", "blue", "river", "small", "house"]
    s1 = [" ".join(rng.choice(words, rng.integers(1, 25))) + f" {i}" for i in range(64)]
    s2 = [" ".join(rng.choice(words, rng.integers(1, 4))) + f" {i}" for i in range(64)]
    data = PairDataset(name="toy", sides=("s1", "s2"), texts=(s1, s2))
    its = [make_train_iterator(data, tokenizer, global_batch_size=16, max_seq_length=32, seed=0,
                               process_index=p, process_count=2, pack_length=32, num_shards=2, prefetch=0)
           for p in range(2)]
    slots = packing.num_slots(32)
    for _ in range(4):
        batches = [next(it) for it in its]
        assert batches[0]["input_ids"].shape == batches[1]["input_ids"].shape
        assert batches[0]["text_index"].shape == (2, 2, 4)
        for batch in batches:  # every text comes back whole from its shard's rows
            r = batch["input_ids"].shape[1] // 2
            for side in range(2):
                for g in range(2):
                    for j in range(4):
                        row, slot = divmod(int(batch["text_index"][side, g, j]), slots)
                        seg = batch["attention_mask"][side, g * r + row]
                        text = tokenizer.decode(batch["input_ids"][side, g * r + row][seg == slot + 1],
                                                skip_special_tokens=True)
                        assert text.split()[-1].isdigit()
    for it in its:
        it.close()
