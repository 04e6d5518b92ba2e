"""Training decoder-LLM embedders: the FSDP=8 step equals the 1-device step with Gemma 3's 262k
vocabulary split 8 ways, bfloat16 weights with float32 Adam moments, and the
`configs/llm_embedder.py` preset run end to end on tiny random Gemma 3 and Qwen3 folders.
"""
import dataclasses
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors import safe_open

from siamjax import losses, parallel
from siamjax.cli import main as cli_main
from siamjax.data.tokenization import tokenize_sides
from siamjax.encoder import SentenceEncoder
from siamjax.train import optim, state as train_state, step as train_step
from siamjax.train.config import ConfigError
from siamjax.train.config_checks import validate as validate_config
from siamjax.train.config_file import load_config
from encoder_fixtures import varied_sentences
from decoder_fixtures import build_hf_folder, st_folder

pytestmark = pytest.mark.slow  # several minutes: scheduled first (tests/conftest.py)

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs"
MAX_SEQ_LENGTH = 32
BATCH = 16
GEMMA_VOCAB = 262_144  # EmbeddingGemma's vocabulary (the tiny tokenizer uses its first ~700 ids)


@pytest.fixture(scope="module")
def sentences(stsb_dir):
    return varied_sentences(stsb_dir, n_sts=120)[:120]


@pytest.fixture(scope="module")
def folders(tmp_path_factory, sentences):
    root = tmp_path_factory.mktemp("decoder-train")
    gemma = build_hf_folder("gemma3", root / "gemma3-hf", corpus=sentences)
    qwen = build_hf_folder("qwen3", root / "qwen3-hf", corpus=sentences)
    return {"gemma3": st_folder(gemma, root / "gemma3", pooling=("mean",), max_seq_length=MAX_SEQ_LENGTH,
                                dense=(96, 64)),
            "qwen3": st_folder(qwen, root / "qwen3", pooling=("lasttoken",), max_seq_length=MAX_SEQ_LENGTH)}


def triplet_batch(encoder, sentences, step=0):
    """BATCH (anchor, positive, hard negative) triplets of real sentences of mixed lengths."""
    start = step * 3 * BATCH
    sides = [sentences[start + k * BATCH:start + (k + 1) * BATCH] for k in range(3)]
    return tokenize_sides(encoder.tokenizer, sides, max_seq_length=MAX_SEQ_LENGTH)


def one_step(encoder, mesh, batch, **optim_kwargs):
    """(loss, encoder params after one AdamW step, the state) on `mesh`."""
    optimizer = optim.make_optimizer(1e-3, **optim_kwargs)
    state, shardings = train_state.create_train_state({"encoder": encoder.params, "loss": {}}, optimizer,
                                                      jax.random.PRNGKey(1), mesh, 2**10)
    step = train_step.make_train_step(encoder.encode_fn, losses.get_loss("mnrl"), optimizer, dropout=True)
    state, metrics = train_step.compile_train_step(step, shardings, batch, mesh)(state, batch)
    return float(metrics["loss"]), jax.device_get(state.params["encoder"]), state


def gemma_262k(folder, remat: bool) -> SentenceEncoder:
    """The tiny Gemma folder's model with EmbeddingGemma's 262,144-row vocabulary (random weights;
    the tokenizer uses the first ~700 rows)."""
    small = SentenceEncoder.from_pretrained(folder)
    config = dataclasses.replace(small.spec.transformer, vocab_size=GEMMA_VOCAB)
    return SentenceEncoder.from_config(config, small.tokenizer, pooling="mean", dense_dim=(96, 64), normalize=True,
                                       max_seq_length=MAX_SEQ_LENGTH, remat=remat, seed=3)


@pytest.mark.parametrize("family", ["gemma3", "qwen3"])
def test_fsdp8_step_equals_one_device_step(family, folders, sentences):
    """MNRL with hard negatives, one AdamW step: 8 devices with mesh.fsdp=8 and remat == 1 device;
    Gemma's 262,144 x 64 embedding is split along the vocabulary, 32,768 rows per device."""
    load = (lambda remat: gemma_262k(folders[family], remat)) if family == "gemma3" else (
        lambda remat: SentenceEncoder.from_pretrained(folders[family], remat=remat))
    encoder = load(False)
    batch = triplet_batch(encoder, sentences)
    one = parallel.make_mesh(1, 1, devices=jax.devices()[:1])
    eight = parallel.make_mesh(1, 8, devices=jax.devices()[:8])
    loss_1, params_1, _ = one_step(encoder, one, batch)
    remat = load(True)
    with jax.set_mesh(eight):
        loss_8, params_8, state = one_step(remat, eight, batch)
    embedding = state.params["encoder"]["encoder"]["embed_tokens"]["embedding"]
    rows = encoder.spec.transformer.vocab_size
    assert {s.data.shape for s in embedding.addressable_shards} == {(rows // 8, 64)}
    assert str(embedding.sharding.spec) == str(jax.sharding.PartitionSpec("fsdp", None))
    mu = state.opt_state[1][0].mu["encoder"]["encoder"]["embed_tokens"]["embedding"]  # (clip, adamw) chain
    assert mu.sharding.spec == embedding.sharding.spec, "Adam moments follow their parameter's layout"
    if family == "gemma3":
        assert rows == GEMMA_VOCAB
    assert abs(loss_8 - loss_1) <= 1e-5
    moved = jax.tree.map(lambda a, b: float(np.abs(np.asarray(a) - np.asarray(b)).max()), params_1, encoder.params)
    assert max(jax.tree.leaves(moved)) > 1e-4, "the step should change the weights"
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5, rtol=0), params_8, params_1)


def test_bf16_weights_train_with_float32_moments(folders, sentences):
    """param_dtype=bfloat16: weights stay bf16 through a step, Adam's moments are float32
    (float32_moments=False: bf16), and the bf16 step follows the float32 one."""
    f32 = SentenceEncoder.from_pretrained(folders["qwen3"])
    bf16 = SentenceEncoder.from_pretrained(folders["qwen3"], dtype="bfloat16", param_dtype="bfloat16")
    batch = triplet_batch(f32, sentences, step=1)
    mesh = parallel.make_mesh(1, 1, devices=jax.devices()[:1])
    loss_ref, params_ref, _ = one_step(f32, mesh, batch)
    loss, params, state = one_step(bf16, mesh, batch)
    kernel = lambda tree: tree["encoder"]["layers"]["0"]["q_proj"]["kernel"]
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(params))
    assert kernel(state.opt_state[1][0].nu["encoder"]).dtype == jnp.float32
    low = optim.make_optimizer(1e-3, float32_moments=False).init({"encoder": bf16.params, "loss": {}})
    assert kernel(low[1][0].nu["encoder"]).dtype == jnp.bfloat16
    assert abs(loss - loss_ref) < 0.02 * abs(loss_ref)
    moved_ref = np.asarray(kernel(params_ref)) - np.asarray(kernel(f32.params))
    moved = np.asarray(kernel(params), np.float32) - np.asarray(kernel(bf16.params), np.float32)
    cos = (moved * moved_ref).sum() / np.linalg.norm(moved) / np.linalg.norm(moved_ref)
    assert cos > 0.9, f"the bf16 update should point where the float32 one does (cos {cos})"


def test_param_dtype_config_is_checked():
    with pytest.raises(ConfigError, match=r"model\.param_dtype='float16'"):
        validate_config(load_config(str(CONFIGS / "llm_embedder.py:qwen3,gpu_cluster"),
                                    ["--config.model.param_dtype=float16"]))
    with pytest.raises(ConfigError, match=r"model\.param_dtype='bfloat16' needs model\.dtype='bfloat16'"):
        validate_config(load_config(str(CONFIGS / "llm_embedder.py:qwen3,gpu_cluster"),
                                    ["--config.model.dtype=float32"]))
    with pytest.raises(ConfigError, match=r"must be 'model,mesh'"):
        load_config(str(CONFIGS / "llm_embedder.py:bert,gpu_cluster"), [])


@pytest.mark.parametrize("spec", ["gemma3,tpu_pod", "qwen3,gpu_cluster"])
def test_llm_embedder_preset_trains_tiny_folder(spec, folders, sentences, tmp_path, capsys):
    """`siamjax train --config configs/llm_embedder.py:<model>,<mesh>` with the model swapped for
    a tiny random folder and the data for a small triplet file: sharded MNRL + hard negatives,
    packed rows, GradCache over them, fsdp=8 on the 8 devices, remat, bf16; exports a folder that loads again."""
    model = spec.split(",")[0]
    data = tmp_path / "triplets.jsonl"
    data.write_text("".join(json.dumps({"anchor": sentences[i], "positive": sentences[i + 40],
                                        "negative": sentences[i + 80]}) + "\n" for i in range(40)))
    overrides = {"model.name_or_path": str(folders[model]), "model.max_seq_length": MAX_SEQ_LENGTH,
                 "data.pack_length": MAX_SEQ_LENGTH, "data.train.path": str(data), "data.train.tfds.builder": "",
                 "data.train.columns": (("anchor", "anchor"), ("positive", "positive"), ("negative", "negative")),
                 "data.nli_to_triplets": False, "data.prefetch": 1, "eval.sts.tfds.builder": "",
                 "mesh.fsdp": 8, "mesh.fsdp_min_size": 2**10, "train.batch_size": 16,
                 "train.grad_cache_tokens": MAX_SEQ_LENGTH,
                 "train.num_steps": 2, "train.progress_bar": False, "train.log_every_steps": 1,
                 "checkpoint.every_steps": 100, "export.dir": "model"}
    flags = [f"--config.{k}={v!r}" if isinstance(v, tuple) else f"--config.{k}={v}" for k, v in overrides.items()]
    config = load_config(str(CONFIGS / f"llm_embedder.py:{spec}"), flags)
    assert config.loss.name == "mnrl" and config.loss.sharded and config.model.remat
    assert config.model.dtype == "bfloat16"
    assert cli_main(["train", "--config", str(CONFIGS / f"llm_embedder.py:{spec}"), "--workdir",
                     str(tmp_path / "run"), *flags]) == 0
    assert "exported step 2" in capsys.readouterr().out
    exported = tmp_path / "run" / "model"
    with safe_open(str(exported / "model.safetensors"), framework="numpy") as f:  # weights as trained
        assert {str(f.get_tensor(k).dtype) for k in f.keys()} == {config.model.param_dtype}
    trained = SentenceEncoder.from_pretrained(exported)
    assert trained.spec == SentenceEncoder.from_pretrained(folders[model]).spec
