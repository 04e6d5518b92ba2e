"""TrainState, the jitted train step, the optimizer and their sharded equivalence (8 CPU devices)."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from siamjax import losses, parallel
from siamjax.train import optim
from siamjax.train import state as train_state, step as train_step
from siamjax.encoder import BertConfig, SentenceEncoder
from siamjax.encoder.rows import TOKEN_KEYS
from siamjax.losses.gradcache import make_grad_cache_value_and_grad

VOCAB = 96


@pytest.fixture(scope="module")
def tiny_encoder(minilm_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(minilm_dir))
    bert = BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                      intermediate_size=64, max_position_embeddings=64)
    return SentenceEncoder.from_config(bert, tokenizer, seed=0)


def make_batches(n, batch=16, length=16, sides=2, seed=0, labels=True):
    """n random token batches [S, B, L] with ragged masks (and float labels [B])."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        lengths = rng.integers(3, length + 1, size=(sides, batch))
        mask = (np.arange(length)[None, None, :] < lengths[..., None]).astype(np.int32)
        ids = rng.integers(1, VOCAB, size=(sides, batch, length)).astype(np.int32) * mask
        out.append({"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)})
        if labels:
            out[-1]["labels"] = rng.random(batch).astype(np.float32)
    return out


def run_steps(encoder, loss_fn, mesh, batches, *, dropout=False, value_and_grad_fn=None, lr=1e-3, warmup=2):
    """Loss per step and final params of a short run on `mesh`."""
    schedule = optim.make_schedule(lr, 10, warmup)
    optimizer = optim.make_optimizer(schedule)
    params = {"encoder": encoder.params, "loss": {}}
    state, shardings = train_state.create_train_state(params, optimizer, jax.random.PRNGKey(1), mesh, 64)
    step = train_step.make_train_step(encoder.encode_fn, loss_fn, optimizer, schedule=schedule,
                              dropout=dropout, value_and_grad_fn=value_and_grad_fn)
    compiled = train_step.compile_train_step(step, shardings, batches[0], mesh)
    curve = []
    for batch in batches:
        state, metrics = compiled(state, batch)
        curve.append(float(metrics["loss"]))
    return np.array(curve), jax.device_get(state.params), state


def test_golden_one_step_matches_manual_update(tiny_encoder):
    """One step = AdamW(clip(grad of loss(vmap(encode)))) computed by hand."""
    mesh = parallel.make_mesh(1, 1, devices=jax.devices()[:1])
    loss_fn = losses.get_loss("cosent")
    batch = make_batches(1)[0]
    _, params_after, _ = run_steps(tiny_encoder, loss_fn, mesh, [batch], warmup=0)

    schedule = optim.make_schedule(1e-3, 10, 0)
    optimizer = optim.make_optimizer(schedule)
    params = {"encoder": tiny_encoder.params, "loss": {}}

    def total(p):
        sides = {k: batch[k] for k in TOKEN_KEYS}
        emb = jax.vmap(lambda s: tiny_encoder.encode_fn(p["encoder"], s))(sides)
        return loss_fn(emb, batch["labels"], p["loss"])

    @jax.jit  # one program: op by op, each primitive would compile on its own
    def manual_update(params):
        updates, _ = optimizer.update(jax.grad(total)(params), optimizer.init(params), params)
        return optax.apply_updates(params, updates)

    expected = manual_update(params)
    assert max(jax.tree.leaves(jax.tree.map(lambda a, b: float(np.abs(np.asarray(a) - np.asarray(b)).max()),
                                            expected, params))) > 1e-4
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), params_after, expected)


def test_two_steps_move_params_and_report_metrics(tiny_encoder):
    mesh = parallel.make_mesh(1, 1, devices=jax.devices()[:1])
    curve, params, state = run_steps(tiny_encoder, losses.get_loss("cosent"), mesh, make_batches(3))
    assert np.all(np.isfinite(curve)) and int(state.step) == 3
    moved = jax.tree.map(lambda a, b: float(np.abs(np.asarray(a) - np.asarray(b)).max()),
                         params["encoder"], tiny_encoder.params)
    assert max(jax.tree.leaves(moved)) > 0


@pytest.mark.parametrize("loss_name", ["cosent", "mnrl_sharded"])
def test_sharded_training_matches_one_device(tiny_encoder, loss_name):
    """Same run on 1 device, 8 data-parallel devices and a 2 x 4 data/fsdp mesh: same losses."""
    batches = make_batches(4, batch=16, labels=loss_name == "cosent")
    curves, finals = {}, {}
    for shape in [(1, 1), (8, 1), (2, 4)]:
        mesh = parallel.make_mesh(*shape, devices=jax.devices()[: shape[0] * shape[1]])
        if loss_name == "cosent":
            loss_fn = losses.get_loss("cosent")
        else:
            loss_fn = losses.get_loss("mnrl", mesh=mesh, batch_axes=("data", "fsdp"))
        with jax.set_mesh(mesh):
            curves[shape], finals[shape], state = run_steps(tiny_encoder, loss_fn, mesh, batches, dropout=True)
        if shape == (2, 4):
            specs = {s.spec for s in jax.tree.leaves(jax.tree.map(lambda x: x.sharding, state.opt_state))}
            assert any("fsdp" in str(spec) for spec in specs), "Adam moments should be born FSDP-sharded"
    for shape in [(8, 1), (2, 4)]:
        np.testing.assert_allclose(curves[shape], curves[(1, 1)], atol=1e-5, rtol=0)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=2e-5), finals[shape], finals[(1, 1)])


def test_state_is_donated_and_born_sharded(tiny_encoder):
    mesh = parallel.make_mesh(2, 4)
    optimizer = optim.make_optimizer(1e-3)
    state, shardings = train_state.create_train_state({"encoder": tiny_encoder.params, "loss": {}}, optimizer,
                                             jax.random.PRNGKey(0), mesh, 64)
    emb = state.params["encoder"]["encoder"]["word_embeddings"]["embedding"]
    assert emb.sharding.spec == P("fsdp", None)  # 96 x 32: largest dim on fsdp
    mu = state.opt_state[1][0].mu["encoder"]["encoder"]["word_embeddings"]["embedding"]
    assert mu.sharding.spec == P("fsdp", None)
    step = train_step.make_train_step(tiny_encoder.encode_fn, losses.get_loss("cosent"), optimizer)
    batch = make_batches(1)[0]
    new_state, _ = train_step.compile_train_step(step, shardings, batch, mesh)(state, batch)
    assert emb.is_deleted(), "the old state must be donated to the step"
    assert new_state.params["encoder"]["encoder"]["word_embeddings"]["embedding"].sharding.spec == P("fsdp", None)
    # the encoder object still owns its own (undonated) weights
    assert not jax.tree.leaves(tiny_encoder.params)[0].is_deleted()


def test_dropout_is_deterministic_per_step(tiny_encoder):
    mesh = parallel.make_mesh(1, 1, devices=jax.devices()[:1])
    batches = make_batches(2)
    a, _, _ = run_steps(tiny_encoder, losses.get_loss("cosent"), mesh, batches, dropout=True)
    b, _, _ = run_steps(tiny_encoder, losses.get_loss("cosent"), mesh, batches, dropout=True)
    c, _, _ = run_steps(tiny_encoder, losses.get_loss("cosent"), mesh, batches, dropout=False)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_grad_cache_step_matches_plain_step(tiny_encoder):
    mesh = parallel.make_mesh(1, 1, devices=jax.devices()[:1])
    loss_fn = losses.get_loss("mnrl")
    batches = make_batches(2, batch=16, labels=False)
    plain, p_plain, _ = run_steps(tiny_encoder, loss_fn, mesh, batches)
    vg = make_grad_cache_value_and_grad(tiny_encoder.encode_fn, loss_fn, 4)
    cached, p_cached, _ = run_steps(tiny_encoder, loss_fn, mesh, batches, value_and_grad_fn=vg)
    np.testing.assert_allclose(cached, plain, atol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), p_cached, p_plain)


def test_bf16_compute_keeps_float32_master_weights(minilm_dir, tiny_encoder):
    bf16 = SentenceEncoder.from_config(tiny_encoder.spec.transformer, tiny_encoder.tokenizer, seed=0, dtype="bfloat16")
    mesh = parallel.make_mesh(1, 1, devices=jax.devices()[:1])
    batches = make_batches(2)
    curve16, params16, _ = run_steps(bf16, losses.get_loss("cosent"), mesh, batches)
    curve32, _, _ = run_steps(tiny_encoder, losses.get_loss("cosent"), mesh, batches)
    assert all(x.dtype == np.float32 for x in jax.tree.leaves(params16))
    np.testing.assert_allclose(curve16, curve32, atol=0.1)
    assert not np.array_equal(curve16, curve32)


# ----------------------------------------------------------------------------- optimizer
def test_schedule_warmup_then_linear_and_cosine_decay():
    lin = optim.make_schedule(1.0, 100, 10, "linear")
    assert float(lin(0)) == 0.0 and float(lin(5)) == pytest.approx(0.5)
    assert float(lin(10)) == pytest.approx(1.0) and float(lin(55)) == pytest.approx(0.5)
    assert float(lin(100)) == pytest.approx(0.0)
    cos = optim.make_schedule(1.0, 110, 10, "cosine", end_lr=0.1)
    assert float(cos(60)) == pytest.approx(0.55, abs=1e-6) and float(cos(110)) == pytest.approx(0.1)
    assert float(optim.make_schedule(2.0, 10, 0, "constant")(7)) == 2.0
    with pytest.raises(ValueError, match="unknown schedule"):
        optim.make_schedule(1.0, 10, 1, "step")


def test_weight_decay_mask_excludes_biases_and_layernorm(tiny_encoder):
    mask = optim.weight_decay_mask({"encoder": tiny_encoder.params, "loss": {"log_scale": jnp.zeros(())}})
    flat = {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_flatten_with_path(mask)[0]}
    decayed = {k for k, v in flat.items() if v}
    assert all("kernel" in k or "embedding" in k for k in decayed)
    assert not any("norm" in k or k.endswith("['bias']") for k in decayed)
    assert any("query']['kernel" in k for k in decayed) and any("word_embeddings" in k for k in decayed)
    assert not flat["['loss']['log_scale']"]


def test_weight_decay_follows_mask_and_clipping_bounds_update():
    params = {"dense": {"kernel": jnp.ones((4, 4)), "bias": jnp.ones((4,))},
              "norm": {"scale": jnp.ones((4,))}}
    zero = jax.tree.map(jnp.zeros_like, params)
    opt = optim.make_optimizer(0.1, weight_decay=0.5, clip_norm=1.0)
    updates, _ = opt.update(zero, opt.init(params), params)
    np.testing.assert_allclose(updates["dense"]["kernel"], -0.1 * 0.5)  # decayed
    np.testing.assert_allclose(updates["dense"]["bias"], 0.0)
    np.testing.assert_allclose(updates["norm"]["scale"], 0.0)
    clip = optax.clip_by_global_norm(1.0)
    huge = jax.tree.map(lambda x: 1e6 * jnp.ones_like(x), params)
    clipped, _ = clip.update(huge, clip.init(params))
    assert float(optax.tree.norm(clipped)) == pytest.approx(1.0, rel=1e-5)
