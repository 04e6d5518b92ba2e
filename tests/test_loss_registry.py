"""The registry (`get_loss`, `init_loss_params`), the Matryoshka wrapper and NaN handling."""
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from siamjax import losses as L

B, D = 8, 6
EMB3 = jax.random.normal(jax.random.key(0), (3, B, D))
SCORES = jnp.linspace(0.0, 1.0, B)
BINARY = jnp.array([1, 0, 1, 1, 0, 0, 1, 0], jnp.float32)
CLASSES = jnp.array([0, 1, 2, 0, 1, 2, 0, 1], jnp.int32)
GUIDE = EMB3[..., :4] + 0.5 * jax.random.normal(jax.random.key(2), (3, B, 4))
MARGINS = jnp.linspace(-1.0, 2.0, B)
TEACHER_SCORES = jax.random.normal(jax.random.key(3), (B, 2))
TEACHER_EMB = jax.random.normal(jax.random.key(4), (B, D))

# name -> (sides, labels, direct reference on (emb, labels, params))
CASES = {
    "mnrl": (3, None, lambda e, y, p: L.infonce_loss(e[0], e[1], e[2][:, None])),
    "infonce": (2, None, lambda e, y, p: L.infonce_loss(e[0], e[1])),
    "sigmoid": (2, None, lambda e, y, p: L.sigmoid_loss(e[0], e[1], scale=10.0, bias=-10.0)),
    "cosent": (2, SCORES, lambda e, y, p: L.cosent_loss(e[0], e[1], y)),
    "angle": (2, SCORES, lambda e, y, p: L.angle_loss(e[0], e[1], y)),
    "cosine_mse": (2, SCORES, lambda e, y, p: L.cosine_mse_loss(e[0], e[1], y)),
    "contrastive": (2, BINARY, lambda e, y, p: L.contrastive_loss(e[0], e[1], y)),
    "online_contrastive": (2, BINARY, lambda e, y, p: L.online_contrastive_loss(e[0], e[1], y)),
    "triplet": (3, None, lambda e, y, p: L.triplet_loss(e[0], e[1], e[2])),
    "batch_hard_triplet": (1, CLASSES, lambda e, y, p: L.batch_hard_triplet_loss(e[0], y)),
    "batch_semi_hard_triplet": (2, CLASSES, lambda e, y, p: L.batch_semi_hard_triplet_loss(
        e.reshape(2 * B, D), jnp.tile(y, 2))),
    "batch_all_triplet": (1, CLASSES, lambda e, y, p: L.batch_all_triplet_loss(e[0], y)),
    "softmax": (2, CLASSES, lambda e, y, p: L.softmax_loss(e[0], e[1], y, p["softmax_head"])),
    "mega_batch_margin": (2, None, lambda e, y, p: L.mega_batch_margin_loss(e[0], e[1])),
    "gist": (3, None, lambda e, y, p: L.gist_loss(e, GUIDE)),
    "margin_mse": (3, MARGINS, lambda e, y, p: L.margin_mse_loss(e, y)),
    "distill_kl_div": (3, TEACHER_SCORES, lambda e, y, p: L.distill_kl_div_loss(e, y)),
    "mse": (2, TEACHER_EMB, lambda e, y, p: L.embed_distill_loss(e, y, metric="mse")),
    "embed_distill": (2, TEACHER_EMB, lambda e, y, p: L.embed_distill_loss(e, y)),
    "gor": (3, None, lambda e, y, p: L.gor_loss(e)),
}
EXTRAS = {"gist": {"guide_SxBxD": GUIDE}}  # name -> extra LossFn arguments


def test_registry_covers_every_name():
    assert set(L.LOSS_NAMES) == set(CASES)


@pytest.mark.parametrize("name", sorted(CASES))
def test_every_loss_through_the_registry(name):
    sides, labels, direct = CASES[name]
    emb = EMB3[:sides]
    params = L.init_loss_params(name, D, 3, jax.random.key(1))
    loss_fn = functools.partial(L.get_loss(name), **EXTRAS.get(name, {}))
    step = jax.jit(jax.value_and_grad(loss_fn, argnums=(0, 2)))
    value, (g_emb, g_params) = step(emb, labels, params)
    np.testing.assert_allclose(value, direct(emb, labels, params), rtol=1e-6, atol=1e-7)
    assert np.isfinite(g_emb).all() and np.abs(g_emb).sum() > 0
    assert jax.tree.structure(g_params) == jax.tree.structure(params)
    # Under jit a NaN cannot raise, but it must reach the loss (the loop stops on NaN loss) ...
    bad = emb.at[-1, 2, 1].set(jnp.nan)
    assert np.isnan(step(bad, labels, params)[0])
    # ... and eagerly it raises, naming the field.
    with pytest.raises(ValueError, match="NaN/Inf"):
        loss_fn(bad, labels, params)


def test_loss_params():
    assert L.init_loss_params("mnrl", D) == {}
    lp = L.init_loss_params("mnrl", D, learnable_scale=True, scale=20.0)
    assert np.isclose(lp["log_scale"], math.log(20.0))
    sig = L.init_loss_params("sigmoid", D)
    assert np.isclose(sig["log_scale"], math.log(10.0)) and sig["bias"] == -10.0
    head = L.init_loss_params("softmax", D, 3, jax.random.key(0), concat_mul=True)
    assert head["softmax_head"]["kernel"].shape == (4 * D, 3)
    fn = L.get_loss("mnrl", learnable_scale=True)
    g = jax.grad(fn, argnums=2)(EMB3[:2], None, lp)
    assert g["log_scale"] != 0.0
    # learnable scale 20 == fixed scale 20
    np.testing.assert_allclose(fn(EMB3[:2], None, lp), L.get_loss("mnrl")(EMB3[:2], None, {}), rtol=1e-6)


def test_registry_errors():
    with pytest.raises(ValueError, match="unknown loss 'mnlr'; valid names: angle, batch_all_triplet"):
        L.get_loss("mnlr")
    with pytest.raises(TypeError, match=r"unknown option\(s\) \['temperature'\]; valid options: .*scale"):
        L.get_loss("mnrl", temperature=0.05)
    with pytest.raises(ValueError, match="expects S=2 stacked sides"):
        L.get_loss("cosent")(EMB3, SCORES, {})
    with pytest.raises(ValueError, match="takes no labels"):
        L.get_loss("triplet")(EMB3, SCORES, {})
    with pytest.raises(ValueError, match="only supported by infonce"):
        L.get_loss("cosent")(EMB3[:2], SCORES, {}, jnp.zeros((2, B), jnp.int32))
    with pytest.raises(ValueError, match=r"\['softmax_head'\] is missing"):
        L.get_loss("softmax")(EMB3[:2], CLASSES, {})
    with pytest.raises(ValueError, match="needs an rng"):
        L.init_loss_params("softmax", D, 3)
    with pytest.raises(ValueError, match="num_labels must be >= 2"):
        L.init_loss_params("softmax", D, None, jax.random.key(0))
    with pytest.raises(ValueError, match="cannot be wrapped in matryoshka"):
        L.get_loss("softmax", matryoshka_dims=(4,))
    with pytest.raises(ValueError, match="given without a mesh"):
        L.get_loss("mnrl", batch_axes=("data",))
    with pytest.raises(ValueError, match="without matryoshka_dims"):
        L.get_loss("cosent", matryoshka_weights=(1.0,))
    with pytest.raises(ValueError, match=r"exceed the embedding dim 6"):
        L.get_loss("cosent", matryoshka_dims=(8, 4))(EMB3[:2], SCORES, {})
    with pytest.raises(ValueError, match="2 weights for 1 dims"):
        L.matryoshka(L.get_loss("cosent"), (4,), (1.0, 2.0))
    with pytest.raises(TypeError, match="floating-point"):
        L.get_loss("cosent")(EMB3[:2].astype(jnp.int32), SCORES, {})


def test_matryoshka_matches_numpy():
    """sum_k w_k * cosine_mse(normalize(emb[..., :d_k])) against a float64 numpy reference."""
    dims, weights = (2, 4, 6), (1.0, 0.5, 0.25)
    fn = L.get_loss("cosine_mse", matryoshka_dims=dims, matryoshka_weights=weights)
    emb = np.asarray(EMB3[:2], np.float64)

    def ref(e):
        total = 0.0
        for d, w in zip(dims, weights):
            u, v = e[0, :, :d], e[1, :, :d]
            cos = np.sum(u * v, 1) / np.linalg.norm(u, axis=1) / np.linalg.norm(v, axis=1)
            total += w * np.mean((cos - np.asarray(SCORES)) ** 2)
        return total

    value, grad = jax.jit(jax.value_and_grad(fn))(EMB3[:2], SCORES, {})
    np.testing.assert_allclose(value, ref(emb), rtol=1e-5)
    eps, num = 1e-6, np.zeros_like(emb)
    for idx in np.ndindex(emb.shape):
        up, dn = emb.copy(), emb.copy()
        up[idx] += eps
        dn[idx] -= eps
        num[idx] = (ref(up) - ref(dn)) / (2 * eps)
    np.testing.assert_allclose(grad, num, rtol=1e-3, atol=1e-5)
    # Without normalisation the truncated prefix is used as is (euclidean triplet sees raw norms).
    raw = L.get_loss("triplet", matryoshka_dims=(3,), matryoshka_normalize=False)(EMB3, None, {})
    np.testing.assert_allclose(raw, L.triplet_loss(EMB3[0, :, :3], EMB3[1, :, :3], EMB3[2, :, :3]), rtol=1e-6)


def test_matryoshka_wraps_the_sharded_loss():
    mesh = jax.make_mesh((4, 2), ("data", "fsdp"), axis_types=(AxisType.Auto,) * 2)
    kw = dict(matryoshka_dims=(2, 6), learnable_scale=True, symmetric=True)
    lp = L.init_loss_params("mnrl", D, **kw)
    sharded = jax.jit(jax.value_and_grad(L.get_loss("mnrl", mesh=mesh, **kw), argnums=(0, 2)))
    emb = jax.device_put(EMB3, NamedSharding(mesh, P(None, ("data", "fsdp"), None)))
    got = sharded(emb, None, lp)
    want = jax.jit(jax.value_and_grad(L.get_loss("mnrl", **kw), argnums=(0, 2)))(EMB3, None, lp)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), got, want)


def test_per_pair_losses_run_on_sharded_inputs():
    """Losses without a sharded form are partitioned by jit itself: same value on a mesh."""
    mesh = jax.make_mesh((8, 1), ("data", "fsdp"), axis_types=(AxisType.Auto,) * 2)
    emb = jax.device_put(EMB3[:2], NamedSharding(mesh, P(None, ("data", "fsdp"), None)))
    fn = L.get_loss("cosent", mesh=mesh)
    np.testing.assert_allclose(jax.jit(fn)(emb, SCORES, {}), fn(EMB3[:2], SCORES, {}), rtol=1e-6)
