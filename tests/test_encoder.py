"""Encoder structure: the shared-weight pair encoder, pooling, remat/bf16, and bad inputs."""
import json
import shutil

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import siamjax
import siamjax.encoder
from siamjax.encoder import PoolingConfig
from siamjax.encoder.pooling import pool


@pytest.fixture(scope="module")
def tokenizer(minilm_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(minilm_dir))


@pytest.fixture(scope="module")
def tiny_cfg(tokenizer):
    return siamjax.BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                              num_attention_heads=4, intermediate_size=64, max_position_embeddings=64)


@pytest.fixture(scope="module")
def tiny(tiny_cfg, tokenizer):
    return siamjax.SentenceEncoder.from_config(tiny_cfg, tokenizer, seed=1)


PAIRS = (["a man plays guitar", "the cat sleeps", "", "rain is falling today in the city"],
         ["someone plays music", "a dog barks loudly at night", "hello", "it rains"])


def _pair_batch(enc):
    ids_a, ids_b = enc.token_ids(PAIRS[0]), enc.token_ids(PAIRS[1])
    length = siamjax.encoder.bucket_length(max(len(x) for x in ids_a + ids_b), enc.max_seq_length)
    a, b = enc.pad(ids_a, length), enc.pad(ids_b, length)
    return {k: np.stack([a[k], b[k]]) for k in a}, a, b


def test_vmapped_pair_encoder_equals_separate_encoding(tiny):
    batch_2xBxL, a, b = _pair_batch(tiny)
    pair = jax.vmap(tiny.encode_fn, in_axes=(None, 0))(tiny.params, batch_2xBxL)
    chex.assert_shape(pair, (2, 4, 32))
    chex.assert_trees_all_close(pair[0], tiny.encode_fn(tiny.params, a), atol=1e-6)
    chex.assert_trees_all_close(pair[1], tiny.encode_fn(tiny.params, b), atol=1e-6)


def test_gradients_from_both_sides_land_on_one_param_tree(tiny):
    batch_2xBxL, a, b = _pair_batch(tiny)

    def pair_loss(params):
        emb = jax.vmap(tiny.encode_fn, in_axes=(None, 0))(params, batch_2xBxL)
        return jnp.sum(emb[0] * emb[1])

    def split_loss(params_a, params_b):
        return jnp.sum(tiny.encode_fn(params_a, a) * tiny.encode_fn(params_b, b))

    grads = jax.jit(jax.grad(pair_loss))(tiny.params)  # jitted: op by op, every primitive compiles alone
    ga, gb = jax.jit(jax.grad(split_loss, argnums=(0, 1)))(tiny.params, tiny.params)
    chex.assert_trees_all_close(grads, jax.tree.map(np.add, ga, gb), atol=1e-5)
    # each side alone contributes a non-zero gradient to the shared tree
    assert float(np.abs(ga["encoder"]["layers"]["0"]["query"]["kernel"]).sum()) > 0
    assert float(np.abs(gb["encoder"]["layers"]["0"]["query"]["kernel"]).sum()) > 0


def test_remat_gives_identical_gradients(tiny_cfg, tokenizer):
    plain = siamjax.SentenceEncoder.from_config(tiny_cfg, tokenizer, seed=2)
    remat = siamjax.SentenceEncoder.from_config(tiny_cfg, tokenizer, seed=2, remat=True)
    batch = plain.tokenize(PAIRS[0])
    rng = jax.random.key(0)
    loss = lambda enc: lambda p: jnp.sum(enc.encode_fn(p, batch, rng=rng) ** 2)
    grad = lambda enc: jax.jit(jax.grad(loss(enc)))(enc.params)  # noqa: E731
    chex.assert_trees_all_close(grad(plain), grad(remat),
                                atol=1e-5, rtol=1e-5)


def test_dropout_only_with_rng(tiny):
    batch = tiny.tokenize(PAIRS[0])
    eval_a = tiny.encode_fn(tiny.params, batch)
    eval_b = tiny.encode_fn(tiny.params, batch)
    train = tiny.encode_fn(tiny.params, batch, rng=jax.random.key(1))
    np.testing.assert_array_equal(eval_a, eval_b)
    assert not np.allclose(eval_a, train)


def test_bfloat16_compute_is_close_to_float32(tiny_cfg, tokenizer):
    f32 = siamjax.SentenceEncoder.from_config(tiny_cfg, tokenizer, seed=4)
    bf16 = siamjax.SentenceEncoder.from_config(tiny_cfg, tokenizer, seed=4, dtype="bfloat16")
    x, y = f32.encode(PAIRS[0]), bf16.encode(PAIRS[0])
    assert y.dtype == np.float32
    cos = (x * y).sum(1) / np.linalg.norm(x, axis=1) / np.linalg.norm(y, axis=1)
    assert cos.min() > 0.99


@pytest.mark.parametrize("mode", ["mean", "cls", "max", "lasttoken", "weightedmean", "mean_sqrt_len"])
def test_pooling_matches_numpy(mode):
    rng = np.random.default_rng(0)
    h = rng.normal(size=(3, 5, 4)).astype(np.float32)
    lengths = np.array([5, 2, 1])
    mask = (np.arange(5)[None] < lengths[:, None]).astype(np.int32)
    got = np.asarray(pool(jnp.asarray(h), jnp.asarray(mask), PoolingConfig((mode,))))[:, 0]
    for i, n in enumerate(lengths):
        tokens = h[i, :n]
        want = {"mean": tokens.mean(0), "cls": h[i, 0], "max": tokens.max(0), "lasttoken": tokens[-1],
                "weightedmean": (tokens * np.arange(1, n + 1)[:, None]).sum(0) / np.arange(1, n + 1).sum(),
                "mean_sqrt_len": tokens.sum(0) / np.sqrt(n)}[mode]
        np.testing.assert_allclose(got[i], want, rtol=1e-5, atol=1e-6)


def test_pooling_config_round_trip_and_concat_order():
    cfg = PoolingConfig(("mean", "cls"))
    assert cfg.modes == ("cls", "mean")
    st = cfg.to_st_config(8)
    assert st["pooling_mode_cls_token"] and st["pooling_mode_mean_tokens"] and not st["pooling_mode_max_tokens"]
    assert PoolingConfig.from_st_config(st) == cfg
    assert PoolingConfig.from_st_config({"pooling_mode": "lasttoken"}).modes == ("lasttoken",)


# ------------------------------------------------------------------------------------ bad inputs
def test_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        siamjax.SentenceEncoder.from_pretrained(tmp_path / "nope")


def test_hub_name_offline_names_model_and_suggests_folder(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OSError, match=r"(?s)'no-such-org/no-such-model'.*local folder"):
        siamjax.SentenceEncoder.from_pretrained("no-such-org/no-such-model")


def _copy(minilm_dir, tmp_path):
    dst = tmp_path / "model"
    shutil.copytree(minilm_dir, dst)
    return dst


def test_folder_without_weights(minilm_dir, tmp_path):
    folder = _copy(minilm_dir, tmp_path)
    (folder / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="no weights"):
        siamjax.SentenceEncoder.from_pretrained(folder)


def test_pickle_bin_only_is_refused(minilm_dir, tmp_path):
    folder = _copy(minilm_dir, tmp_path)
    (folder / "model.safetensors").unlink()
    (folder / "pytorch_model.bin").write_bytes(b"not unpickled")
    with pytest.raises(ValueError, match=r"pytorch_model\.bin.*safetensors only"):
        siamjax.SentenceEncoder.from_pretrained(folder)


def test_wrong_shape_names_tensor(minilm_dir, tmp_path):
    folder = _copy(minilm_dir, tmp_path)
    tensors = load_file(folder / "model.safetensors")
    tensors["encoder.layer.3.intermediate.dense.weight"] = np.zeros((7, 384), np.float32)
    save_file(tensors, folder / "model.safetensors")
    with pytest.raises(ValueError, match=r"encoder\.layer\.3\.intermediate\.dense\.weight.*\(7, 384\)"):
        siamjax.SentenceEncoder.from_pretrained(folder)


def test_missing_and_unexpected_tensors_are_named(minilm_dir, tmp_path):
    folder = _copy(minilm_dir, tmp_path)
    tensors = load_file(folder / "model.safetensors")
    del tensors["encoder.layer.5.output.LayerNorm.bias"]
    save_file(tensors, folder / "model.safetensors")
    with pytest.raises(ValueError, match=r"missing weight.*encoder\.layer\.5\.output\.LayerNorm\.bias"):
        siamjax.SentenceEncoder.from_pretrained(folder)
    tensors["encoder.layer.5.output.LayerNorm.bias"] = np.zeros(384, np.float32)
    tensors["encoder.layer.0.attention.self.rotary.weight"] = np.zeros(3, np.float32)
    save_file(tensors, folder / "model.safetensors")
    with pytest.raises(ValueError, match=r"unexpected weight.*rotary"):
        siamjax.SentenceEncoder.from_pretrained(folder)


def test_unknown_architecture(minilm_dir, tmp_path):
    folder = _copy(minilm_dir, tmp_path)
    config = json.loads((folder / "config.json").read_text())
    config["model_type"] = "gpt2"
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"config\.json.*unknown architecture model_type='gpt2'"):
        siamjax.SentenceEncoder.from_pretrained(folder)


def test_unknown_pooling_mode(minilm_dir, tmp_path):
    folder = _copy(minilm_dir, tmp_path)
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode": "median"}))
    with pytest.raises(ValueError, match=r"unknown pooling mode.*median"):
        siamjax.SentenceEncoder.from_pretrained(folder)
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({"word_embedding_dimension": 384}))
    with pytest.raises(ValueError, match=r"1_Pooling/config\.json: no pooling mode"):
        siamjax.SentenceEncoder.from_pretrained(folder)


def test_unsupported_st_module(minilm_dir, tmp_path):
    folder = _copy(minilm_dir, tmp_path)
    modules = json.loads((folder / "modules.json").read_text())
    modules[1]["type"] = "sentence_transformers.models.CNN"
    (folder / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(ValueError, match=r"modules\.json.*CNN"):
        siamjax.SentenceEncoder.from_pretrained(folder)


def test_plain_hf_folder_defaults_to_mean_pooling(minilm_dir, tmp_path):
    folder = tmp_path / "plain"
    folder.mkdir()
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "vocab.txt",
                 "special_tokens_map.json"):
        shutil.copy(minilm_dir / name, folder / name)
    enc = siamjax.SentenceEncoder.from_pretrained(folder)
    assert enc.spec.pooling.modes == ("mean",) and not enc.spec.normalize
    assert enc.max_seq_length == 512


def test_encode_rejects_bad_arguments(tiny):
    with pytest.raises(TypeError, match=r"texts\[1\] is int"):
        tiny.encode(["ok", 3])
    with pytest.raises(ValueError, match="batch_size"):
        tiny.encode(["ok"], batch_size=0)
    assert tiny.encode([]).shape == (0, 32)
