"""Gemma 3 (EmbeddingGemma-style, bidirectional and causal), Qwen3, Mistral and Llama against
PyTorch sentence-transformers, computed in the same run.

Each family is a tiny random model built with its `transformers` class from the released
embedder's config.json (shrunk; `decoder_fixtures`), wrapped by sentence-transformers itself:
Gemma 3 as EmbeddingGemma (mean pooling + two bias-free identity Dense layers + Normalize), the
others with lasttoken pooling + Normalize. On 59 varied texts (empty, one token, cut at
max_seq_length 64, CJK, Arabic, emoji, and texts two to four times longer than the 16-token
sliding window) siamjax must give sentence-transformers' embeddings (cosine >= 0.99999, float32) with
one text per row padded on the right and on the left, and packed several texts to a row; saved
folders must load in PyTorch with the same embeddings and in siamjax bit for bit.
"""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import siamjax
from siamjax.encoder import families, rotary
from encoder_fixtures import varied_sentences
from decoder_fixtures import RELEASED, WINDOW, build_hf_folder, st_folder

MAX_SEQ_LENGTH = 64
COS_MIN = 0.99999
# name -> (family, config overrides, pooling, Dense widths)
MODELS = {
    "gemma3": ("gemma3", {}, ("mean",), (128, 64)),
    "gemma3-causal": ("gemma3", {"use_bidirectional_attention": False}, ("mean",), (128, 64)),
    "qwen3": ("qwen3", {}, ("lasttoken",), ()),
    "mistral": ("mistral", {}, ("lasttoken",), ()),
    "llama": ("llama", {}, ("lasttoken",), ()),
}


def cosines(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.fixture(scope="module")
def texts(stsb_dir):
    base = varied_sentences(stsb_dir, n_sts=36)
    sts = base[:36]
    return base + [" ".join(sts[i:i + k]) for i, k in ((0, 3), (6, 4), (15, 6))]  # 33-64 tokens


@pytest.fixture(scope="module")
def folders(tmp_path_factory, texts):
    root = tmp_path_factory.mktemp("decoders")
    out = {}
    for name, (family, overrides, pooling, dense) in MODELS.items():
        hf = build_hf_folder(family, root / f"{name}-hf", corpus=texts, **overrides)
        out[name] = st_folder(hf, root / name, pooling=pooling, max_seq_length=MAX_SEQ_LENGTH, dense=dense)
    return out


def st_embeddings(folder, texts):
    """sentence-transformers in float32 (it would load e5-mistral/Llama in their config's fp16/bf16)."""
    import torch
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(folder), device="cpu", model_kwargs={"dtype": torch.float32})
    return model.encode(texts, batch_size=16)


def left_pad(batch):
    """The right-padded rows of `batch` with each text moved to the end (padding on the left)."""
    out = {k: np.zeros_like(v) for k, v in batch.items()}
    for i, n in enumerate(batch["attention_mask"].sum(1)):
        for k, v in batch.items():
            out[k][i, v.shape[1] - n:] = v[i, :n]
    return out


def layouts(model, texts):
    """Embeddings with one text per row right-padded, left-padded, and packed several to a row."""
    encode = jax.jit(model.encode_fn)
    right = model.pad(model.token_ids(texts), MAX_SEQ_LENGTH)
    return {"right-padded": np.asarray(encode(model.params, right)),
            "left-padded": np.asarray(encode(model.params, left_pad(right))),
            "packed": model.encode(texts, batch_size=16)}


@pytest.mark.parametrize("name", MODELS)
def test_embeddings_match_sentence_transformers_and_save_round_trips(name, folders, texts, tmp_path):
    theirs = st_embeddings(folders[name], texts)
    ours = siamjax.SentenceEncoder.from_pretrained(folders[name])
    family, overrides, pooling, dense = MODELS[name]
    assert ours.spec.pooling.modes == pooling and [d.out_features for d in ours.spec.dense] == list(dense)
    assert all(not d.bias and d.activation_function.endswith("Identity") for d in ours.spec.dense)
    lengths = [len(x) for x in ours.token_ids(texts)]
    assert max(lengths) == MAX_SEQ_LENGTH and sum(n > 2 * WINDOW for n in lengths) >= 5
    assert any(len(row) > 1 for _, _, layout in ours.plan_calls(ours.token_ids(texts), 16) for row in layout)
    embeddings = layouts(ours, texts)
    for layout, emb in embeddings.items():
        cos = cosines(emb, theirs)
        assert cos.min() >= COS_MIN, f"{layout}: worst text {texts[int(cos.argmin())][:60]!r}: cos {cos.min()}"

    saved = ours.save(tmp_path / "saved")
    modules = json.loads((saved / "modules.json").read_text())
    assert [m["type"].rsplit(".", 1)[1] for m in modules] == ["Transformer", "Pooling"] + ["Dense"] * len(dense) + [
        "Normalize"]
    config = json.loads((saved / "config.json").read_text())
    assert config["model_type"] == RELEASED[family]["model_type"]
    assert config["torch_dtype"] == RELEASED[family]["torch_dtype"], "unknown config.json keys are kept"
    assert cosines(st_embeddings(saved, texts), embeddings["right-padded"]).min() >= COS_MIN
    again = siamjax.SentenceEncoder.from_pretrained(saved)
    assert again.spec == ours.spec and again.max_seq_length == ours.max_seq_length
    assert jax.tree.structure(again.params) == jax.tree.structure(ours.params)
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), again.params, ours.params)


@pytest.mark.parametrize("name", MODELS)
def test_bf16_forward_is_close_to_float32(name, folders, texts):
    """bf16 compute (float32 weights), and for the two preset families bf16 weights too:
    cosine >= 0.999 to float32."""
    f32 = siamjax.SentenceEncoder.from_pretrained(folders[name])
    batch = f32.pad(f32.token_ids(texts), MAX_SEQ_LENGTH)
    ref = np.asarray(jax.jit(f32.encode_fn)(f32.params, batch))
    variants = [{"dtype": "bfloat16"}] + ([{"dtype": "bfloat16", "param_dtype": "bfloat16"}]
                                          if name in ("gemma3", "qwen3") else [])
    for kwargs in variants:
        bf16 = siamjax.SentenceEncoder.from_pretrained(folders[name], **kwargs)
        want = jnp.dtype(kwargs.get("param_dtype", "float32"))
        assert all(x.dtype == want for x in jax.tree.leaves(bf16.params))
        cos = cosines(np.asarray(jax.jit(bf16.encode_fn)(bf16.params, batch)), ref)
        assert cos.min() >= 0.999 and cos.max() < 1 - 1e-7, (kwargs, cos.min())


def test_released_configs_parse_to_their_maths():
    gemma = families.config_from_hf(RELEASED["gemma3"], "embeddinggemma-300m/config.json")
    arch = gemma.arch()
    assert (arch.num_heads, arch.num_kv_heads, arch.head_dim, arch.hidden_size) == (3, 1, 256, 768)
    assert arch.query_scale == 256 ** -0.5 and not arch.causal and arch.norm_offset and arch.sandwich_norm
    full = [i for i, t in enumerate(gemma.layer_types) if t == "full_attention"]
    assert full == [5, 11, 17, 23] and all(arch.windows[i] is None for i in full)
    assert {arch.windows[i] for i in range(24) if i not in full} == {(256, 256)}  # |key - query| <= 256
    assert {r.theta for r in arch.ropes} == {10_000.0, 1_000_000.0} and arch.ropes[5].theta == 1e6
    causal = families.config_from_hf({**RELEASED["gemma3"], "use_bidirectional_attention": False}, "g")
    assert causal.arch().windows[0] == (511, 0) and causal.arch().causal
    qwen = families.config_from_hf(RELEASED["qwen3"], "qwen3-embedding/config.json").arch()
    assert (qwen.head_dim, qwen.num_heads, qwen.num_kv_heads, qwen.qk_norm) == (128, 16, 8, True)
    assert set(qwen.windows) == {None} and qwen.ropes[0].theta == 1e6 and qwen.causal
    from transformers import Qwen3Config as TorchQwen3

    sliding = {**RELEASED["qwen3"], "use_sliding_window": True, "sliding_window": 4096, "max_window_layers": 20}
    windowed = families.config_from_hf(sliding, "q").arch()
    assert list(families.config_from_hf(sliding, "q").layer_types) == TorchQwen3(**sliding).layer_types
    assert windowed.windows[:20] == (None,) * 20 and set(windowed.windows[20:]) == {(4095, 0)}
    mistral = families.config_from_hf(RELEASED["mistral"], "e5-mistral/config.json").arch()
    assert set(mistral.windows) == {(4095, 0)} and (mistral.head_dim, mistral.num_kv_heads) == (128, 8)
    llama = families.config_from_hf(RELEASED["llama"], "llama/config.json")
    assert llama.rope.kind == "llama3" and not llama.arch().qk_norm


def test_rope_scalings_equal_transformers():
    from transformers import LlamaConfig as TorchLlama
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    for scaling in ({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                     "original_max_position_embeddings": 8192}, {"rope_type": "linear", "factor": 4.0}):
        torch_cfg = TorchLlama(hidden_size=512, num_attention_heads=4, rope_parameters={"rope_theta": 5e5, **scaling})
        theirs, _ = ROPE_INIT_FUNCTIONS[scaling["rope_type"]](torch_cfg, "cpu")
        ours = rotary.Rope.from_hf(5e5, scaling, "x").inverse_frequencies(128)
        np.testing.assert_allclose(ours, theirs.numpy(), rtol=1e-6)


@pytest.mark.parametrize("family", ["gemma3", "qwen3", "mistral", "llama"])
def test_config_json_round_trips_through_transformers(family):
    """Our saved config.json reads back the same in siamjax and in transformers (layer types, windows, RoPE)."""
    from transformers import AutoConfig

    released = {**{k: v for k, v in RELEASED[family].items() if k != "layer_types"}, "num_hidden_layers": 7}
    ours = families.config_from_hf(released, "c")
    written = ours.to_hf(released)
    assert families.config_from_hf(written, "again") == ours
    torch_cfg = AutoConfig.for_model(**written)
    assert list(getattr(torch_cfg, "layer_types", ours.layer_types)) == list(ours.layer_types)
    new_style = families.config_from_hf(torch_cfg.to_dict(), "transformers-5")
    assert new_style == ours


def test_unsupported_configs_name_file_and_field():
    with pytest.raises(ValueError, match=r"g/config\.json: .*attn_logit_softcapping=50.0 is not supported"):
        families.config_from_hf({**RELEASED["gemma3"], "attn_logit_softcapping": 50.0}, "g/config.json")
    with pytest.raises(ValueError, match=r"q/config\.json: RoPE scaling rope_type='yarn' is not supported"):
        families.config_from_hf({**RELEASED["qwen3"], "rope_scaling": {"rope_type": "yarn", "factor": 4.0}},
                                "q/config.json")
    with pytest.raises(ValueError, match=r"m/config\.json: .*must be a multiple of num_key_value_heads"):
        families.config_from_hf({**RELEASED["mistral"], "num_key_value_heads": 5}, "m/config.json")
    with pytest.raises(ValueError, match=r"g/config\.json: layer_types must list 24 entries"):
        families.config_from_hf({**RELEASED["gemma3"], "layer_types": ["full_attention"]}, "g/config.json")


def test_causal_packed_text_sees_only_its_own_earlier_tokens(folders):
    """Appending tokens to a text, or packing another text after it, leaves a causal model's states
    of its first tokens unchanged; a bidirectional one changes (the mask really differs)."""
    for name, changes in (("qwen3", False), ("gemma3", True)):
        model = siamjax.SentenceEncoder.from_pretrained(folders[name])
        graphdef, params = nnx.split(nnx.merge(model.graphdef, model.params).encoder)
        encoder = jax.jit(lambda ids, mask: nnx.merge(graphdef, params)(ids, mask))
        rng = np.random.default_rng(0)
        text = rng.integers(5, 600, size=(1, 24)).astype(np.int32)
        longer = np.concatenate([text, rng.integers(5, 600, size=(1, 8)).astype(np.int32)], axis=1)
        alone = np.asarray(encoder(text, np.ones_like(text)))
        extended = np.asarray(encoder(longer, np.ones_like(longer)))[:, :24]
        packed_mask = np.concatenate([np.ones_like(text), 2 * np.ones_like(longer[:, 24:])], axis=1)
        packed = np.asarray(encoder(longer, packed_mask))[:, :24]
        np.testing.assert_allclose(packed, alone, atol=1e-5)  # another text in the row is never seen
        assert (np.abs(extended - alone).max() > 1e-3) == changes


def test_dense_chain_widths_are_checked():
    """Each Dense module must take the previous module's width (named in the error)."""
    gemma = families.config_from_hf(RELEASED["gemma3"], "g")
    chain = (siamjax.encoder.DenseConfig(768, 3072, bias=False), siamjax.encoder.DenseConfig(3072, 768, bias=False))
    assert siamjax.encoder.EncoderSpec(gemma, dense=chain).embedding_dim == 768
    with pytest.raises(ValueError, match=r"Dense module 1 has in_features 768, but its input is 3072 wide"):
        siamjax.encoder.EncoderSpec(gemma, dense=(chain[0], chain[0]))
