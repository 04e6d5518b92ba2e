"""Pallas splash attention (`siamjax.encoder.splash`) against XLA attention, on CPU in Pallas
interpret mode ("splash_interpret": the kernel's own code, run as XLA ops).

Values and gradients (q, k, v) of `layers.attend` for the mask shapes the families pass: padded
rows and packed rows with 2-3 texts + padding, bidirectional (on 8 devices: the kernel runs per
device under shard_map), causal grouped-query attention with a scale, and a two-sided sliding
window (Gemma 3); then a tiny random Gemma 3 encoding packed rows on 8 devices. Lengths are not
multiples of the kernel's 128-token blocks, so the padding to them is covered too.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from decoder_fixtures import build_hf_folder
from siamjax.encoder import layers, splash
from siamjax.encoder.sentence_encoder import SentenceEncoder
from siamjax.parallel import BATCH_AXES, make_mesh

L = 40  # padded to one 128-token block inside the kernel


def _segments(rows: list[list[int]]) -> np.ndarray:
    """`[B, L]` segment ids from each row's text lengths (the rest padding, id 0)."""
    out = np.zeros((len(rows), L), np.int32)
    for r, lengths in enumerate(rows):
        start = 0
        for k, n in enumerate(lengths, start=1):
            out[r, start:start + n] = k
            start += n
    return out


# (name, segment ids, causal, window, scale, query heads, kv heads, on 8 devices)
# Padded bidirectional rows are rows of the packed case holding one text ([40], [25], [7]): one
# compiled kernel fewer (interpret mode compiles slowly) for the same coverage.
CASES = [
    ("padded and packed rows", _segments([[12, 20, 5], [30, 10], [9, 9], [40], [3, 4, 5], [25], [7], [17, 17]]),
     False, None, None, 2, 2, True),
    ("causal GQA, scaled", _segments([[15, 20], [33], [40], [6, 6, 6]]), True, None, 0.3, 4, 2, False),
    ("sliding window (Gemma 3)", _segments([[40], [18, 19], [11], [29]]), False, (6, 6), 256 ** -0.5, 2, 1, False),
]


def _value_and_grads(case, implementation: str, mesh=None):
    """(output, d loss / d (q, k, v)) of one case, with the loss reading real tokens only (nothing
    reads padding's outputs in an encoder)."""
    _, segments, causal, window, scale, n, k, _ = case
    rng = np.random.default_rng(len(segments))
    b, h = segments.shape[0], 8
    q, kk, v, w = (jnp.asarray(rng.normal(size=(b, L, heads, h)), jnp.float32) for heads in (n, k, k, n))
    w = w * (segments > 0)[:, :, None, None]
    mask = layers.AttentionMask(jnp.asarray(segments), causal=causal)

    def loss(q, kk, v, mask):
        o = layers.attend(q, kk, v, mask, window=window, scale=scale, implementation=implementation)
        return jnp.sum(o * w), o

    step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))
    if mesh is None:
        (_, out), grads = step(q, kk, v, mask)
        return out, grads, None
    rows = NamedSharding(mesh, P(BATCH_AXES))
    args = jax.device_put((q, kk, v, mask), rows)
    with jax.set_mesh(mesh):
        (_, out), grads = step(*args)
        jaxpr = str(jax.make_jaxpr(loss)(*args))
    assert out.sharding.spec[0] == BATCH_AXES
    return out, grads, jaxpr


def test_splash_equals_xla_attention_values_and_gradients():
    mesh = make_mesh(data=-1, fsdp=1)
    for case in CASES:
        name, segments = case[0], case[1]
        real = (segments > 0)[:, :, None, None]
        out, grads, jaxpr = _value_and_grads(case, layers.SPLASH_INTERPRET, mesh if case[-1] else None)
        ref, ref_grads, _ = _value_and_grads(case, "xla")
        assert not np.isnan(np.asarray(out)).any(), name  # padding rows included
        np.testing.assert_allclose(np.asarray(out) * real, np.asarray(ref) * real, atol=1e-5, err_msg=name)
        for which, g, g_ref in zip("qkv", grads, ref_grads):
            np.testing.assert_allclose(np.asarray(g), np.asarray(g_ref), atol=1e-5, err_msg=f"{name}: d{which}")
        if case[-1]:
            assert "shard_map" in jaxpr, "on a mesh the kernel must run per device"


def test_kernel_shapes_and_selection():
    assert [splash.padded_length(n) for n in (1, 128, 129, 512, 640)] == [128, 128, 256, 512, 640]
    assert [splash.block_size(n) for n in (40, 256, 512, 640, 2048)] == [128, 256, 512, 128, 512]
    assert layers.select_attention("auto", "tpu", jnp.float32) == "splash"
    assert layers.select_attention("auto", "tpu", jnp.bfloat16, score_bias=True) == "xla"  # MPNet
    assert layers.select_attention("auto", "gpu", jnp.bfloat16) == "cudnn"
    assert layers.select_attention("auto", "cpu", jnp.bfloat16) == "xla"
    with pytest.raises(ValueError, match=r"^attention='splash' needs a TPU, but JAX's default backend is 'cpu'"):
        layers.check_attention("splash", "float32")
    with pytest.raises(ValueError, match=r"no input for this model's attention-score bias"):
        layers.check_attention(layers.SPLASH_INTERPRET, "float32", score_bias=True)
    layers.check_attention(layers.SPLASH_INTERPRET, "float32")  # the test-only path runs anywhere


@pytest.fixture(scope="module")
def gemma_folder(tmp_path_factory):
    corpus = [f"sentence number {i} about topic {i % 7}, with some more words" for i in range(60)]
    return build_hf_folder("gemma3", tmp_path_factory.mktemp("splash") / "gemma3", corpus=corpus,
                           num_hidden_layers=2, layer_types=["sliding_attention", "full_attention"])


def test_gemma3_encoder_with_splash_equals_xla_on_packed_rows(gemma_folder):
    """Bidirectional, sliding window 16 and a full layer, 4 query heads on 1 key/value head,
    query_pre_attn_scalar: several texts per packed row, rows split over 8 devices."""
    texts = ["a", "short text", "The quick brown fox jumps over the lazy dog and keeps on running far away.",
             "another sentence of middling length here", "x y z", "one more", "the last one, a bit longer"] * 2
    mesh = make_mesh(data=-1, fsdp=1)
    got = SentenceEncoder.from_pretrained(gemma_folder, attention=layers.SPLASH_INTERPRET).encode(texts, mesh=mesh)
    want = SentenceEncoder.from_pretrained(gemma_folder, attention="xla").encode(texts, mesh=mesh)
    cos = np.sum(got * want, -1) / np.linalg.norm(got, axis=-1) / np.linalg.norm(want, axis=-1)
    assert cos.min() >= 0.99999, cos
