"""GradCache: same loss and gradients as full-batch backprop (rtol 1e-4), with dropout keys
replayed, composed with the sharded InfoNCE, O(1) compile size in the number of chunks, temp
memory flat in the batch size for a fixed chunk size, and on a mesh one gradient reduction over
'data' per step, however many chunks."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from siamjax.losses.gradcache import grad_cache_value_and_grad, make_grad_cache_value_and_grad
from siamjax.losses import get_loss, init_loss_params
from siamjax.parallel import BATCH_AXES, batch_spec, make_mesh, replicated, tree_shardings
from siamjax.parallel.hlo import program_stats

VOCAB, HIDDEN, DIM, LEN = 60, 16, 8, 6


def init_tiny(rng, hidden=HIDDEN, dim=DIM):
    k = jax.random.split(rng, 3)
    return {"table": jax.random.normal(k[0], (VOCAB, hidden)),
            "w1": jax.random.normal(k[1], (hidden, 2 * hidden)) / 4,
            "w2": jax.random.normal(k[2], (2 * hidden, dim)) / 4, "b2": jnp.zeros(dim)}


def tiny_encode(params, batch, *, rng=None):
    """Embedding table -> per-token dense+gelu -> masked mean -> dense; dropout with an rng."""
    x_BxLxH = jax.nn.gelu(params["table"][batch["input_ids"]] @ params["w1"])
    mask_BxLx1 = batch["attention_mask"][..., None].astype(jnp.float32)
    h_BxH = jnp.sum(x_BxLxH * mask_BxLx1, 1) / jnp.maximum(jnp.sum(mask_BxLx1, 1), 1.0)
    if rng is not None:
        keep = jax.random.bernoulli(rng, 0.8, h_BxH.shape)
        h_BxH = jnp.where(keep, h_BxH / 0.8, 0.0)
    return h_BxH @ params["w2"] + params["b2"]


def make_batch(sides, batch, seed=0, length=LEN):
    k1, k2 = jax.random.split(jax.random.key(seed))
    lengths = jax.random.randint(k2, (sides, batch, 1), 1, length + 1)
    return {"input_ids": jax.random.randint(k1, (sides, batch, length), 0, VOCAB, jnp.int32),
            "attention_mask": (jnp.arange(length)[None, None] < lengths).astype(jnp.int32)}


def full_batch(encode_fn, loss_fn, batch, labels=None, text_ids=None):
    """Reference: plain autodiff through the whole batch."""
    def total(params, loss_params):
        emb = jax.vmap(lambda side: encode_fn(params, side))(batch)
        return loss_fn(emb, labels, loss_params, text_ids)
    return jax.jit(jax.value_and_grad(total, argnums=(0, 1)))


CASES = {  # name -> (loss name, options, sides, labels kind, chunk)
    "mnrl_hard_neg_learnable": ("mnrl", dict(learnable_scale=True), 3, None, 4),
    "mnrl_symmetric_blocks_ids": ("mnrl", dict(symmetric=True, block_size=4), 2, "ids", 4),
    "cosent_one_chunk": ("cosent", {}, 2, "scores", 16),
    "softmax_head": ("softmax", {}, 2, "classes", 8),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_matches_full_batch_gradients(case):
    name, kw, sides, kind, chunk = CASES[case]
    params = init_tiny(jax.random.key(0))
    batch = make_batch(sides, 16)
    labels = {"scores": jnp.linspace(0, 1, 16), "classes": jnp.arange(16, dtype=jnp.int32) % 3}.get(kind)
    text_ids = (jnp.arange(sides * 16, dtype=jnp.int32).reshape(sides, 16) % 11) if kind == "ids" else None
    loss_fn = get_loss(name, **kw)
    loss_params = init_loss_params(name, DIM, 3, jax.random.key(1), **kw)
    ref_loss, (ref_g, ref_glp) = full_batch(tiny_encode, loss_fn, batch, labels, text_ids)(params, loss_params)
    full = dict(batch, **({"labels": labels} if labels is not None else {}),
                **({"text_ids": text_ids} if text_ids is not None else {}))
    loss, g, glp = jax.jit(lambda p, b, lp: grad_cache_value_and_grad(tiny_encode, loss_fn, p, b, chunk, lp))(
        params, full, loss_params)
    chex.assert_trees_all_close((loss, g, glp), (ref_loss, ref_g, ref_glp), rtol=1e-4, atol=1e-6)


def test_dropout_keys_are_replayed_in_the_second_pass():
    """With an rng, the result is the exact gradient of the chunked forward with the same keys."""
    params, batch, rng = init_tiny(jax.random.key(0)), make_batch(2, 12, seed=1), jax.random.key(7)
    loss_fn, chunk, n = get_loss("mnrl"), 4, 3

    def chunked_forward(p):  # chunk i = rows {j * n + i}, keys split(fold_in(rng, i), S)
        emb = jnp.zeros((2, 12, DIM))
        for i in range(n):
            keys = jax.random.split(jax.random.fold_in(rng, i), 2)
            for s in range(2):
                side = {k: v[s, i::n] for k, v in batch.items()}
                emb = emb.at[s, i::n].set(tiny_encode(p, side, rng=keys[s]))
        return loss_fn(emb, None, {})

    ref = jax.jit(jax.value_and_grad(chunked_forward))(params)
    loss, g, glp = jax.jit(lambda p, r: grad_cache_value_and_grad(tiny_encode, loss_fn, p, batch, chunk, rng=r))(
        params, rng)
    assert glp is None
    chex.assert_trees_all_close((loss, g), ref, rtol=1e-4, atol=1e-6)
    no_dropout = grad_cache_value_and_grad(tiny_encode, loss_fn, params, batch, chunk)[0]
    assert not np.isclose(loss, no_dropout)


def test_composes_with_the_sharded_loss():
    mesh = jax.make_mesh((4, 2), ("data", "fsdp"), axis_types=(AxisType.Auto,) * 2)
    kw = dict(learnable_scale=True, symmetric=True)
    params, batch = init_tiny(jax.random.key(3)), make_batch(3, 32, seed=3)
    lp = init_loss_params("mnrl", DIM, **kw)
    ref = full_batch(tiny_encode, get_loss("mnrl", **kw), batch)(params, lp)
    sharded_batch = jax.device_put(batch, NamedSharding(mesh, P(None, ("data", "fsdp"), None)))
    step = jax.jit(lambda p, b, lp: grad_cache_value_and_grad(
        tiny_encode, get_loss("mnrl", mesh=mesh, **kw), p, b, 8, lp))
    loss, g, glp = step(params, sharded_batch, lp)
    chex.assert_trees_all_close((loss, (g, glp)), ref, rtol=1e-4, atol=1e-6)


def test_gradient_is_reduced_once_per_step_on_a_mesh():
    """data=8, and data=2 x fsdp=4 with FSDP-sharded params: 4 chunks of a 32-pair batch give the
    1-device loss and gradients. The compiled data=8 step all-reduces the gradient once:
    2 (n-1)/n x its bytes (+ two scalars), the same with 2 chunks as with 4 (it was once per
    chunk). Under FSDP only the 'fsdp' reduction (reduce-scatter) stays per chunk: the all-reduce
    is one over 'data' of each device's gradient shard, plus, per chunk, the few parameters too
    small to shard (b2 here), all-reduced over 'fsdp'."""
    params, batch = init_tiny(jax.random.key(5)), make_batch(2, 32, seed=5)
    ref = full_batch(tiny_encode, get_loss("mnrl"), batch)(params, {})
    grad_bytes = sum(x.size * 4 for x in jax.tree.leaves(params))
    all_reduce = {}
    for data, fsdp, chunk in ((8, 1, 8), (8, 1, 16), (2, 4, 8)):
        mesh = make_mesh(data, fsdp)
        shardings = tree_shardings(params, mesh, min_size=64)
        loss_fn = get_loss("mnrl", mesh=mesh, batch_axes=BATCH_AXES)
        with jax.set_mesh(mesh):
            step = jax.jit(lambda p, b: grad_cache_value_and_grad(tiny_encode, loss_fn, p, b, chunk)[:2],
                           out_shardings=(replicated(mesh), shardings))
            sharded = {k: jax.device_put(v, NamedSharding(mesh, batch_spec(k, v.ndim))) for k, v in batch.items()}
            compiled = step.lower(jax.device_put(params, shardings), sharded).compile()
            if chunk == 8:
                chex.assert_trees_all_close(compiled(jax.device_put(params, shardings), sharded), (ref[0], ref[1][0]),
                                            rtol=1e-4, atol=1e-6)
        all_reduce[data, 32 // chunk] = program_stats(compiled.as_text(), 8).collective_bytes["all-reduce"]
    once = 2 * 7 / 8 * grad_bytes
    assert once <= all_reduce[8, 4] <= once + 64 and all_reduce[8, 2] == all_reduce[8, 4], (all_reduce, once)
    shard_bytes = sum(leaf.size * 4 // (4 if any(s.spec) else 1) for leaf, s in
                      zip(jax.tree.leaves(params), jax.tree.leaves(tree_shardings(params, mesh, min_size=64))))
    small = params["b2"].size * 4
    assert all_reduce[2, 4] <= shard_bytes + 4 * 2 * 3 / 4 * small + 64, (all_reduce, shard_bytes)
    assert all_reduce[2, 4] < 0.5 * once


def test_train_step_adapter():
    params = {"encoder": init_tiny(jax.random.key(0)), "loss": init_loss_params("mnrl", DIM, learnable_scale=True)}
    batch = make_batch(2, 8)
    loss_fn = get_loss("mnrl", learnable_scale=True)
    vg = make_grad_cache_value_and_grad(tiny_encode, loss_fn, 4)
    loss, grads = jax.jit(vg)(params, batch, None)
    ref_loss, (g_enc, g_loss) = full_batch(tiny_encode, loss_fn, batch)(params["encoder"], params["loss"])
    chex.assert_trees_all_close((loss, grads), (ref_loss, {"encoder": g_enc, "loss": g_loss}), rtol=1e-4, atol=1e-6)


def test_program_size_does_not_grow_with_chunks():
    params, batch = init_tiny(jax.random.key(0)), make_batch(2, 32)

    def n_eqns(chunk):
        jaxpr = jax.make_jaxpr(lambda p: grad_cache_value_and_grad(tiny_encode, get_loss("mnrl"), p, batch, chunk))
        return len(jaxpr(params).jaxpr.eqns)

    assert n_eqns(16) == n_eqns(4) == n_eqns(1)


def compiled_temp(fn, *args):
    return jax.jit(fn).lower(*args).compile().memory_analysis().temp_size_in_bytes


def test_peak_memory_flat_in_batch_size():
    """Chunk 32, InfoNCE in blocks of 32: temp memory grows by the [S, B, D] embeddings only,
    while full-batch backprop grows linearly with B."""
    params = init_tiny(jax.random.key(0), hidden=32, dim=16)
    loss_fn = get_loss("mnrl", block_size=32)
    gc, full = {}, {}
    for b in (128, 1024):
        batch = {k: jax.ShapeDtypeStruct((2, b, 32), jnp.int32) for k in ("input_ids", "attention_mask")}
        gc[b] = compiled_temp(lambda p, x: grad_cache_value_and_grad(tiny_encode, loss_fn, p, x, 32), params, batch)
        full[b] = compiled_temp(lambda p, x: jax.grad(lambda p: loss_fn(
            jax.vmap(lambda s: tiny_encode(p, s))(x), None, {}))(p), params, batch)
    assert full[1024] > 6 * full[128]
    assert gc[1024] < 1.5 * gc[128], gc
    assert gc[1024] * 4 < full[1024]


def test_sentence_encoder_tiny_bert():
    siamjax = pytest.importorskip("siamjax.encoder")
    cfg = siamjax.BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                             intermediate_size=64, max_position_embeddings=64)
    enc = siamjax.SentenceEncoder.from_config(cfg, None, seed=0)
    batch = make_batch(2, 8, seed=4, length=16)
    batch["token_type_ids"] = jnp.zeros_like(batch["input_ids"])
    loss_fn = get_loss("mnrl", symmetric=True)
    ref = full_batch(enc.encode_fn, loss_fn, batch)(enc.params, {})
    loss, g, glp = jax.jit(lambda p: grad_cache_value_and_grad(enc.encode_fn, loss_fn, p, batch, 2, {}))(enc.params)
    chex.assert_trees_all_close((loss, (g, glp)), ref, rtol=1e-4, atol=1e-6)


def test_bad_inputs():
    params, batch = init_tiny(jax.random.key(0)), make_batch(2, 12)
    loss_fn = get_loss("mnrl")
    with pytest.raises(ValueError, match="batch size B=12 is not divisible by chunk_size=5"):
        grad_cache_value_and_grad(tiny_encode, loss_fn, params, batch, 5)
    with jax.set_mesh(make_mesh(4, 2)), pytest.raises(ValueError, match="chunk_size=6 is not divisible by the mesh's "
                                                                     "'data' axis size=4"):
        grad_cache_value_and_grad(tiny_encode, loss_fn, params, batch, 6)
    with pytest.raises(ValueError, match="chunk_size must be a positive int"):
        grad_cache_value_and_grad(tiny_encode, loss_fn, params, batch, 0)
    with pytest.raises(ValueError, match="same S and B"):
        grad_cache_value_and_grad(tiny_encode, loss_fn, params, dict(batch, attention_mask=batch["attention_mask"][:, :8]), 4)
    with pytest.raises(ValueError, match=r"batch\['labels'\] must be \[12, \.\.\.\]"):
        grad_cache_value_and_grad(tiny_encode, get_loss("cosent"), params, dict(batch, labels=jnp.ones(8)), 4)
    with pytest.raises(TypeError, match="floating-point arrays only"):
        grad_cache_value_and_grad(tiny_encode, loss_fn, dict(params, step=jnp.int32(0)), batch, 4)
    with pytest.raises(TypeError, match="non-empty dict"):
        grad_cache_value_and_grad(tiny_encode, loss_fn, params, [batch], 4)
