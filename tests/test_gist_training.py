"""GISTEmbed in training: the frozen guide encoder runs inside the jitted step on the same mesh,
its parameters FSDP-sharded by the one rule, with no gradients and no optimizer moments;
CachedGIST (GIST under GradCache) takes the same steps; `loss.guide` from the config."""
import json

import chex
import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding

from siamjax import losses, parallel, train
from siamjax.data.tokenization import tokenize_sides
from siamjax.encoder import BertConfig, SentenceEncoder
from siamjax.losses.gradcache import make_grad_cache_value_and_grad
from siamjax.train import builders, optim, state as train_state, step as train_step
from siamjax.train.config import ConfigError
from siamjax.train.config_file import load_config

from config_fixtures import WORDS, read_jsonl, write_tiny_config

VOCAB = 96


@pytest.fixture(scope="module")
def tokenizer(minilm_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(minilm_dir))


def tiny(tokenizer, hidden, seed, vocab=VOCAB):
    cfg = BertConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=2 * hidden, max_position_embeddings=64)
    return SentenceEncoder.from_config(cfg, tokenizer, seed=seed, max_seq_length=32)


def batches(tokenizer, n, batch=16, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        sides = [[" ".join(rng.choice(WORDS, rng.integers(1, 10))) + f" {s} {i} {k}" for i in range(batch)]
                 for s in range(3)]
        b = tokenize_sides(tokenizer, sides, max_seq_length=32, buckets=(32,))
        b["input_ids"] = b["input_ids"] % VOCAB
        out.append(b)
    return out


def run(student, guide, mesh, data, *, grad_cache: bool):
    """Two GIST steps on `mesh`: losses, final state, and the compiled step's state shardings."""
    loss_fn = losses.get_loss("gist", margin=0.05, mesh=mesh, batch_axes=parallel.BATCH_AXES)
    optimizer = optim.make_optimizer(1e-3)
    frozen = {"guide": guide.params}
    state, shardings = train_state.create_train_state({"encoder": student.params, "loss": {}}, optimizer,
                                                      jax.random.PRNGKey(0), mesh, 64, frozen)
    vg = make_grad_cache_value_and_grad(student.encode_fn, loss_fn, 8, guide_encode_fn=guide.encode_fn) \
        if grad_cache else None
    step = train_step.make_train_step(student.encode_fn, loss_fn, optimizer, dropout=False, value_and_grad_fn=vg,
                                      guide_encode_fn=guide.encode_fn)
    compiled = train_step.compile_train_step(step, shardings, data[0], mesh)
    curve = []
    for batch in data:
        state, metrics = compiled(state, batch)
        curve.append(float(metrics["loss"]))
    return np.array(curve), state, shardings


def test_guide_is_frozen_sharded_and_cached_gist_takes_the_same_steps(tokenizer):
    student, guide = tiny(tokenizer, 32, seed=0), tiny(tokenizer, 48, seed=7)  # guide width 48 != 32
    data = batches(tokenizer, 2)
    mesh = parallel.make_mesh(2, 4)
    with jax.set_mesh(mesh):
        plain, state, shardings = run(student, guide, mesh, data, grad_cache=False)
        cached, cached_state, _ = run(student, guide, mesh, data, grad_cache=True)
    # step 1's loss is GIST of the student's and the guide's embeddings of the batch
    emb = jax.vmap(lambda s: student.encode_fn(student.params, s))(data[0])
    guide_emb = jax.vmap(lambda s: guide.encode_fn(guide.params, s))(data[0])
    np.testing.assert_allclose(plain[0], losses.gist_loss(emb, guide_emb, margin=0.05), rtol=1e-5)
    np.testing.assert_allclose(cached, plain, atol=1e-5, rtol=0)
    chex.assert_trees_all_close(cached_state.params, state.params, atol=5e-5)
    # the guide never changes, is laid out by the FSDP rule, and has no optimizer moments
    chex.assert_trees_all_equal(jax.device_get(state.frozen["guide"]), jax.device_get(guide.params))
    rule = parallel.tree_shardings({"guide": guide.params}, mesh, 64)
    assert jax.tree.map(lambda s: s.spec, shardings.frozen) == jax.tree.map(lambda s: s.spec, rule)
    assert any(isinstance(s, NamedSharding) and any(s.spec) for s in jax.tree.leaves(shardings.frozen))
    n_param_leaves = len(jax.tree.leaves(state.params))
    assert len(jax.tree.leaves(state.opt_state)) < 3 * n_param_leaves  # moments of the trained params only


def write_triplets(path, n):
    rng = np.random.default_rng(0)
    with open(path, "w") as f:
        for i in range(n):
            f.write(json.dumps({k: " ".join(rng.choice(WORDS, rng.integers(2, 10))) + f" {k} {i}"
                                for k in ("anchor", "positive", "negative")}) + "\n")
    return path


def test_gist_from_the_config(tokenizer, minilm_dir, tmp_path):
    guide_dir = tiny(tokenizer, 32, seed=3, vocab=len(tokenizer)).save(tmp_path / "guide")
    data = write_triplets(tmp_path / "train.jsonl", 64)
    config_file = write_tiny_config(tmp_path / "gist.py", tokenizer=minilm_dir, fields={
        "model.max_seq_length": 32, "data.train.path": str(data),
        "data.train.columns": (("anchor", "anchor"), ("positive", "positive"), ("negative", "negative")),
        "loss.name": "gist", "loss.guide": str(guide_dir), "loss.sharded": True,
        "data.pack_length": 48, "train.grad_cache_tokens": 48, "train.num_steps": 2,
        "checkpoint.every_steps": 100, "model.init.num_hidden_layers": 1, "mesh.num_devices": 2,
    })
    result = train.train_and_evaluate(load_config(str(config_file), []), tmp_path / "run")
    assert result.step == 2
    assert all(np.isfinite(r["loss"]) for r in read_jsonl(tmp_path / "run" / "metrics.jsonl") if "loss" in r)
    # a guide with another vocabulary cannot read the model's token ids
    from transformers import BertTokenizerFast

    (tmp_path / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]))
    other = BertTokenizerFast(vocab_file=str(tmp_path / "vocab.txt"))
    tiny(other, 32, seed=3, vocab=len(other)).save(tmp_path / "other_guide")
    config = load_config(str(config_file), [f"--config.loss.guide={tmp_path / 'other_guide'}"])
    with pytest.raises(ConfigError, match="tokenizer vocabulary differs from the model's"):
        builders.build_guide(config.loss, config.model, tiny(tokenizer, 32, seed=0))
