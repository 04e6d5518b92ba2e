"""Pair and triplet losses: values against direct numpy references (float64) and gradients
against central finite differences, on random inputs; plus parity with sentence-transformers."""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from siamjax.losses import pairs as PL
from siamjax.losses import triplets as TL
from siamjax.losses import get_loss

from numeric_fixtures import numeric_grad

RNG = np.random.default_rng(0)


def cos_rows(u, v):
    return np.sum(u * v, -1) / np.linalg.norm(u, axis=-1) / np.linalg.norm(v, axis=-1)


def dist_rows(u, v, metric):
    if metric == "euclidean":
        return np.linalg.norm(u - v, axis=-1)
    if metric == "manhattan":
        return np.abs(u - v).sum(-1)
    return 1.0 - cos_rows(u, v)


def dist_all(x, metric):
    return np.array([[dist_rows(x[i], x[j], metric) if i != j else 0.0 for j in range(len(x))]
                     for i in range(len(x))])


def np_cosent(s, y, scale=20.0):
    terms = [scale * (s[i] - s[j]) for i in range(len(s)) for j in range(len(s)) if y[i] < y[j]]
    return np.log1p(np.sum(np.exp(terms))) if terms else 0.0


def np_angle_sim(x, y):
    """The original complex-division form of AnglE (github.com/SeanLee97/AnglE)."""
    a, b = np.split(x, 2, axis=1)
    c, d = np.split(y, 2, axis=1)
    z = np.sum(c ** 2 + d ** 2, axis=1, keepdims=True)
    re, im = (a * c + b * d) / z, (b * c - a * d) / z
    dz = np.sqrt(np.sum(a ** 2 + b ** 2, axis=1, keepdims=True))
    dw = np.sqrt(np.sum(c ** 2 + d ** 2, axis=1, keepdims=True))
    return np.abs(np.sum(np.concatenate([re / (dz / dw), im / (dz / dw)], axis=1), axis=1))


def np_online_contrastive(u, v, y, margin=0.5, metric="cosine"):
    d = dist_rows(u, v, metric)
    negs, poss = d[y == 0], d[y == 1]
    neg_pairs = negs[negs < (poss.max() if len(poss) else negs.mean())]
    pos_pairs = poss[poss > (negs.min() if len(negs) else poss.mean())]
    return np.sum(pos_pairs ** 2) + np.sum(np.maximum(margin - neg_pairs, 0) ** 2)


def np_batch_hard(x, y, margin=5.0, metric="euclidean"):
    d, out = dist_all(x, metric), []
    for i in range(len(x)):
        pos = [d[i, j] for j in range(len(x)) if j != i and y[j] == y[i]]
        neg = [d[i, j] for j in range(len(x)) if y[j] != y[i]]
        out.append(max(0.0, (max(pos) if pos else 0.0) - (min(neg) if neg else d[i].max()) + margin))
    return np.mean(out)


def np_batch_semi_hard(x, y, margin=5.0, metric="euclidean"):
    d, total, count = dist_all(x, metric), 0.0, 0
    for a, p in itertools.permutations(range(len(x)), 2):
        if y[a] != y[p]:
            continue
        negs = np.array([d[a, n] for n in range(len(x)) if y[n] != y[a]])
        farther = negs[negs > d[a, p]]
        neg = farther.min() if len(farther) else negs.max()
        total += max(0.0, d[a, p] - neg + margin)
        count += 1
    return total / max(count, 1e-16)


def np_batch_all(x, y, margin=5.0, metric="euclidean"):
    d, losses = dist_all(x, metric), []
    for a, p, n in itertools.permutations(range(len(x)), 3):
        if y[a] == y[p] and y[a] != y[n]:
            losses.append(max(0.0, d[a, p] - d[a, n] + margin))
    losses = np.array(losses)
    return losses.sum() / (np.sum(losses > 1e-16) + 1e-16)


def check(fn_jax, fn_np, *arrays, rtol=1e-5):
    """Value vs numpy on the float32-rounded inputs; gradient wrt every array vs finite differences."""
    arrays = [np.asarray(a, np.float32) for a in arrays]
    value, grads = jax.jit(jax.value_and_grad(fn_jax, argnums=tuple(range(len(arrays)))))(*arrays)
    np.testing.assert_allclose(value, fn_np(*[a.astype(np.float64) for a in arrays]), rtol=rtol, atol=1e-6)
    for k, g in enumerate(grads):
        def f_k(x, k=k):
            args = [a.astype(np.float64) for a in arrays]
            args[k] = x
            return fn_np(*args)
        np.testing.assert_allclose(g, numeric_grad(f_k, arrays[k]), rtol=1e-3, atol=2e-5)
    return value


def pair_inputs(b=8, d=6):
    return RNG.normal(size=(b, d)), RNG.normal(size=(b, d))


def test_cosine_mse():
    u, v = pair_inputs()
    y = RNG.uniform(size=8).astype(np.float32)
    check(lambda u, v: PL.cosine_mse_loss(u, v, y), lambda u, v: np.mean((cos_rows(u, v) - y) ** 2), u, v)


@pytest.mark.parametrize("labels", ["scores", "ties"])
def test_cosent(labels):
    u, v = pair_inputs()
    y = RNG.uniform(size=8) if labels == "scores" else RNG.integers(0, 3, size=8).astype(np.float64)
    y = y.astype(np.float32)
    check(lambda u, v: PL.cosent_loss(u, v, y), lambda u, v: np_cosent(cos_rows(u, v), y), u, v)


@pytest.mark.parametrize("dim", [6, 7])  # odd D is zero-padded like ST
def test_angle(dim):
    u, v = pair_inputs(d=dim)
    y = RNG.uniform(size=8).astype(np.float32)
    pad = lambda x: np.pad(x, ((0, 0), (0, dim % 2)))  # noqa: E731
    check(lambda u, v: PL.angle_loss(u, v, y), lambda u, v: np_cosent(np_angle_sim(pad(u), pad(v)), y), u, v)


@pytest.mark.parametrize("metric", ["cosine", "euclidean", "manhattan"])
def test_contrastive(metric):
    u, v = pair_inputs()
    y = (RNG.uniform(size=8) > 0.5).astype(np.float32)
    margin = 0.5 if metric == "cosine" else 4.0

    def ref(u, v):
        d = dist_rows(u, v, metric)
        return np.mean(0.5 * (y * d ** 2 + (1 - y) * np.maximum(margin - d, 0) ** 2))

    check(lambda u, v: PL.contrastive_loss(u, v, y, margin=margin, distance=metric), ref, u, v)


@pytest.mark.parametrize("labels", [[1, 0, 1, 1, 0, 0, 1, 0], [1] * 8, [0] * 8])
def test_online_contrastive(labels):
    u, v = pair_inputs()
    y = np.asarray(labels, np.float32)
    check(lambda u, v: PL.online_contrastive_loss(u, v, y),
          lambda u, v: np_online_contrastive(u, v, y), u, v)


def test_softmax_head():
    u, v = pair_inputs(d=4)
    y = RNG.integers(0, 3, size=8).astype(np.int32)
    head = PL.init_softmax_head(jax.random.key(0), 4, 3)
    assert head["kernel"].shape == (12, 3) and np.abs(head["kernel"]).max() <= 1 / np.sqrt(12)
    w, b = np.asarray(head["kernel"], np.float64), np.asarray(head["bias"], np.float64)

    def ref(u, v):
        logits = np.concatenate([u, v, np.abs(u - v)], 1) @ w + b
        logp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
        return -np.mean(logp[np.arange(8), y])

    check(lambda u, v: PL.softmax_loss(u, v, y, head), ref, u, v)
    g_head = jax.grad(lambda h: PL.softmax_loss(u.astype(np.float32), v.astype(np.float32), y, h))(head)
    assert np.abs(g_head["kernel"]).sum() > 0 and np.abs(g_head["bias"]).sum() > 0
    mul = PL.init_softmax_head(jax.random.key(0), 4, 3, concat_mul=True)
    assert mul["kernel"].shape == (16, 3)
    with pytest.raises(ValueError, match="do not fit features"):
        PL.softmax_loss(u, v, y, mul)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        PL.softmax_loss(u, v, y + 1, head)


@pytest.mark.parametrize("metric,margin", [("euclidean", 5.0), ("cosine", 0.5)])
def test_triplet(metric, margin):
    a, p, n = RNG.normal(size=(3, 8, 5))
    check(lambda a, p, n: TL.triplet_loss(a, p, n, margin=margin, distance=metric),
          lambda a, p, n: np.mean(np.maximum(dist_rows(a, p, metric) - dist_rows(a, n, metric) + margin, 0)),
          a, p, n)


MINING = [(TL.batch_hard_triplet_loss, np_batch_hard), (TL.batch_semi_hard_triplet_loss, np_batch_semi_hard),
          (TL.batch_all_triplet_loss, np_batch_all)]


@pytest.mark.parametrize("fn,ref", MINING, ids=["hard", "semi_hard", "all"])
@pytest.mark.parametrize("metric,margin", [("euclidean", 2.0), ("cosine", 0.3)])
def test_batch_mined_triplets(fn, ref, metric, margin):
    x = RNG.normal(size=(10, 4))
    y = np.array([0, 0, 1, 1, 1, 2, 2, 3, 0, 2], np.int32)  # label 3 has no positive
    check(lambda x: fn(x, y, margin=margin, distance=metric), lambda x: ref(x, y, margin, metric), x)


def test_pair_loss_errors():
    u, v = pair_inputs()
    with pytest.raises(ValueError, match=r"labels must have shape \(8,\)"):
        PL.cosent_loss(u, v, np.ones(7, np.float32))
    with pytest.raises(ValueError, match="labels .* required"):
        PL.cosine_mse_loss(u, v, None)
    with pytest.raises(ValueError, match="labels must be 0 or 1"):
        PL.contrastive_loss(u, v, np.full(8, 0.5, np.float32))
    with pytest.raises(TypeError, match="class labels must be integer"):
        TL.batch_hard_triplet_loss(u, np.ones(8, np.float32))
    with pytest.raises(ValueError, match="shapes must match"):
        TL.triplet_loss(u, v, v[:, :3])
    with pytest.raises(ValueError, match="unknown distance"):
        PL.contrastive_loss(u, v, np.ones(8, np.float32), distance="hamming")
    v_nan = v.copy()
    v_nan[3, 2] = np.nan
    with pytest.raises(ValueError, match=r"v_BxD contains 1 NaN/Inf"):
        PL.cosent_loss(u, v_nan, np.ones(8, np.float32))


ST_CASES = {  # ST class name -> (registry name, ST kwargs, sides, label kind)
    "CoSENTLoss": ("cosent", {}, 2, "float"),
    "AnglELoss": ("angle", {}, 2, "float"),
    "CosineSimilarityLoss": ("cosine_mse", {}, 2, "float"),
    "ContrastiveLoss": ("contrastive", {}, 2, "binary"),
    "OnlineContrastiveLoss": ("online_contrastive", {}, 2, "binary"),
    "TripletLoss": ("triplet", {}, 3, None),
    "BatchHardTripletLoss": ("batch_hard_triplet", {}, 1, "int"),
    "BatchSemiHardTripletLoss": ("batch_semi_hard_triplet", {}, 1, "int"),
    "BatchAllTripletLoss": ("batch_all_triplet", {}, 1, "int"),
}


@pytest.mark.parametrize("st_name", sorted(ST_CASES))
def test_matches_sentence_transformers(st_name):
    torch = pytest.importorskip("torch")
    import sentence_transformers.sentence_transformer.losses as st_losses

    name, kw, sides, kind = ST_CASES[st_name]
    emb = RNG.normal(size=(sides, 12, 6)).astype(np.float32)
    labels = {"float": RNG.uniform(size=12), "binary": RNG.integers(0, 2, size=12),
              "int": RNG.integers(0, 4, size=12), None: None}[kind]
    labels = None if labels is None else labels.astype(np.int32 if kind == "int" else np.float32)
    t_emb = [torch.tensor(e, requires_grad=True) for e in emb]
    st_loss = getattr(st_losses, st_name)(None, **kw).compute_loss_from_embeddings(
        t_emb, None if labels is None else torch.tensor(labels))
    st_loss.backward()
    value, grad = jax.value_and_grad(get_loss(name))(jnp.asarray(emb), labels, {})
    np.testing.assert_allclose(value, st_loss.item(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(grad, np.stack([t.grad.numpy() for t in t_emb]), rtol=1e-4, atol=1e-5)
