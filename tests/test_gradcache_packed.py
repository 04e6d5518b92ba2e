"""GradCache over packed rows: chunks of whole packed rows (measured in tokens) give the
gradients of plain backprop through the unpacked, padded batch; and the pod presets train with
packing + GradCache + the sharded loss together (tiny model override)."""
import json
import pathlib

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding

from siamjax import losses, parallel, train
from siamjax.data.tokenization import pack_sides, tokenize_sides
from siamjax.encoder import BertConfig, SentenceEncoder
from siamjax.losses.gradcache import grad_cache_value_and_grad
from siamjax.parallel.hlo import program_stats
from siamjax.train.config_file import load_config

from config_fixtures import WORDS, read_jsonl

VOCAB = 96
CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs"


@pytest.fixture(scope="module")
def tokenizer(minilm_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(minilm_dir))


def random_sides(n_sides, batch, seed):
    rng = np.random.default_rng(seed)
    return [[" ".join(rng.choice(WORDS, rng.integers(1, 14))) + f" {s} {i}" for i in range(batch)]
            for s in range(n_sides)]


def test_packed_grad_cache_equals_padded_full_batch_on_eight_devices(tokenizer):
    """(anchor, positive, negative) x 64, packed per device into 48-token rows, GradCache chunks
    of 96 tokens (2 rows per device), ring MNRL on a 2 x 4 mesh with FSDP-sharded weights ==
    plain autodiff through the padded batch on one device, loss and every parameter gradient
    within 2e-5. No full gradient is all-reduced: the compiled step all-reduces each device's
    gradient shard over 'data' once, and per chunk only the weights too small to shard over
    'fsdp' (the sharded ones are reduce-scattered)."""
    cfg = BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=64)
    enc = SentenceEncoder.from_config(cfg, tokenizer, pooling=("mean",), dense_dim=16, normalize=True, seed=1,
                                      max_seq_length=32)
    sides = random_sides(3, 64, seed=0)
    padded = tokenize_sides(tokenizer, sides, max_seq_length=32, buckets=(32,))
    packed = pack_sides(tokenizer, sides, max_seq_length=32, row_length=48, num_shards=8, row_multiple=2)
    for batch in (padded, packed):
        batch["input_ids"] = batch["input_ids"] % VOCAB
    rows_per_shard = packed["input_ids"].shape[1] // 8
    assert rows_per_shard % 2 == 0 and rows_per_shard >= 4  # at least two chunks per device
    assert packed["input_ids"].size < padded["input_ids"].size

    def full(params):
        emb = jax.vmap(lambda side: enc.encode_fn(params, side))(padded)
        return losses.get_loss("mnrl", hardness_mode="all_negatives", hardness_strength=3.0)(emb, None, {})

    want = jax.jit(jax.value_and_grad(full))(enc.params)
    mesh = parallel.make_mesh(2, 4)
    loss_fn = losses.get_loss("mnrl", hardness_mode="all_negatives", hardness_strength=3.0, ring=True,
                              mesh=mesh, batch_axes=parallel.BATCH_AXES)
    sharded = {k: jax.device_put(v, NamedSharding(mesh, parallel.batch_spec(k, v.ndim))) for k, v in packed.items()}
    shardings = parallel.tree_shardings(enc.params, mesh, min_size=256)
    params = jax.device_put(enc.params, shardings)
    with jax.set_mesh(mesh):
        step = jax.jit(lambda p, b: grad_cache_value_and_grad(enc.encode_fn, loss_fn, p, b, chunk_tokens=96)[:2],
                       out_shardings=(parallel.replicated(mesh), shardings)).lower(params, sharded).compile()
        loss, grads = step(params, sharded)
    chex.assert_trees_all_close((loss, grads), want, rtol=0, atol=2e-5)
    leaves = list(zip(jax.tree.leaves(enc.params), jax.tree.leaves(shardings)))
    shard_bytes = sum(x.nbytes // (4 if any(s.spec) else 1) for x, s in leaves)  # each device's gradient
    small = sum(x.nbytes for x, s in leaves if not any(s.spec))
    chunks = rows_per_shard // 2
    bound = 2 * (2 - 1) / 2 * shard_bytes + chunks * 2 * (4 - 1) / 4 * small + 64  # + the loss's scalars
    all_reduce = program_stats(step.as_text(), 8).collective_bytes["all-reduce"]
    full = 2 * 7 / 8 * sum(x.nbytes for x, _ in leaves)
    assert all_reduce <= bound < 0.5 * full, (all_reduce, bound, full)


def test_packed_chunking_errors(tokenizer):
    batch = pack_sides(tokenizer, random_sides(2, 8, seed=1), max_seq_length=32, row_length=48, num_shards=2)
    encode = lambda p, b, *, rng=None: jnp.zeros((8, 4))  # noqa: E731
    loss_fn = losses.get_loss("mnrl")
    with pytest.raises(ValueError, match="chunk_tokens=50 is not divisible by packed row length=48"):
        grad_cache_value_and_grad(encode, loss_fn, {"w": jnp.ones(3)}, batch, chunk_tokens=50)
    with pytest.raises(ValueError, match=r"is packed \(has text_index\): give chunk_tokens, not chunk_size"):
        grad_cache_value_and_grad(encode, loss_fn, {"w": jnp.ones(3)}, batch, 4)
    big = batch["input_ids"].shape[1] // 2 + 1
    with pytest.raises(ValueError, match="packed rows per shard"):
        grad_cache_value_and_grad(encode, loss_fn, {"w": jnp.ones(3)}, batch, chunk_tokens=48 * big)


def write_triplets(path, n, seed):
    rng = np.random.default_rng(seed)
    with open(path, "w") as f:
        for i in range(n):
            texts = [" ".join(rng.choice(WORDS, rng.integers(2, 14))) + f" {k} {i}" for k in range(3)]
            f.write(json.dumps(dict(zip(("anchor", "positive", "negative"), texts))) + "\n")
    return path


TINY_POD = {  # preset -> overrides that keep the preset's packing + GradCache + sharded loss
    "tpu_pod.py:v4-8": [],
    "gpu_cluster.py": [],
}


@pytest.mark.parametrize("preset", sorted(TINY_POD))
def test_pod_presets_train_packed_with_grad_cache(preset, minilm_dir, tmp_path):
    config = load_config(str(CONFIGS / preset), [])
    assert config.data.pack_length > 0 and config.train.grad_cache_tokens > 0 and config.loss.sharded
    assert not config.train.grad_cache_chunk
    data = write_triplets(tmp_path / "triplets.jsonl", 96, seed=3)
    config = load_config(str(CONFIGS / preset), [
        "--config.model.name_or_path=", f"--config.model.init.tokenizer={minilm_dir}",
        "--config.model.init.hidden_size=32", "--config.model.init.num_hidden_layers=1",
        "--config.model.init.num_attention_heads=2", "--config.model.init.intermediate_size=64",
        "--config.model.max_seq_length=32", "--config.data.pack_length=48", "--config.train.grad_cache_tokens=96",
        "--config.data.train.tfds.builder=", f"--config.data.train.path={data}", "--config.data.nli_to_triplets=false",
        "--config.data.train.columns=(('anchor','anchor'),('positive','positive'),('negative','negative'))",
        "--config.eval.sts.tfds.builder=", "--config.train.batch_size=64", "--config.train.num_steps=2",
        "--config.train.progress_bar=false", "--config.train.log_every_steps=1", "--config.mesh.fsdp_min_size=256",
        "--config.checkpoint.every_steps=100", "--config.optim.warmup_steps=1", *TINY_POD[preset]])
    result = train.train_and_evaluate(config, tmp_path / "run")
    assert result.step == 2
    steps = [r for r in read_jsonl(tmp_path / "run" / "metrics.jsonl") if "loss" in r]
    assert len(steps) == 2 and all(np.isfinite(r["loss"]) for r in steps)
