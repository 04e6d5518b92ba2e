"""MPNet, DistilBERT and ModernBERT against PyTorch sentence-transformers, computed in the same run.

Each family is a tiny random model built with its `transformers` class, with the released
model's config.json (shrunk; `family_fixtures`), wrapped by sentence-transformers itself into
Transformer + Pooling [+ Dense] + Normalize folders. siamjax must give the same embeddings
(cosine >= 0.99999, float32) on 65 varied texts (empty, one token, longer than max_seq_length,
CJK, emoji, mixed lengths, and for ModernBERT longer than its 128-token local window), padded
(one text per row) and packed (several texts per row), for mean, cls and lasttoken pooling;
and its saved folders must load in PyTorch unchanged.
"""
import dataclasses
import json
import re
import shutil

import jax
import numpy as np
import pytest

import siamjax
from siamjax.encoder import families, rows, verify
from siamjax.encoder.modernbert import ModernBertConfig
from siamjax.encoder.mpnet import relative_position_buckets
from encoder_fixtures import varied_sentences
from family_fixtures import FAMILIES, RELEASED, build_hf_folder, st_folder

MAX_SEQ_LENGTH = 256
COS_MIN = 0.99999
POOLING = ("cls", "mean", "lasttoken")  # concatenated: each part is checked on its own


def cosines(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.fixture(scope="module")
def texts(stsb_dir):
    base = varied_sentences(stsb_dir, n_sts=40)
    sts = base[:40]
    # mixed long texts: 70-300 tokens, beyond ModernBERT's +-64-token window
    longer = [" ".join(sts[i:i + k]) for i, k in ((0, 6), (6, 9), (15, 13), (28, 18), (2, 25))]
    return base + longer


@pytest.fixture(scope="module")
def hf_folders(tmp_path_factory, minilm_dir, texts):
    root = tmp_path_factory.mktemp("families")
    return {f: build_hf_folder(f, root / f, minilm_dir=minilm_dir, corpus=texts) for f in FAMILIES}


def padded_embeddings(model, texts):
    """One text per row, right-padded (the layout sentence-transformers uses); one compiled call."""
    return np.asarray(jax.jit(model.encode_fn)(model.params, model.pad(model.token_ids(texts), MAX_SEQ_LENGTH)))


def assert_matches_st(folder, texts, parts: int = 1, packed: bool = True):
    """siamjax == sentence-transformers on `texts`, padded and packed, each of `parts` concatenated
    pooling outputs on its own. Returns the loaded model."""
    from sentence_transformers import SentenceTransformer

    theirs = SentenceTransformer(str(folder), device="cpu").encode(texts, batch_size=16)
    ours = siamjax.SentenceEncoder.from_pretrained(folder)
    assert ours.max_seq_length == MAX_SEQ_LENGTH
    layouts = {"padded": padded_embeddings(ours, texts)}
    if packed:
        layouts["packed"] = ours.encode(texts, batch_size=16)
    for layout, emb in layouts.items():
        assert emb.shape == theirs.shape
        for part, (a, b) in enumerate(zip(np.split(emb, parts, axis=1), np.split(theirs, parts, axis=1))):
            cos = cosines(a, b)
            assert cos.min() >= COS_MIN, (f"{layout}, pooling part {part}: worst text "
                                          f"{texts[int(cos.argmin())][:60]!r}: cos {cos.min()}")
    return ours


@pytest.mark.parametrize("family", FAMILIES)
def test_embeddings_match_sentence_transformers(family, hf_folders, texts, tmp_path):
    """cls, mean and lasttoken pooling (concatenated, compared part by part), padded and packed."""
    folder = st_folder(hf_folders[family], tmp_path / "st", pooling=POOLING, max_seq_length=MAX_SEQ_LENGTH,
                       normalize=False)
    ours = assert_matches_st(folder, texts, parts=len(POOLING))
    assert ours.spec.transformer.model_type == family and ours.spec.pooling.modes == POOLING
    lengths = [len(x) for x in ours.token_ids(texts)]
    assert max(lengths) == MAX_SEQ_LENGTH and min(lengths) == 2  # truncated; empty text = two specials
    if family == "modernbert":
        window = ours.spec.transformer.local_attention // 2
        assert sum(n > window + 1 for n in lengths) >= 5, "too few texts longer than the local window"
    # packing really put several texts in a row
    assert any(len(row) > 1 for _, _, layout in ours.plan_calls(ours.token_ids(texts), 16) for row in layout)


def test_modernbert_with_every_bias_matches(minilm_dir, texts, tmp_path):
    """norm_bias / attention_bias / mlp_bias on (released models have them off), another layer
    pattern, window and local theta."""
    hf = build_hf_folder("modernbert", tmp_path / "hf", minilm_dir=minilm_dir, corpus=texts, seed=4,
                         norm_bias=True, attention_bias=True, mlp_bias=True, global_attn_every_n_layers=2,
                         local_attention=64, local_rope_theta=5000.0)
    folder = st_folder(hf, tmp_path / "st", pooling=("mean",), max_seq_length=MAX_SEQ_LENGTH)
    ours = assert_matches_st(folder, texts, packed=False)
    cfg = ours.spec.transformer
    assert cfg.layer_types == ("full_attention", "sliding_attention") * 2 and cfg.local_rope_theta == 5000.0
    assert ours.params["encoder"]["layers"]["1"]["mlp_in"]["bias"].shape == (2 * cfg.intermediate_size,)


@pytest.mark.parametrize("family", FAMILIES)
def test_saved_folder_loads_in_pytorch_and_round_trips(family, hf_folders, texts, tmp_path):
    """Mean pooling + Dense + Normalize, loaded by siamjax, saved, loaded by PyTorch and siamjax."""
    from sentence_transformers import SentenceTransformer

    folder = st_folder(hf_folders[family], tmp_path / "st", pooling=("mean",), max_seq_length=MAX_SEQ_LENGTH,
                       dense_dim=24)
    model = siamjax.SentenceEncoder.from_pretrained(folder)
    assert model.spec.dense is not None and model.spec.normalize
    out = model.save(tmp_path / "saved")
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == [RELEASED[family]["architectures"][0].replace("ForMaskedLM", "Model")]
    kept = {"mpnet": "attention_probs_dropout_prob", "distilbert": "qa_dropout", "modernbert": "classifier_pooling"}
    assert config[kept[family]] == RELEASED[family][kept[family]], "unknown config.json keys must be kept"
    ours = padded_embeddings(model, texts)
    cos = cosines(SentenceTransformer(str(out), device="cpu").encode(texts), ours)
    assert cos.min() >= COS_MIN
    again = siamjax.SentenceEncoder.from_pretrained(out)
    assert again.spec == model.spec and again.max_seq_length == model.max_seq_length
    assert jax.tree.structure(again.params) == jax.tree.structure(model.params)
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), again.params, model.params)


@pytest.mark.parametrize("family", FAMILIES)
def test_damaged_family_folders_are_refused(family, hf_folders, tmp_path):
    """The load-time folder checks (`encoder.verify`) hold for every family: a NaN in a weight
    names the tensor by its HF name, and another family's tokenizer is refused."""
    from safetensors.numpy import load_file, save_file

    folder = shutil.copytree(hf_folders[family], tmp_path / "damaged")
    tensors = load_file(folder / "model.safetensors")
    name = max(tensors, key=lambda k: tensors[k].size)  # the word embeddings
    tensors[name] = tensors[name].copy()
    tensors[name][1, 2] = np.nan
    save_file(tensors, folder / "model.safetensors")
    with pytest.raises(verify.ModelFolderError, match=rf"tensor '{re.escape(name)}' has 1 non-finite value"):
        siamjax.SentenceEncoder.from_pretrained(folder)
    other = hf_folders["modernbert" if family != "modernbert" else "mpnet"]
    for path in folder.glob("*"):
        if path.name not in ("config.json", "model.safetensors"):
            path.unlink()
    for path in other.glob("*"):
        if path.name not in ("config.json", "model.safetensors"):
            shutil.copy(path, folder / path.name)
    with pytest.raises(verify.ModelFolderError, match=r"the tokenizer has \d+ tokens (for|but)"):
        siamjax.SentenceEncoder.from_pretrained(folder, verify_weights=False)


def test_mpnet_buckets_equal_transformers_for_every_distance():
    import torch
    from transformers.models.mpnet.modeling_mpnet import MPNetEncoder

    index = torch.arange(600)
    theirs = MPNetEncoder.relative_position_bucket(index[None, :] - index[:, None]).numpy()
    np.testing.assert_array_equal(relative_position_buckets(600), theirs)


def test_released_configs_parse_to_their_maths():
    mpnet = families.config_from_hf(RELEASED["mpnet"], "all-mpnet-base-v2/config.json")
    assert (mpnet.layer_norm_eps, mpnet.max_tokens, mpnet.relative_attention_num_buckets) == (1e-5, 512, 32)
    distil = families.config_from_hf(RELEASED["distilbert"], "msmarco-distilbert-base-v4/config.json")
    assert (distil.hidden_size, distil.num_hidden_layers, distil.hidden_dim, distil.max_tokens) == (768, 6, 3072, 512)
    modern = families.config_from_hf(RELEASED["modernbert"], "gte-modernbert-base/config.json")
    assert [i for i, t in enumerate(modern.layer_types) if t == "full_attention"] == list(range(0, 22, 3))
    assert (modern.global_rope_theta, modern.local_rope_theta, modern.local_attention) == (160000.0, 10000.0, 128)
    assert not (modern.norm_bias or modern.attention_bias or modern.mlp_bias) and modern.max_tokens == 8192


def test_modernbert_config_old_and_new_style_agree():
    """transformers 5 writes layer_types/rope_parameters; the released files use the older keys."""
    from transformers import ModernBertConfig as TorchConfig

    released = {**RELEASED["modernbert"], "num_hidden_layers": 5, "global_attn_every_n_layers": 2,
                "global_rope_theta": 1234.0, "local_rope_theta": 55.0}
    old = families.config_from_hf(released, "old")
    new = families.config_from_hf(TorchConfig.from_dict(released).to_dict(), "new")
    assert old == new and old.layer_types == ("full_attention", "sliding_attention") * 2 + ("full_attention",)
    written = old.to_hf({"classifier_pooling": "cls"})
    torch_cfg = TorchConfig.from_dict(written)
    assert list(torch_cfg.layer_types) == list(old.layer_types) and written["global_attn_every_n_layers"] == 2
    assert torch_cfg.rope_parameters["sliding_attention"]["rope_theta"] == 55.0
    assert families.config_from_hf(written, "again") == old and written["classifier_pooling"] == "cls"
    irregular = dataclasses.replace(old, layer_types=("full_attention",) * 4 + ("sliding_attention",))
    assert "global_attn_every_n_layers" not in irregular.to_hf(written)
    # transformers reads a `sliding_window` key as the half window, overriding local_attention
    half = {**released, "sliding_window": 16}
    assert families.config_from_hf(half, "w").local_attention == TorchConfig.from_dict(half).local_attention == 32
    assert "sliding_window" not in families.config_from_hf(half, "w").to_hf(half)


def test_unsupported_configs_name_file_and_field():
    with pytest.raises(ValueError, match=r"x/config\.json: unknown architecture model_type='gpt2'; siamjax "
                                         r"supports bert, camembert, distilbert, gemma3_text, llama, mistral, "
                                         r"modernbert, mpnet, qwen3, roberta, xlm-roberta"):
        families.config_from_hf({"model_type": "gpt2"}, "x/config.json")
    with pytest.raises(ValueError, match=r"m/config\.json: RoPE scaling .*linear.* not supported"):
        families.config_from_hf({**RELEASED["modernbert"], "rope_scaling": {"rope_type": "linear", "factor": 2}},
                                "m/config.json")
    with pytest.raises(ValueError, match=r"m/config\.json: layer_types must list 22 entries"):
        families.config_from_hf({**RELEASED["modernbert"], "layer_types": ["full_attention"]}, "m/config.json")
    with pytest.raises(ValueError, match=r"m/config\.json: hidden_act='swiglu' is not supported"):
        families.config_from_hf({**RELEASED["mpnet"], "hidden_act": "swiglu"}, "m/config.json")
    with pytest.raises(ValueError, match=r"m/config\.json: no model_type"):
        families.config_from_hf({"architectures": ["T5Model"]}, "m/config.json")
    # old folders without model_type: the family comes from the architecture name
    no_type = {k: v for k, v in RELEASED["distilbert"].items() if k != "model_type"}
    assert families.config_from_hf(no_type, "tas-b/config.json").model_type == "distilbert"


def test_sliding_window_stops_at_packed_text_boundaries(minilm_dir):
    """A window smaller than the texts, rows holding several texts: packed == each text alone."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(minilm_dir))
    cfg = ModernBertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, intermediate_size=48, num_hidden_layers=3,
                           num_attention_heads=2, local_attention=6, layer_types=("sliding_attention",) * 3,
                           initializer_range=0.2, pad_token_id=0)
    model = siamjax.SentenceEncoder.from_config(cfg, tokenizer, pooling=("mean", "cls"), max_seq_length=64)
    rng = np.random.default_rng(0)
    ids = [list(rng.integers(1000, 5000, size=int(n))) for n in rng.integers(2, 30, size=12)]
    packed = rows.pack(ids, row_length=64)
    assert packed["input_ids"].shape[0] < len(ids)  # several texts per row
    encode = jax.jit(model.encode_fn)
    got = np.asarray(encode(model.params, packed))
    alone = np.concatenate([np.asarray(encode(model.params, rows.pad_rows([x], 32))) for x in ids])
    np.testing.assert_allclose(got, alone, rtol=1e-5, atol=1e-5)
    wide = dataclasses.replace(cfg, local_attention=64)
    other = siamjax.SentenceEncoder(dataclasses.replace(model.spec, transformer=wide), model.params, tokenizer, 64)
    assert np.abs(np.asarray(jax.jit(other.encode_fn)(other.params, packed)) - got).max() > 1e-3  # the window bites
