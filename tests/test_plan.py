"""`siamjax plan`: the planned per-device memory and collectives of three tiny runs on 1, 2 and
8 fake devices, against the same step run for real.

Each config/mesh is compiled once, by the plan (from shapes only). The real run then builds
the state the way `siamjax train` does (weights loaded or initialised, `create_train_state`),
tokenises a real worst-case batch (texts longer than max_seq_length) and runs the plan's
compiled executable on them: it accepts them only if the plan's shapes, dtypes and shardings
are the run's. Measured per device = the bytes of every live buffer the step holds on that
device after it ran (new state, batch, metrics: `addressable_shards[...].data.nbytes`) plus
XLA's temporary buffer of the executable that ran (`memory_analysis().temp_size_in_bytes`; CPU
devices report no allocator statistics, and RSS growth is noise at these sizes).
"""
import dataclasses
import pathlib

import numpy as np
import jax
import pytest

from siamjax.cli import main as cli_main
from siamjax.data.tokenization import pack_sides, tokenize_sides
from siamjax.encoder import SentenceEncoder
from siamjax.encoder.llama import LlamaConfig
from siamjax.parallel import batch_shard_count, make_mesh, to_global_array
from siamjax.train import builders
from siamjax.train.accelerators import get_accelerator
from siamjax.train.config import default_config
from siamjax.train.plan import plan_run, planned_batch, report, speed_advice
from siamjax.train.state import create_train_state
from transformers import AutoTokenizer

from config_fixtures import WORDS

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs"
MESHES = {1: (1, 1), 2: (2, 1), 8: (1, 8)}  # devices -> (data, fsdp): one device, data-parallel, FSDP


def _tiny(minilm_dir):
    c = default_config()
    c.model.init.tokenizer = str(minilm_dir)
    c.model.init.update(dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                             max_position_embeddings=64))
    c.model.max_seq_length = 32
    c.data.buckets = (32,)
    c.train.batch_size = 16
    c.mesh.fsdp_min_size = 256
    return c


@pytest.fixture(scope="module")
def configs(minilm_dir, tmp_path_factory):
    """Three runs: MNRL pairs; triplets with GradCache, remat and the sharded loss; a bf16
    Qwen3-shaped decoder on packed rows with GradCache over tokens."""
    pairs = _tiny(minilm_dir)
    triplets = _tiny(minilm_dir)
    triplets.data.train.columns = (("anchor", "a"), ("positive", "p"), ("negative", "n"))
    triplets.train.grad_cache_chunk = 8
    triplets.model.remat = True
    triplets.loss.sharded = True
    # GradCache on data > 1 draws dropout per data shard (its key folded with the shard index),
    # so with dropout the loss would depend on the mesh; without it, 1, 2 and 8 devices agree
    triplets.train.dropout = False
    folder = tmp_path_factory.mktemp("qwen3")
    tokenizer = AutoTokenizer.from_pretrained(str(minilm_dir))
    qwen = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=64,
                       model_type="qwen3", pad_token_id=tokenizer.pad_token_id)
    SentenceEncoder.from_config(qwen, tokenizer, pooling="lasttoken", normalize=True, max_seq_length=32).save(folder)
    decoder = _tiny(minilm_dir)
    decoder.model.name_or_path = str(folder)
    decoder.model.update(dict(dtype="bfloat16", param_dtype="bfloat16"))
    decoder.data.pack_length = 64
    decoder.train.grad_cache_tokens = 64
    return {"pairs": pairs, "triplets": triplets, "decoder": decoder}


def _real_batch(config, tokenizer, mesh):
    """A worst-case batch through the training tokenisers: every text longer than max_seq_length."""
    rng = np.random.default_rng(0)
    sides = len(config.data.train.columns)
    texts = [[" ".join(rng.choice(WORDS, 60)) for _ in range(config.train.batch_size)] for _ in range(sides)]
    common = dict(max_seq_length=config.model.max_seq_length)
    if config.data.pack_length:
        batch = pack_sides(tokenizer, texts, row_length=config.data.pack_length, num_shards=batch_shard_count(mesh),
                           row_multiple=config.train.grad_cache_tokens // config.data.pack_length, **common)
    else:
        batch = tokenize_sides(tokenizer, texts, buckets=tuple(config.data.buckets), **common)
    batch["text_ids"] = np.arange(sides * config.train.batch_size, dtype=np.int32).reshape(sides, -1)
    return to_global_array(batch, mesh)


def _run(config, compiled, devices, tokenizer):
    """Runs the compiled step on the state `siamjax train` builds; (bytes per device, loss)."""
    mesh = make_mesh(config.mesh.data, config.mesh.fsdp, devices=devices)
    with jax.set_mesh(mesh):
        encoder = builders.build_encoder(config.model, config.seed)
        parts = builders.build_parts(config, mesh, total_steps=1, num_labels={builders.RUN_LOSS: None},
                                     encoder=encoder)
        state, _ = create_train_state(parts.params, parts.optimizer, parts.dropout_rng, mesh,
                                      config.mesh.fsdp_min_size, parts.frozen)
        batch = _real_batch(config, tokenizer, mesh)
        assert {k: v.shape for k, v in batch.items()} == {k: v.shape for k, v in
                                                         planned_batch(config, batch_shard_count(mesh)).items()}
        state, metrics = compiled(state, batch)
        jax.block_until_ready(metrics)
    live = {d: 0 for d in devices}
    for leaf in jax.tree.leaves((state, batch, metrics)):
        for shard in leaf.addressable_shards:
            live[shard.device] += shard.data.nbytes
    temp = compiled.memory_analysis().temp_size_in_bytes
    return [live[d] + temp for d in devices], float(metrics["loss"])


def _param_bytes(state, sharded: bool) -> int:
    """Full (unsharded) float32 bytes of the trained parameters' gradients (XLA:CPU reduces bf16
    in float32; TPU/GPU would move half for bf16 weights): all of them, or (`sharded`) those the
    FSDP rule shards, less the word-embedding table: XLA partitions its lookup (and the
    gradient's scatter) by vocabulary rows, so the table is never gathered and its gradient is
    never reduced."""
    total = 0
    for path, leaf in jax.tree_util.tree_flatten_with_path(state.params)[0]:
        if sharded and (not any(leaf.sharding.spec) or "word_embeddings" in jax.tree_util.keystr(path)
                        or "embed_tokens" in jax.tree_util.keystr(path)):
            continue
        total += int(np.prod(leaf.shape)) * 4
    return total


def _check_collectives(plan, config, data: int, fsdp: int, name: str) -> None:
    """The analytic counts. data=n: every gradient all-reduced once per step, 2 (n-1)/n x its
    bytes (+ a few scalars), however many GradCache chunks (each data shard sums its chunks'
    gradients locally). fsdp=n: every sharded weight's gradient reduce-scattered, (n-1)/n x its
    bytes (+ < 5%: the loss's embeddings), once per GradCache chunk (each chip keeps only its
    shard of the weights, so it reduces each chunk's gradient: c chunks move c times the bytes),
    and no full-gradient all-reduce; every sharded weight all-gathered at least once ((n-1)/n x
    its bytes; XLA adds activation reshards on top)."""
    sent = plan.collective_bytes
    chunk = config.train.grad_cache_chunk
    tokens = config.train.grad_cache_tokens
    if chunk:
        chunks = config.train.batch_size // chunk
    elif tokens:
        chunks = plan.batch_shapes["input_ids"][1] // (data * fsdp) // (tokens // config.data.pack_length)
    else:
        chunks = 1
    if data > 1:
        expected = 2 * (data - 1) / data * _param_bytes(plan.state, sharded=False)
        assert expected <= sent["all-reduce"] <= 1.001 * expected, (name, sent, expected)
        assert sent["all-gather"] + sent["reduce-scatter"] <= 0.01 * expected, (name, sent, expected)
    if fsdp > 1:
        full = chunks * _param_bytes(plan.state, sharded=True)
        scattered = sent["reduce-scatter"] * fsdp / (fsdp - 1)
        assert full <= scattered <= 1.05 * chunks * _param_bytes(plan.state, sharded=False), (name, sent, full)
        assert sent["all-reduce"] * fsdp / (2 * (fsdp - 1)) <= 0.05 * full, (name, sent, full)
        assert sent["all-gather"] >= (fsdp - 1) / fsdp * full, (name, sent, full)


def _check_speed_advice(plan, config):
    """The all-gather tip appears exactly when the interconnect bounds a GradCache step under FSDP."""
    bound = dataclasses.replace(plan, step_seconds={"compute": 1.0, "hbm": 1.0, "interconnect": 2.0, "estimate": 2.0})
    tip = speed_advice(bound, config)
    cached = config.train.grad_cache_chunk or config.train.grad_cache_tokens
    if plan.mesh[1] > 1 and cached:
        assert f"={2 * cached} (half the chunks)" in tip, tip
    else:
        assert tip is None
    assert speed_advice(dataclasses.replace(bound, step_seconds={**bound.step_seconds, "compute": 3.0}), config) is None


@pytest.mark.parametrize("name", ["pairs", "triplets", "decoder"])
def test_plan_matches_the_run(name, configs, minilm_dir):
    config = configs[name]
    tokenizer = AutoTokenizer.from_pretrained(str(minilm_dir))
    losses = []
    for count, (data, fsdp) in MESHES.items():
        config.mesh.data, config.mesh.fsdp = data, fsdp
        devices = jax.devices()[:count]
        plan = plan_run(config, get_accelerator("v5e"), devices)
        text = report(plan, config)
        assert "fits" in text and f"data={data} x fsdp={fsdp}" in text
        measured, loss = _run(config, plan.compiled, devices, tokenizer)
        losses.append(loss)
        for device_bytes in measured:
            assert abs(plan.peak_bytes - device_bytes) <= 0.15 * device_bytes, (name, count, plan.peak_bytes, measured)
        _check_collectives(plan, config, data, fsdp, name)
        _check_speed_advice(plan, config)
    np.testing.assert_allclose(losses, losses[0], rtol=2e-2 if name == "decoder" else 1e-4)


def test_cli_refuses_more_devices_than_jax_started_with(capsys):
    """JAX fixes the fake device count when it starts: a plan for more says so (exit 2), before compiling."""
    assert len(jax.devices()) == 8  # JAX has started (conftest asks for 8)
    code = cli_main(["plan", "--config", str(CONFIGS / "stsb_minilm.py"), "--devices", "16", "--accelerator", "v5e",
                     "--compiler", "cpu"])
    assert code == 2
    assert "--devices 16: JAX already started with 8 CPU devices" in capsys.readouterr().err
