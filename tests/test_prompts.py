"""Prompts, encode_query/encode_document, include_prompt and truncate_dim against
sentence-transformers 6 on the real all-MiniLM-L6-v2 with a `prompts` dict added to its config;
and `encode` split over 8 devices against 1.

Each sentence-transformers output is computed once per module (module-scoped fixtures), and the
siamjax side reuses one loaded encoder per folder, so the file compiles a few shapes only.
"""
from __future__ import annotations

import json
import shutil

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from transformers import AutoTokenizer

from config_fixtures import WORDS
from encoder_fixtures import varied_sentences
from siamjax.cli import main
from siamjax.data import make_train_iterator, read_pairs
from siamjax.encoder import BertConfig, SentenceEncoder, rows
from siamjax.encoder.prompts import ModelSettings, prompt_length, read_settings
from siamjax.parallel import BATCH_AXES, make_mesh
from siamjax.train.step import make_embed_fn, split_sides

PROMPTS = {"query": "query: ", "passage": "passage: ", "sts": "Represent this sentence for similarity: "}
CUSTOM = "Instruct: find the duplicate question\nQuery: "
# (name, siamjax call, sentence-transformers call): every case of the acceptance list
CASES = [
    ("encode_query", lambda m, t: m.encode_query(t), lambda m, t: m.encode_query(t)),
    # "document" is one of every model's prompts (""), so "passage" is not picked: as in sentence-transformers
    ("encode_document", lambda m, t: m.encode_document(t), lambda m, t: m.encode_document(t)),
    ("default_prompt", lambda m, t: m.encode(t), lambda m, t: m.encode(t)),
    ("prompt_name", lambda m, t: m.encode(t, prompt_name="passage"), lambda m, t: m.encode(t, prompt_name="passage")),
    ("prompt", lambda m, t: m.encode(t, prompt=CUSTOM), lambda m, t: m.encode(t, prompt=CUSTOM)),
    # sentence-transformers truncates (then normalises) its full output: these expectations are
    # derived from its encode_query, one model call fewer each
    ("truncate", lambda m, t: m.encode_query(t, truncate_dim=128), lambda full: full[:, :128]),
    ("truncate_normalize", lambda m, t: m.encode_query(t, truncate_dim=96, normalize=True),
     lambda full: full[:, :96] / np.linalg.norm(full[:, :96], axis=-1, keepdims=True)),
]
DERIVED = {"truncate", "truncate_normalize"}


def _cosines(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.sum(a * b, -1) / np.maximum(np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1), 1e-30)


@pytest.fixture(scope="module")
def texts(stsb_dir):
    """52 texts: STS-b, empty, non-ASCII and one truncated at max_seq_length (its prompt stays)."""
    return varied_sentences(stsb_dir, n_sts=35)[:-2]


def _prompted_folder(src, dst, include_prompt: bool):
    shutil.copytree(src, dst)
    config = json.loads((dst / "config_sentence_transformers.json").read_text())
    config.update(prompts=PROMPTS, default_prompt_name="sts", my_own_key={"kept": True})
    (dst / "config_sentence_transformers.json").write_text(json.dumps(config))
    pooling = json.loads((dst / "1_Pooling" / "config.json").read_text())
    (dst / "1_Pooling" / "config.json").write_text(json.dumps({**pooling, "include_prompt": include_prompt}))
    return dst


@pytest.fixture(scope="module")
def models(minilm_dir, tmp_path_factory, texts):
    """include_prompt -> (siamjax encoder, {case: sentence-transformers output})."""
    from sentence_transformers import SentenceTransformer

    out = {}
    for include in (True, False):
        folder = _prompted_folder(minilm_dir, tmp_path_factory.mktemp("prompted") / "model", include)
        st = SentenceTransformer(str(folder), device="cpu")
        expected = {name: np.asarray(st_call(st, texts), np.float64) for name, _, st_call in CASES
                    if name not in DERIVED}
        expected |= {name: derive(expected["encode_query"]) for name, _, derive in CASES if name in DERIVED}
        out[include] = (SentenceEncoder.from_pretrained(folder), expected)
    return out


def test_every_prompt_case_matches_sentence_transformers_packed_and_padded(models, texts):
    """Packed (`encode`) for every case; one text per right-padded row through the pure encode_fn
    with the prompt mask the trainer gives it, for encode_query; include_prompt true and false."""
    for include, (ours, expected) in models.items():
        assert ours.prompts == {"query": "query: ", "document": "", **PROMPTS} and ours.default_prompt_name == "sts"
        assert ours.spec.pooling.include_prompt is include
        for name, call, _ in CASES:
            got = call(ours, texts)
            assert got.shape == expected[name].shape, name
            worst = _cosines(got, expected[name]).min()
            assert worst >= 0.99999, (include, name, worst)
        assert np.allclose(np.linalg.norm(CASES[-1][1](ours, texts), axis=-1), 1.0, atol=1e-5)
        skip = prompt_length(ours.tokenizer, "query: ", ours.max_seq_length)
        assert skip == 3  # [CLS] query : (the trailing [SEP] is not prompt)
        batch = ours.pad(ours.token_ids(["query: " + t for t in texts]))
        batch["prompt_mask"] = rows.prompt_mask(batch["attention_mask"], skip)
        got = np.asarray(jax.jit(ours.encode_fn)(ours.params, batch))
        assert _cosines(got, expected["encode_query"]).min() >= 0.99999, include
    # the exclude case is not the include case under another name: pooling really drops tokens
    assert _cosines(models[True][1]["encode_query"], models[False][1]["encode_query"]).min() < 0.999


def test_settings_round_trip_and_load_in_sentence_transformers(models, texts, tmp_path):
    """Saving keeps prompts, default prompt, similarity, truncate_dim, include_prompt and unknown keys;
    sentence-transformers reads them back and encodes as siamjax does."""
    from sentence_transformers import SentenceTransformer

    ours, _ = models[False]
    saved = ours.with_settings(similarity_fn_name="dot", truncate_dim=192).save(tmp_path / "out")
    raw = json.loads((saved / "config_sentence_transformers.json").read_text())
    assert raw["my_own_key"] == {"kept": True} and raw["prompts"]["sts"] == PROMPTS["sts"]
    back = SentenceEncoder.from_pretrained(saved)
    assert back.settings == read_settings(saved / "config_sentence_transformers.json")
    assert (back.similarity_fn_name, back.truncate_dim, back.default_prompt_name) == ("dot", 192, "sts")
    assert back.spec.pooling.include_prompt is False
    st = SentenceTransformer(str(saved), device="cpu")
    assert (st.similarity_fn_name, st.truncate_dim) == ("dot", 192)
    got = back.encode_query(texts[:16])
    assert got.shape == (16, 192)
    assert _cosines(got, st.encode_query(texts[:16])).min() >= 0.99999
    assert np.allclose(back.similarity(got[:3], got[3:5]), got[:3] @ got[3:5].T, rtol=1e-5)
    # the CLI: `siamjax encode --prompt-name query --truncate-dim 64` (bad names: exit 2, no traceback)
    (tmp_path / "in.txt").write_text("\n".join(texts[:16]) + "\n")
    argv = ["encode", "--model", str(saved), "--input", str(tmp_path / "in.txt"), "--quiet"]
    assert main(argv + ["--output", str(tmp_path / "q.npy"), "--prompt-name", "query", "--truncate-dim", "64"]) == 0
    lines = (tmp_path / "in.txt").read_text().splitlines()
    assert _cosines(np.load(tmp_path / "q.npy"), back.encode_query(lines, truncate_dim=64)).min() >= 0.99999
    assert main(argv + ["--output", str(tmp_path / "x.npy"), "--prompt-name", "nope"]) == 2
    assert main(argv + ["--output", str(tmp_path / "x.npy"), "--truncate-dim", "999"]) == 2


def test_bad_settings_are_one_clear_error(models, tmp_path):
    ours, _ = models[False]
    with pytest.raises(ValueError, match="prompt name 'nope' is not one of"):
        ours.encode(["a"], prompt_name="nope")
    with pytest.raises(ValueError, match=r"truncate_dim must be an integer in \[1, 384\]"):
        ours.encode(["a"], truncate_dim=385)
    path = tmp_path / "config_sentence_transformers.json"
    path.write_text(json.dumps({"prompts": {"query": "q: "}, "default_prompt_name": "doc"}))
    with pytest.raises(ValueError, match=f"{path}: default_prompt_name 'doc' is not one of"):
        read_settings(path)
    path.write_text(json.dumps({"similarity_fn_name": "maxsim"}))
    with pytest.raises(ValueError, match="similarity_fn_name 'maxsim'"):
        read_settings(path)
    assert ModelSettings().resolve_prompt() == ""


def test_encode_splits_rows_over_8_devices_like_1(models, texts):
    """Rows (and text_index's shards) are split over ('data', 'fsdp'); embeddings equal 1 device's."""
    ours, _ = models[False]
    mesh8, mesh1 = make_mesh(data=4, fsdp=2), make_mesh(devices=jax.devices()[:1])
    one = ours.encode_query(texts, mesh=mesh1)
    eight = ours.encode_query(texts, mesh=mesh8)
    assert _cosines(eight, one).min() >= 0.99999
    ids = ours.token_ids(texts)
    row_length, n_rows, layout = ours.plan_calls(ids, 64, num_devices=8)[0]
    assert n_rows % 8 == 0
    order, batch = rows.call_batch(ids, layout, row_length=row_length, rows=n_rows, num_shards=8)
    placed = ours.place_call(batch, mesh8)
    for key in ("input_ids", "attention_mask", "text_index"):
        assert placed[key].sharding.spec == P(BATCH_AXES), key
        shards = placed[key].addressable_shards
        assert len({s.device for s in shards}) == 8
        assert all(s.data.shape[0] == placed[key].shape[0] // 8 for s in shards), key
    out = ours.encode_call(batch, mesh8)
    assert out.sharding.spec == P(BATCH_AXES) and len(out.addressable_shards) == 8
    assert sorted(order[order >= 0].tolist()) == sorted(i for row in layout for i in row)


def test_training_batches_leave_the_prompt_out_of_pooling_padded_and_packed(minilm_dir, tmp_path):
    """With include_prompt=False the pipeline's `prompt_mask` (each side's own prompt length)
    reaches pooling in the train step: padded and packed batches embed like `encode(prompt=)`."""
    tokenizer = AutoTokenizer.from_pretrained(minilm_dir)
    bert = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                      intermediate_size=64, max_position_embeddings=64)
    enc = SentenceEncoder.from_config(bert, tokenizer, include_prompt=False, max_seq_length=32, seed=1)
    rng = np.random.default_rng(0)
    with open(tmp_path / "pairs.jsonl", "w") as f:
        for i in range(16):
            words = rng.choice(WORDS, size=(2, int(rng.integers(1, 9))))
            f.write(json.dumps({"a": " ".join(words[0]) + f" {i}", "b": " ".join(words[1]) + f" {i}"}) + "\n")
    data = read_pairs(tmp_path / "pairs.jsonl", columns={"anchor": "a", "positive": "b"})
    kwargs = dict(global_batch_size=16, max_seq_length=32, seed=0, prefetch=0, mask_prompts=True,
                  prompts=[{"anchor": "query: "}])
    batches = {}
    for name, extra in (("padded", {}), ("packed", {"pack_length": 64, "num_shards": 8})):
        it = make_train_iterator([data], tokenizer, **kwargs, **extra)
        batches[name] = next(it)
        it.close()
    padded = batches["padded"]
    assert (padded["prompt_mask"][0].sum(-1) == 3).all() and not padded["prompt_mask"][1].any()
    embed = jax.jit(make_embed_fn(enc.encode_fn), static_argnums=2)
    emb = {name: np.asarray(embed(enc.params, split_sides(b), None)) for name, b in batches.items()}
    assert _cosines(emb["padded"], emb["packed"]).min() >= 0.99999
    where = {tuple(ids): i for i, ids in enumerate(enc.token_ids(["query: " + a for a in data.texts[0]]))}
    order = [where[tuple(row[:n])] for row, n in zip(padded["input_ids"][0], padded["attention_mask"][0].sum(-1))]
    expected = enc.encode(list(data.texts[0]), prompt="query: ")[order]
    assert _cosines(emb["padded"][0], expected).min() >= 0.99999
    unmasked = np.asarray(embed(enc.params, {k: v for k, v in split_sides(padded).items() if k != "prompt_mask"},
                                None))
    assert _cosines(unmasked[0], expected).min() < 0.999  # the mask is what makes them equal
