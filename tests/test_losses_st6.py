"""Parity with sentence-transformers 6.x's loss classes, in float64 to 1e-6 (value and gradient
with respect to the embeddings).

sentence-transformers' side gets the embeddings from `StubModel`, a model whose "encoder" is a
table of the given embeddings looked up by `input_ids[:, 0]`, so its loss runs its real
forward (column embedding, label handling, mini-batching for the cached losses) and the
table's gradient is the gradient with respect to the embeddings. siamjax's side is the
registry LossFn on the same `[S, B, D]` array (and, for CachedGIST, GradCache over a table
encoder). Inputs are random with hard negatives wherever the loss takes them.
"""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
st_losses = pytest.importorskip("sentence_transformers.sentence_transformer.losses")
from sentence_transformers import util as st_util  # noqa: E402

from siamjax.losses import get_loss, grad_cache_value_and_grad  # noqa: E402

B, D = 6, 5
TOL = dict(rtol=1e-6, atol=1e-9)
RNG = np.random.default_rng(17)


class StubModel(torch.nn.Module):
    """A model that returns the given embeddings: row `input_ids[:, 0]` of a [S * B, D] table."""

    def __init__(self, emb_SxBxD, tokenizer=None):
        super().__init__()
        self.table = torch.nn.Parameter(torch.tensor(emb_SxBxD.reshape(-1, emb_SxBxD.shape[-1])))
        self.tokenizer, self.max_seq_length = tokenizer, 16

    def forward(self, features, **kwargs):
        return dict(features, sentence_embedding=self.table[features["input_ids"][:, 0]])

    def __getitem__(self, index):
        return self

    def grad(self, shape):
        return self.table.grad.numpy().reshape(shape)


def features(sides, batch=B):
    """One feature dict per column; column s, row b carries id s * B + b."""
    ids = torch.arange(sides * batch).reshape(sides, batch, 1)
    return [{"input_ids": torch.cat([ids[s], ids[s]], 1), "attention_mask": torch.ones(batch, 2, dtype=torch.long)}
            for s in range(sides)]


def st_value_and_grad(loss, model, emb, labels=None):
    """Value of sentence-transformers' loss through its forward, and d loss / d embeddings."""
    value = loss(features(emb.shape[0], emb.shape[1]), None if labels is None else torch.tensor(labels))
    value = sum(value.values()) if isinstance(value, dict) else value
    value.backward()
    return value.item(), model.grad(emb.shape)


def ours(name, emb, labels=None, loss_params=None, **kw):
    with jax.enable_x64(True):
        fn = get_loss(name, **kw)
        value, grad = jax.value_and_grad(fn)(jnp.asarray(emb), None if labels is None else jnp.asarray(labels),
                                             loss_params or {})
        return float(value), np.asarray(grad)


def assert_parity(got, want):
    np.testing.assert_allclose(got[0], want[0], **TOL)
    np.testing.assert_allclose(got[1], want[1], **TOL)


def rand(*shape):
    return RNG.normal(size=shape)


# ---------------------------------------------------------------------------------- MNRL

def mnrl_combinations():
    """Every valid directions x partition_mode x hardness_mode of ST 6.x's MNRL (40)."""
    extra = ("query_to_query", "doc_to_query", "doc_to_doc")
    for r in range(4):
        for more in itertools.combinations(extra, r):
            for part in ("joint", "per_direction"):
                if part == "per_direction" and set(more) - {"doc_to_query"}:
                    continue
                for hardness in (None, "in_batch_negatives", "hard_negatives", "all_negatives"):
                    yield ("query_to_doc",) + more, part, hardness


def test_mnrl_every_direction_partition_and_hardness():
    """All 40 combinations on (anchor, positive, 2 hard negatives), one compiled program."""
    combos = list(mnrl_combinations())
    assert len(combos) == 40
    emb = rand(4, B, D)
    opts = [dict(directions=d, partition_mode=p, hardness_mode=h, hardness_strength=0.0 if h is None else 5.0)
            for d, p, h in combos]
    with jax.enable_x64(True):
        fns = [get_loss("mnrl", scale=20.0, **o) for o in opts]
        got = jax.jit(lambda e: [jax.value_and_grad(f)(e, None, {}) for f in fns])(jnp.asarray(emb))
    for o, (value, grad) in zip(opts, got):
        model = StubModel(emb)
        want = st_value_and_grad(st_losses.MultipleNegativesRankingLoss(model, scale=20.0, **o), model, emb)
        np.testing.assert_allclose(value, want[0], **TOL, err_msg=str(o))
        np.testing.assert_allclose(grad, want[1], **TOL, err_msg=str(o))


@pytest.mark.parametrize("sides", [2, 3])
def test_mnrl_dot_similarity_and_symmetric_shorthand(sides):
    emb = rand(sides, B, D) * 0.3
    model = StubModel(emb)
    st = st_losses.MultipleNegativesRankingLoss(model, scale=1.0, similarity_fct=st_util.dot_score,
                                                directions=("query_to_doc", "doc_to_query"),
                                                partition_mode="per_direction")
    assert_parity(ours("mnrl", emb, scale=1.0, similarity="dot", symmetric=True), st_value_and_grad(st, model, emb))


@pytest.mark.parametrize("kwargs, match", [
    (dict(directions=("query_to_doc", "query_to_query"), partition_mode="per_direction"), "per_direction"),
    (dict(directions=("doc_to_query",)), "must include 'query_to_doc'"),
    (dict(directions=("query_to_doc", "sideways")), "invalid"),
    (dict(hardness_mode="softest"), "hardness_mode"),
    (dict(hardness_mode="all_negatives", hardness_strength=-1.0), "must be >= 0"),
    (dict(symmetric=True, partition_mode="joint"), "either symmetric or"),
    (dict(ring=True, block_size=4), "leave it unset"),
])
def test_mnrl_rejects_what_sentence_transformers_rejects(kwargs, match):
    with pytest.raises(ValueError, match=match):
        get_loss("mnrl", **kwargs)


# ---------------------------------------------------------------------------------- GIST

@pytest.fixture(scope="module")
def tokenizer(minilm_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(minilm_dir)


GIST_CASES = {  # name -> (sides, GIST kwargs)
    "triplets_absolute": (3, dict()),
    "pairs_relative_no_anchor_contrast": (2, dict(margin_strategy="relative", margin=0.1, contrast_anchors=False)),
    "triplets_margin_no_positive_contrast": (3, dict(margin=0.05, contrast_positives=False, temperature=0.05)),
}


def gist_inputs(sides):
    """Model and guide embeddings where the guide agrees with the model up to noise, so some
    but not all in-batch candidates are masked."""
    emb = rand(sides, B, D)
    guide = emb[..., :4] + 0.6 * rand(sides, B, 4)
    return emb, guide


@pytest.mark.parametrize("case", sorted(GIST_CASES))
def test_gist(case, tokenizer):
    sides, kw = GIST_CASES[case]
    emb, guide = gist_inputs(sides)
    model, guide_model = StubModel(emb, tokenizer), StubModel(guide, tokenizer)
    want = st_value_and_grad(st_losses.GISTEmbedLoss(model, guide_model, **kw), model, emb)
    with jax.enable_x64(True):
        fn = get_loss("gist", **kw)
        value, grad = jax.value_and_grad(fn)(jnp.asarray(emb), None, {}, None, jnp.asarray(guide))
    assert_parity((float(value), np.asarray(grad)), want)
    g = guide / np.linalg.norm(guide, axis=-1, keepdims=True)
    guide_ap = g[0] @ g[1].T
    threshold = np.diag(guide_ap)[:, None] - kw.get("margin", 0.0) * (
        np.abs(np.diag(guide_ap))[:, None] if kw.get("margin_strategy") == "relative" else 1.0)
    masked = np.sum((guide_ap > threshold) & ~np.eye(B, dtype=bool))
    assert 0 < masked < B * (B - 1)  # the guide drops some in-batch negatives, not all


def test_cached_gist_is_gist_under_grad_cache(tokenizer):
    """CachedGISTEmbedLoss (mini-batches of 2, two negative columns) == siamjax's GIST through
    GradCache (chunks of 2) with a table encoder, so the table gradient is d loss / d emb."""
    emb, guide = gist_inputs(4)
    model, guide_model = StubModel(emb, tokenizer), StubModel(guide, tokenizer)
    st = st_losses.CachedGISTEmbedLoss(model, guide_model, mini_batch_size=2, margin=0.02)
    want = st_value_and_grad(st, model, emb)
    ids = np.arange(4 * B).reshape(4, B, 1)
    with jax.enable_x64(True):
        table = lambda t, batch, *, rng=None: t[batch["input_ids"][:, 0]]  # noqa: E731
        value, grad, _ = grad_cache_value_and_grad(
            table, get_loss("gist", margin=0.02), jnp.asarray(emb.reshape(-1, D)), {"input_ids": jnp.asarray(ids)},
            2, guide_encode_fn=table, guide_params=jnp.asarray(guide.reshape(-1, 4)))
    assert_parity((float(value), np.asarray(grad).reshape(emb.shape)), want)


# ---------------------------------------------------------------------------------- distillation

@pytest.mark.parametrize("sides, label_shape, similarity", [
    (3, "margin_B", "dot"), (4, "margins_BxK", "dot"), (4, "scores_Bx1+K", "cosine"),
])
def test_margin_mse(sides, label_shape, similarity):
    emb = rand(sides, B, D)
    k = sides - 2
    labels = {"margin_B": rand(B), "margins_BxK": rand(B, k), "scores_Bx1+K": rand(B, k + 1)}[label_shape]
    model = StubModel(emb)
    fct = {"dot": st_util.pairwise_dot_score, "cosine": st_util.pairwise_cos_sim}[similarity]
    want = st_value_and_grad(st_losses.MarginMSELoss(model, similarity_fct=fct), model, emb, labels)
    assert_parity(ours("margin_mse", emb, labels, similarity=similarity), want)


@pytest.mark.parametrize("kw", [dict(), dict(temperature=2.0), dict(student_temperature=0.5, teacher_temperature=3.0)])
def test_distill_kl_div(kw):
    emb, labels = rand(4, B, D), 4.0 * rand(B, 3)
    model = StubModel(emb)
    want = st_value_and_grad(st_losses.DistillKLDivLoss(model, **kw), model, emb, labels)
    assert_parity(ours("distill_kl_div", emb, labels, **kw), want)


def test_mse_multilingual_distillation():
    """MSELoss with one teacher embedding per row, broadcast to both (source, translation) sides."""
    emb, teacher = rand(2, B, D), rand(B, D)
    model = StubModel(emb)
    assert_parity(ours("mse", emb, teacher), st_value_and_grad(st_losses.MSELoss(model), model, emb, teacher))


@pytest.mark.parametrize("metric", ["mse", "l2", "cosine"])
def test_embed_distill_per_column_with_projection(metric):
    """EmbedDistill, [B, S, T] teacher embeddings, learnable projection D -> T = 7 (ST's weights copied)."""
    emb, teacher = rand(3, B, D), rand(B, 3, 7)
    model = StubModel(emb)
    torch.manual_seed(0)
    st = st_losses.EmbedDistillLoss.__new__(st_losses.EmbedDistillLoss)
    torch.nn.Module.__init__(st)
    st.model, st.distance_metric, st.projection_dim = model, metric, 7
    st.projection = torch.nn.Linear(D, 7).double()
    want = st_value_and_grad(st, model, emb, teacher)
    projection = {"kernel": st.projection.weight.detach().numpy().T, "bias": st.projection.bias.detach().numpy()}
    with jax.enable_x64(True):
        assert_parity(ours("embed_distill", emb, teacher, {"projection": jax.tree.map(jnp.asarray, projection)},
                           metric=metric, projection_dim=7), want)


# ---------------------------------------------------------------------------------- the rest

@pytest.mark.parametrize("kw", [dict(), dict(mean_weight=0.0, aggregation="sum"), dict(second_moment_weight=0.5)])
def test_global_orthogonal_regularization(kw):
    emb = rand(3, B, D) + 0.5  # a shared offset: the mean term has something to penalise
    model = StubModel(emb)
    st_kw = {k: v for k, v in kw.items()}
    want = st_value_and_grad(st_losses.GlobalOrthogonalRegularizationLoss(model, **st_kw), model, emb)
    assert_parity(ours("gor", emb, **kw), want)


@pytest.mark.parametrize("mini_batched", [False, True])
def test_mega_batch_margin(mini_batched):
    emb = rand(2, B, D)
    emb[1] = emb[0] + 0.7 * emb[1]  # positives near their anchors: both hinge terms active somewhere
    model = StubModel(emb)
    st = st_losses.MegaBatchMarginLoss(model, use_mini_batched_version=mini_batched, mini_batch_size=4)
    assert_parity(ours("mega_batch_margin", emb), st_value_and_grad(st, model, emb))
