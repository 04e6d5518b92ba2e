"""InfoNCE / SigLIP: numpy references, and the sharded forms against the single-device loss on
meshes of 1, 2, 4 and 8 fake CPU devices (values and gradients, rtol 1e-5)."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType

from siamjax.losses import in_batch as C
from siamjax.losses import get_loss

from numeric_fixtures import numeric_grad

AXES = ("data", "fsdp")


def mesh_of(n, shape=None, types=AxisType.Auto):
    shape = shape or (n, 1)
    return jax.make_mesh(shape, AXES, axis_types=(types,) * 2, devices=jax.devices()[:n])


def np_normalize(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def np_lse(x, axis=-1):
    m = np.max(x, axis=axis, keepdims=True)
    return (m + np.log(np.sum(np.exp(x - m), axis=axis, keepdims=True))).squeeze(axis)


def np_infonce(emb, scale=20.0, similarity="cosine", symmetric=False, ids=None):
    """Direct global InfoNCE over stacked sides [S, B, D] (float64)."""
    emb = np.asarray(emb, np.float64)
    if similarity == "cosine":
        emb = np_normalize(emb)
    a, p = emb[0], emb[1]
    b = a.shape[0]
    cands = np.concatenate([p] + [emb[k] for k in range(2, emb.shape[0])])
    logits = scale * a @ cands.T
    cand_ids = None if ids is None else np.concatenate([ids[k] for k in range(1, emb.shape[0])])
    total = 0.0
    for i in range(b):
        row = logits[i].copy()
        if ids is not None:
            for j in range(len(row)):
                if j != i and (cand_ids[j] == ids[1][i] or cand_ids[j] == ids[0][i]):
                    row[j] = -np.inf
        total += np_lse(row) - row[i]
    loss = total / b
    if symmetric:
        back = scale * p @ a.T
        bwd = 0.0
        for i in range(b):
            row = back[i].copy()
            if ids is not None:
                for j in range(b):
                    if j != i and (ids[0][j] == ids[0][i] or ids[0][j] == ids[1][i]):
                        row[j] = -np.inf
            bwd += np_lse(row) - row[i]
        loss = 0.5 * (loss + bwd / b)
    return loss


def np_sigmoid(emb, scale=10.0, bias=-10.0):
    emb = np_normalize(np.asarray(emb, np.float64))
    a = emb[0]
    cands = np.concatenate([emb[k] for k in range(1, emb.shape[0])])
    logits = scale * a @ cands.T + bias
    z = -np.ones_like(logits)
    z[np.arange(a.shape[0]), np.arange(a.shape[0])] = 1.0
    return -np.sum(-np.logaddexp(0.0, -z * logits)) / a.shape[0]


def rand_emb(s, b, d, seed=0):
    return jax.random.normal(jax.random.key(seed), (s, b, d), jnp.float32)


def dup_ids(s, b, seed=0):
    """Text ids with many repeats, so the false-negative mask has work to do."""
    return np.asarray(jax.random.randint(jax.random.key(seed + 100), (s, b), 0, max(3, b // 2)), np.int32)


@pytest.mark.parametrize("sides,similarity,symmetric,with_ids", [
    (2, "cosine", False, False), (4, "cosine", True, True), (3, "dot", True, False), (3, "cosine", False, True),
])
def test_infonce_matches_numpy(sides, similarity, symmetric, with_ids):
    emb = rand_emb(sides, 6, 4, seed=sides) * (0.3 if similarity == "dot" else 1.0)
    ids = dup_ids(sides, 6) if with_ids else None
    fn = C.make_infonce_fn(similarity=similarity, symmetric=symmetric)
    value, grad = jax.jit(jax.value_and_grad(lambda e: fn(e, None, None, ids)))(emb)
    ref = lambda e: np_infonce(e, similarity=similarity, symmetric=symmetric, ids=ids)  # noqa: E731
    np.testing.assert_allclose(value, ref(np.asarray(emb)), rtol=1e-5)
    np.testing.assert_allclose(grad, numeric_grad(ref, emb), rtol=1e-3, atol=1e-5)


def test_false_negative_mask_changes_the_loss_only_when_texts_repeat():
    emb = rand_emb(2, 6, 4)
    fn = C.make_infonce_fn()
    distinct = np.arange(12, dtype=np.int32).reshape(2, 6)
    assert np.isclose(fn(emb, None, None, distinct), fn(emb))
    repeated = distinct.copy()
    repeated[1, 3] = repeated[1, 0]  # positives of rows 0 and 3 are the same text
    assert fn(emb, None, None, repeated) < fn(emb)


def test_infonce_matches_sentence_transformers():
    torch = pytest.importorskip("torch")
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    emb = np.asarray(rand_emb(3, 8, 5, seed=3))
    for directions, symmetric in ((("query_to_doc",), False), (("query_to_doc", "doc_to_query"), True)):
        st = MultipleNegativesRankingLoss(None, scale=20.0, directions=directions, partition_mode="per_direction")
        t = [torch.tensor(e, requires_grad=True) for e in emb]
        st_loss = st.compute_loss_from_embeddings(t, None)
        st_loss.backward()
        value, grad = jax.jit(jax.value_and_grad(C.make_infonce_fn(symmetric=symmetric)))(jnp.asarray(emb))
        np.testing.assert_allclose(value, st_loss.item(), rtol=1e-5)
        np.testing.assert_allclose(grad, np.stack([x.grad.numpy() for x in t]), rtol=1e-4, atol=1e-6)


ALL_DIRECTIONS = ("query_to_doc", "query_to_query", "doc_to_query", "doc_to_doc")
CASES = {  # name -> (sides, make_fn kwargs, with text ids)
    "pairs_symmetric_per_direction_in_batch_hardness": (
        2, dict(symmetric=True, hardness_mode="in_batch_negatives", hardness_strength=4.0), False),
    "hard_negatives_every_direction_joint_ids_learnable": (
        4, dict(directions=ALL_DIRECTIONS, hardness_mode="all_negatives", hardness_strength=2.0,
                learnable_scale_param=True), True),
}


@pytest.mark.parametrize("n_dev", [1, 2, 4, 8])
@pytest.mark.parametrize("case", sorted(CASES))
def test_sharded_and_ring_infonce_equal_global(n_dev, case):
    """All-gather and ring forms vs the single-device loss, float64, values and gradients
    (embeddings and the learnable scale) within 1e-6, every MNRL direction."""
    sides, kw, with_ids = CASES[case]
    with jax.enable_x64(True):
        emb = jax.random.normal(jax.random.key(n_dev), (sides, 16, 8), jnp.float64)
        ids = dup_ids(sides, 16, seed=n_dev) if with_ids else None
        lp = {"log_scale": jnp.log(17.0)} if kw.get("learnable_scale_param") else {}
        fns = [C.make_infonce_fn(**kw)] + [C.sharded_infonce(mesh_of(n_dev), AXES, ring=ring, **kw)
                                           for ring in (False, True)]
        ref, gathered, ring = jax.jit(lambda e, p: [jax.value_and_grad(lambda e, p: f(e, None, p, ids), argnums=(0, 1))(
            e, p) for f in fns])(emb, lp)
    chex.assert_trees_all_close(gathered, ref, rtol=1e-6, atol=1e-9)
    chex.assert_trees_all_close(ring, ref, rtol=1e-6, atol=1e-9)


def test_ring_memory_is_flat_in_devices():
    """Per-device temp memory at b_local = 512: the ring stays flat from 2 to 8 devices, the
    all-gather form grows with the global batch."""
    def temp(n, ring):
        emb = jax.ShapeDtypeStruct((3, 512 * n, 16), jnp.float32)
        fn = jax.value_and_grad(C.sharded_infonce(mesh_of(n), AXES, ring=ring))
        return jax.jit(fn).lower(emb).compile().memory_analysis().temp_size_in_bytes

    ring2, ring8 = temp(2, True), temp(8, True)
    gather2, gather8 = temp(2, False), temp(8, False)
    assert ring8 <= 1.05 * ring2, (ring2, ring8)
    assert gather8 > 3 * gather2, (gather2, gather8)
    assert ring8 * 3 < gather8


def test_sharded_infonce_on_2d_explicit_mesh_and_blocks():
    """('data', 'fsdp') = (2, 4) Explicit axes, batch axes given as a tuple, blocked queries."""
    emb = rand_emb(3, 32, 8, seed=5)
    kw = dict(symmetric=True, block_size=2)
    sharded = C.sharded_infonce(mesh_of(8, (2, 4), AxisType.Explicit), AXES, **kw)
    ref = jax.jit(jax.value_and_grad(C.make_infonce_fn(symmetric=True)))(emb)
    got = jax.jit(jax.value_and_grad(sharded))(emb)
    chex.assert_trees_all_close(got, ref, rtol=1e-5, atol=1e-7)


def test_remote_positives_receive_the_global_gradient():
    """The gradient of a positive held by device 7 includes the pull from anchors on devices 0-6."""
    n, b_local = 8, 2
    emb = rand_emb(2, n * b_local, 8, seed=11)
    sharded = C.sharded_infonce(mesh_of(n), AXES)
    grad = np.asarray(jax.jit(jax.grad(sharded))(emb))
    ref_grad = numeric_grad(np_infonce, emb)
    np.testing.assert_allclose(grad, ref_grad, rtol=1e-3, atol=1e-5)
    # Gradient of positives on the last device coming only from anchors on that device:
    last = slice((n - 1) * b_local, n * b_local)

    def own_device_only(p_last):
        e = np.asarray(emb, np.float64).copy()
        e[1, last] = p_last
        full = np_infonce(e)
        # anchors on devices 0..6 alone (their positives unchanged):
        a, p = np_normalize(e[0]), np_normalize(e[1])
        logits = 20.0 * a @ p.T
        remote = sum(np_lse(logits[i]) - logits[i, i] for i in range(0, (n - 1) * b_local))
        return full - remote / (n * b_local)

    local_part = numeric_grad(own_device_only, np.asarray(emb[1, last]))
    remote_part = grad[1, last] - local_part
    assert np.abs(remote_part).max() > 1e-3  # remote anchors push on this positive ...
    np.testing.assert_allclose(remote_part, ref_grad[1, last] - local_part, rtol=1e-3, atol=1e-5)


def test_sharded_memory_is_b_local_times_b_global():
    """Compiled temp memory per device: 8-way sharded InfoNCE needs < 1/4 of the global loss."""
    emb = jax.ShapeDtypeStruct((2, 1024, 16), jnp.float32)
    plain = jax.jit(jax.value_and_grad(C.make_infonce_fn())).lower(emb).compile()
    sharded_fn = C.sharded_infonce(mesh_of(8), AXES)
    sharded = jax.jit(jax.value_and_grad(sharded_fn)).lower(emb).compile()
    t_plain = plain.memory_analysis().temp_size_in_bytes
    t_sharded = sharded.memory_analysis().temp_size_in_bytes
    assert t_plain >= 1024 * 1024 * 4  # at least one [B, B] float32 logit matrix
    assert t_sharded * 4 < t_plain, (t_sharded, t_plain)


def test_block_size_gives_same_loss_with_less_memory():
    emb = rand_emb(3, 64, 8, seed=2)
    ids = dup_ids(3, 64)
    full = C.make_infonce_fn(symmetric=True)
    blocked = C.make_infonce_fn(symmetric=True, block_size=8)
    vg = lambda fn: jax.jit(jax.value_and_grad(lambda e: fn(e, None, None, ids)))(emb)  # noqa: E731
    chex.assert_trees_all_close(vg(blocked), vg(full), rtol=1e-5, atol=1e-7)
    big = jax.ShapeDtypeStruct((2, 2048, 16), jnp.float32)
    mem = lambda fn: jax.jit(jax.grad(fn)).lower(big).compile().memory_analysis().temp_size_in_bytes  # noqa: E731
    assert mem(C.make_infonce_fn(block_size=64)) * 4 < mem(C.make_infonce_fn())


def test_sigmoid_matches_numpy():
    emb = rand_emb(3, 6, 4, seed=7)
    fn = C.make_sigmoid_fn(learnable_scale_param=False)
    value, grad = jax.jit(jax.value_and_grad(fn))(emb)
    np.testing.assert_allclose(value, np_sigmoid(np.asarray(emb)), rtol=1e-5)
    np.testing.assert_allclose(grad, numeric_grad(np_sigmoid, emb), rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("n_dev,sides", [(1, 3), (2, 2), (4, 3), (8, 2), (8, 3)])
def test_sharded_sigmoid_ring_equals_global(n_dev, sides):
    emb = rand_emb(sides, 16, 8, seed=n_dev + sides)
    lp = {"log_scale": jnp.log(jnp.float32(10.0)), "bias": jnp.float32(-10.0)}
    ref = jax.jit(jax.value_and_grad(C.make_sigmoid_fn(), argnums=(0, 2)))(emb, None, lp)
    sharded = C.sharded_sigmoid(mesh_of(n_dev), AXES)
    got = jax.jit(jax.value_and_grad(sharded, argnums=(0, 2)))(emb, None, lp)
    chex.assert_trees_all_close(got, ref, rtol=1e-5, atol=1e-7)


def test_learnable_scale_is_clipped_like_clip():
    assert np.isclose(C.learnable_scale(jnp.log(20.0)), 20.0)
    assert np.isclose(C.learnable_scale(10.0), 100.0)  # exp(10) clipped to 100
    assert C.learnable_scale(-3.0) == 1.0
    assert jax.grad(C.learnable_scale)(10.0) == 0.0
    assert jax.grad(C.learnable_scale)(1.0) > 0.0


def test_bad_inputs_raise_clear_errors():
    emb = rand_emb(2, 8, 4)
    with pytest.raises(ValueError, match="shapes must match"):
        C.infonce_loss(emb[0], emb[1, :5])
    with pytest.raises(ValueError, match=r"negatives_BxKxD must be \[8, K, 4\]"):
        C.infonce_loss(emb[0], emb[1], jnp.zeros((8, 2, 3)))
    with pytest.raises(TypeError, match="floating-point"):
        C.infonce_loss(emb[0].astype(jnp.int32), emb[1].astype(jnp.int32))
    with pytest.raises(ValueError, match="rank 2"):
        C.infonce_loss(emb, emb)
    with pytest.raises(ValueError, match="S >= 2"):
        C.make_infonce_fn()(emb[:1])
    with pytest.raises(ValueError, match="takes no labels"):
        C.make_infonce_fn()(emb, jnp.ones(8))
    with pytest.raises(ValueError, match="text_ids_SxB must be integer"):
        C.make_infonce_fn()(emb, None, None, jnp.zeros((3, 8), jnp.int32))
    with pytest.raises(ValueError, match="unknown similarity"):
        C.make_infonce_fn(similarity="l2")(emb)
    with pytest.raises(ValueError, match="learnable scale needs"):
        C.make_infonce_fn(learnable_scale_param=True)(emb, None, {})
    with pytest.raises(ValueError, match="must name axes of the mesh"):
        C.sharded_infonce(mesh_of(8), ("batch",))


def test_batch_not_divisible_by_devices():
    sharded = C.sharded_infonce(mesh_of(8), AXES)
    with pytest.raises(ValueError, match=r"global batch B=12 is not divisible by the 8 devices"):
        sharded(rand_emb(2, 12, 4))
    with pytest.raises(ValueError, match="not divisible"):
        jax.jit(sharded)(rand_emb(2, 12, 4))  # static shapes: caught at trace time too


def test_nan_inputs():
    emb = rand_emb(2, 8, 4).at[1, 3, 2].set(jnp.nan)
    with pytest.raises(ValueError, match=r"positives contains 1 NaN/Inf"):
        C.make_infonce_fn()(emb)
    with pytest.raises(ValueError, match=r"emb_SxBxD contains 1 NaN/Inf"):
        C.sharded_infonce(mesh_of(8), AXES)(emb)
    # Under jit values are unknown: the loss itself becomes NaN, so the training loop stops.
    assert np.isnan(jax.jit(get_loss("mnrl", mesh=mesh_of(8)))(emb))
    assert np.isnan(jax.jit(get_loss("sigmoid", mesh=mesh_of(8)))(emb, None, {"log_scale": 2.3, "bias": -10.0}))
