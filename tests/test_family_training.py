"""Training with MPNet, DistilBERT and ModernBERT: FSDP over 8 devices (with remat) == 1 device,
packed == padded, bf16 compute, and the `siamjax train` / `siamjax eval sts` verbs on tiny folders.

The folders are the tiny released-config models of `family_fixtures` (mean pooling + Normalize,
max_seq_length 32), loaded through `SentenceEncoder.from_pretrained` as a user would.
"""
import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from siamjax import losses, parallel
from siamjax.cli import main as cli_main
from siamjax.data.tokenization import pack_sides, tokenize_sides
from siamjax.encoder import SentenceEncoder
from siamjax.encoder.layers import SPLASH_INTERPRET
from siamjax.encoder.rows import TOKEN_KEYS
from siamjax.train import optim, state as train_state, step as train_step
from config_fixtures import write_tiny_config
from encoder_fixtures import varied_sentences
from family_fixtures import FAMILIES, build_hf_folder, st_folder

pytestmark = pytest.mark.slow  # several minutes: scheduled first (tests/conftest.py)

MAX_SEQ_LENGTH = 32
BATCH = 16


@pytest.fixture(scope="module")
def sentences(stsb_dir):
    return varied_sentences(stsb_dir, n_sts=160)[:160]


@pytest.fixture(scope="module")
def folders(tmp_path_factory, minilm_dir, sentences):
    root = tmp_path_factory.mktemp("family-train")
    smaller = {"modernbert": {"num_hidden_layers": 3}}  # global, sliding, sliding: compiles faster than 4
    return {f: st_folder(build_hf_folder(f, root / f"{f}-hf", minilm_dir=minilm_dir, corpus=sentences,
                                         **smaller.get(f, {})),
                         root / f, pooling=("mean",), max_seq_length=MAX_SEQ_LENGTH) for f in FAMILIES}


def sides_of(sentences, step: int):
    """A batch of BATCH (anchor, positive) pairs of real sentences of mixed lengths."""
    start = step * 2 * BATCH
    return [sentences[start:start + BATCH], sentences[start + BATCH:start + 2 * BATCH]]


def one_step(encoder, mesh, batch, loss_fn):
    """(loss, updated encoder params) of one AdamW step with dropout on, on `mesh`."""
    optimizer = optim.make_optimizer(1e-3)
    state, shardings = train_state.create_train_state({"encoder": encoder.params, "loss": {}}, optimizer,
                                                      jax.random.PRNGKey(1), mesh, 64)
    step = train_step.make_train_step(encoder.encode_fn, loss_fn, optimizer, dropout=True)
    state, metrics = train_step.compile_train_step(step, shardings, batch, mesh)(state, batch)
    fsdp_sharded = any("fsdp" in str(leaf.sharding.spec) for leaf in jax.tree.leaves(state.params))
    return float(metrics["loss"]), jax.device_get(state.params["encoder"]), fsdp_sharded


@pytest.mark.parametrize("family", FAMILIES)
def test_fsdp8_step_equals_one_device_step(family, folders, sentences):
    """One AdamW step, dropout on: 8 devices with mesh.fsdp=8 and per-layer remat == 1 device.

    The loss is plain MNRL on both meshes (XLA partitions it): the step's sharding, not the
    sharded loss (tested in test_losses_in_batch), is what differs per family."""
    encoder = SentenceEncoder.from_pretrained(folders[family])
    batch = tokenize_sides(encoder.tokenizer, sides_of(sentences, 0), max_seq_length=MAX_SEQ_LENGTH)
    one = parallel.make_mesh(1, 1, devices=jax.devices()[:1])
    eight = parallel.make_mesh(1, 8, devices=jax.devices()[:8])
    loss_1, params_1, _ = one_step(encoder, one, batch, losses.get_loss("mnrl"))
    remat = SentenceEncoder.from_pretrained(folders[family], remat=True)
    with jax.set_mesh(eight):
        loss_8, params_8, sharded = one_step(remat, eight, batch, losses.get_loss("mnrl"))
    assert sharded, "parameters should be split over the fsdp axis"
    assert abs(loss_8 - loss_1) <= 1e-5
    moved = jax.tree.map(lambda a, b: float(np.abs(np.asarray(a) - np.asarray(b)).max()), params_1, encoder.params)
    assert max(jax.tree.leaves(moved)) > 1e-4, "the step should change the weights"
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5, rtol=0), params_8, params_1)


def loss_and_grads(encoder, batch):
    """MNRL over the two sides (encoded with one vmapped call, as the train step does)."""
    loss_fn = losses.get_loss("mnrl")

    def total(params):
        emb_SxBxD = jax.vmap(lambda side: encoder.encode_fn(params, side))({k: batch[k] for k in batch})
        return loss_fn(emb_SxBxD, None, {})

    return jax.jit(jax.value_and_grad(total))(encoder.params)


@pytest.mark.parametrize("family", FAMILIES)
def test_packed_equals_padded(family, folders, sentences):
    """Loss and every gradient: texts packed several to a row (2 shards) == one text per row."""
    encoder = SentenceEncoder.from_pretrained(folders[family])
    sides = sides_of(sentences, 1)
    padded = tokenize_sides(encoder.tokenizer, sides, max_seq_length=MAX_SEQ_LENGTH)
    packed = pack_sides(encoder.tokenizer, sides, max_seq_length=MAX_SEQ_LENGTH, row_length=64, num_shards=2)
    assert packed["input_ids"][0].size < padded["input_ids"][0].size
    loss_pad, grads_pad = loss_and_grads(encoder, {k: padded[k] for k in TOKEN_KEYS})
    loss_pack, grads_pack = loss_and_grads(encoder, packed)
    assert abs(float(loss_pack) - float(loss_pad)) <= 2e-5
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=2e-5, rtol=0), grads_pack, grads_pad)


@pytest.mark.parametrize("family", FAMILIES)
def test_bf16_compute_keeps_float32_weights(family, folders, sentences):
    f32 = SentenceEncoder.from_pretrained(folders[family])
    bf16 = SentenceEncoder.from_pretrained(folders[family], dtype="bfloat16")
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(bf16.params))
    batch = f32.pad(f32.token_ids(sentences[:32]), MAX_SEQ_LENGTH)
    a, b = (np.asarray(jax.jit(m.encode_fn)(m.params, batch)) for m in (f32, bf16))
    assert b.dtype == np.float32
    cos = (a * b).sum(1)  # both L2-normalised
    assert 0.98 <= cos.min() and cos.max() < 1 - 1e-7, "bf16 should be close to, not identical with, f32"


def test_fused_attention_is_refused_where_it_cannot_run(folders):
    with pytest.raises(ValueError, match=r"attention='cudnn' needs a GPU.*'cpu'"):
        SentenceEncoder.from_pretrained(folders["modernbert"], attention="cudnn", dtype="bfloat16")
    with pytest.raises(ValueError, match=r"attention='splash' needs a TPU.*'cpu'"):
        SentenceEncoder.from_pretrained(folders["modernbert"], attention="splash")
    with pytest.raises(ValueError, match=r"attention='flash': use one of auto, xla, cudnn, splash$"):
        SentenceEncoder.from_pretrained(folders["mpnet"], attention="flash")
    # MPNet adds its relative-position bias to the scores: splash has no input for it, even interpreted
    with pytest.raises(ValueError, match=r"attention='splash_interpret' has no input for this model's attention-score"):
        SentenceEncoder.from_pretrained(folders["mpnet"], attention=SPLASH_INTERPRET)


def write_scored_pairs(path, sentences, n):
    with open(path, "w") as f:
        for i in range(n):
            f.write(json.dumps({"s1": sentences[i], "s2": sentences[-1 - i], "score": (i % 5) / 4}) + "\n")
    return path


@pytest.mark.parametrize("family", FAMILIES)
def test_cli_trains_and_evaluates_each_family(family, folders, sentences, tmp_path, capsys):
    """`siamjax train` from the family's folder (bf16 compute, packed batches, dropout on; one
    device, as FSDP is covered above), then `siamjax eval sts` on the exported folder."""
    data = write_scored_pairs(tmp_path / "pairs.jsonl", sentences, 64)
    sts = tmp_path / "sts.jsonl"
    sts.write_text("".join(json.dumps({"a": sentences[i], "b": sentences[i + 1], "gold": (i % 5) + 0.5}) + "\n"
                           for i in range(24)))
    config = write_tiny_config(tmp_path / "cfg.py", tokenizer=folders[family], fields={
        "model.name_or_path": str(folders[family]), "model.max_seq_length": MAX_SEQ_LENGTH,
        "data.train.path": str(data), "data.train.columns": (("s1", "s1"), ("s2", "s2"), ("score", "score")),
        "data.pack_length": 64, "loss.name": "cosent", "train.num_steps": 3, "checkpoint.every_steps": 100,
        "mesh.num_devices": 1, "model.dtype": "bfloat16", "train.dropout": True, "export.dir": "model"})
    assert cli_main(["train", "--config", str(config), "--workdir", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert "exported step 3" in out
    exported = tmp_path / "run" / "model"
    trained = SentenceEncoder.from_pretrained(exported)
    assert trained.spec.transformer.model_type == family
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(trained.params))
    assert cli_main(["eval", "sts", "--model", str(exported), "--data", str(sts), "--columns",
                     "sentence1=a,sentence2=b,score=gold", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "24 pairs" in out and re.search(r"^cosine\s+-?[\d.]+\s+-?[\d.]+$", out, re.M), out
