"""LoRA on the tiny random Qwen3 and Gemma 3 folders: one 3-step MNRL + hard-negative run on one
device shared by the checks (only adapters move, the base is bit-identical, optimizer state
only for adapters), the same run on 8 devices (fsdp=4 x data=2) with GradCache and the sharded
loss, the merged export loaded by sentence-transformers, and the PEFT folder loaded by `peft`
and by sentence-transformers' `load_adapter`.
"""
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from peft import PeftModel
from sentence_transformers import SentenceTransformer
from transformers import AutoModel, BertConfig, BertModel

from siamjax import parallel
from siamjax.data.tokenization import tokenize_sides
from siamjax.encoder import SentenceEncoder, lora, peft_folder
from siamjax.losses import make_grad_cache_value_and_grad
from siamjax.cli import main as cli_main
from siamjax.train import builders, load_trained_encoder
from siamjax.train.config import ConfigError, default_config, lora_config
from siamjax.train.state import create_train_state, encoder_params
from siamjax.train.step import compile_train_step, make_train_step
from encoder_fixtures import varied_sentences
from decoder_fixtures import build_hf_folder, st_folder

pytestmark = pytest.mark.slow

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs"
MAX_SEQ_LENGTH = 32
BATCH = 16
STEPS = 3
LAYERS = 2
ALL_TARGETS = ("q", "k", "v", "o", "gate", "up", "down")


@pytest.fixture(scope="module")
def sentences(stsb_dir):
    return varied_sentences(stsb_dir, n_sts=160)[:150]


@pytest.fixture(scope="module")
def folders(tmp_path_factory, sentences):
    root = tmp_path_factory.mktemp("lora")
    qwen = build_hf_folder("qwen3", root / "qwen3-hf", corpus=sentences, num_hidden_layers=LAYERS)
    gemma = build_hf_folder("gemma3", root / "gemma3-hf", corpus=sentences)
    return {"qwen3": st_folder(qwen, root / "qwen3", pooling=("lasttoken",), max_seq_length=MAX_SEQ_LENGTH),
            "gemma3": st_folder(gemma, root / "gemma3", pooling=("mean",), max_seq_length=MAX_SEQ_LENGTH,
                                dense=(96, 64))}


def lora_run_config(folder, **lora):
    """A LoRA run's config: rank 4 on every projection, a constant high learning rate so that
    three steps move the adapters far from their zero start."""
    c = default_config()
    c.model.name_or_path = str(folder)
    c.model.max_seq_length = MAX_SEQ_LENGTH
    c.model.lora.update(dict(rank=4, alpha=8.0, targets=ALL_TARGETS) | lora)
    c.optim.update(lr=1e-2, warmup_steps=0, schedule="constant")
    c.mesh.fsdp_min_size = 2**10
    c.train.batch_size = BATCH
    return c


def batches(tokenizer, sentences):
    """STEPS batches of BATCH (anchor, positive, hard negative) triplets."""
    out = []
    for step in range(STEPS):
        texts = sentences[step * BATCH:(step + 3) * BATCH]
        out.append(tokenize_sides(tokenizer, [texts[k * BATCH:(k + 1) * BATCH] for k in range(3)],
                                  max_seq_length=MAX_SEQ_LENGTH))
    return out


def train(config, mesh, sentences, grad_cache_chunk=None):
    """(parts, the base before training (host copy), state after STEPS steps, losses) of a run."""
    parts = builders.build_parts(config, mesh, total_steps=STEPS, num_labels={builders.RUN_LOSS: None})
    loss_fn = parts.loss_fns[builders.RUN_LOSS]
    state, shardings = create_train_state(parts.params, parts.optimizer, parts.dropout_rng, mesh,
                                          config.mesh.fsdp_min_size, parts.frozen)
    base = jax.tree.map(np.array, jax.device_get(state.frozen["encoder"]))
    value_and_grad = None if grad_cache_chunk is None else make_grad_cache_value_and_grad(
        parts.encode_fn, loss_fn, grad_cache_chunk)
    data = batches(parts.encoder.tokenizer, sentences)
    step = compile_train_step(make_train_step(parts.encode_fn, loss_fn, parts.optimizer, dropout=False,
                                              value_and_grad_fn=value_and_grad), parts.shardings, data[0], mesh)
    losses = []
    for batch in data:
        state, metrics = step(state, batch)
        losses.append(float(metrics["loss"]))
    return parts, base, state, losses


@pytest.fixture(scope="module")
def qwen_run(folders, sentences):
    """The one-device run every check below reads."""
    mesh = parallel.make_mesh(1, 1, devices=jax.devices()[:1])
    with jax.set_mesh(mesh):
        return train(lora_run_config(folders["qwen3"]), mesh, sentences)


def nbytes(tree) -> int:
    return sum(int(np.prod(x.shape)) * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))


def paths(tree) -> list[tuple[str, ...]]:
    return [tuple(k.key for k in path) for path, _ in jax.tree_util.tree_leaves_with_path(tree)]


def test_only_adapters_train_and_the_base_is_bit_identical(qwen_run, folders):
    parts, base_before, state, losses = qwen_run
    trained = jax.device_get(state.params["encoder"])
    assert all(np.isfinite(losses))
    assert {p[-1] for p in paths(trained)} == {"lora_a", "lora_b"}
    assert len(paths(trained)) == 2 * 7 * LAYERS, "A and B on the 7 projections of every layer"
    # the frozen base after 3 steps: bit for bit what was loaded from the folder
    base_after = jax.device_get(state.frozen["encoder"])
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), b), base_after, base_before)
    loaded = SentenceEncoder.from_pretrained(folders["qwen3"]).params
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), base_before, loaded)
    # every B moved away from its zero start, every A from its random start
    start = parts.params["encoder"]
    moved = jax.tree.map(lambda a, b: float(np.abs(np.asarray(a) - np.asarray(b)).max()), trained, start)
    assert min(jax.tree.leaves(moved)) > 1e-4
    # optimizer state: Adam's two moments of the adapters, nothing for the base
    mu = state.opt_state[1][0].mu  # (clip, adamw) chain
    assert paths(mu["encoder"]) == paths(trained)
    assert nbytes(state.opt_state) <= 2 * nbytes(state.params) + 64


def test_sharded_gradcache_run_equals_one_device(qwen_run, folders, sentences):
    """8 devices (data=2 x fsdp=4), GradCache chunks of 8 pairs, MNRL with candidates gathered
    from every device: the same losses and adapters as the one-device run."""
    _, _, state_1, losses_1 = qwen_run
    mesh = parallel.make_mesh(2, 4, devices=jax.devices()[:8])
    config = lora_run_config(folders["qwen3"])
    config.loss.sharded = True
    with jax.set_mesh(mesh):
        _, _, state_8, losses_8 = train(config, mesh, sentences, grad_cache_chunk=8)
        kernel = state_8.frozen["encoder"]["encoder"]["layers"]["0"]["gate_proj"]["kernel"]
        assert kernel.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp"), "the base is FSDP-sharded"
    np.testing.assert_allclose(losses_8, losses_1, atol=1e-5, rtol=0)
    # Adam's first steps move every weight by about lr = 1e-2 whatever its gradient's size, so
    # float rounding in near-zero gradients shows at ~1e-3 of a step: 5e-5 is 0.5% of one step
    jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=5e-5, rtol=0),
                 jax.device_get(state_8.params["encoder"]), jax.device_get(state_1.params["encoder"]))


def trained_encoder(qwen_run) -> SentenceEncoder:
    parts, _, state, _ = qwen_run
    return parts.encoder.with_params(jax.device_get(encoder_params(state.params, state.frozen)))


def cosines(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)


def test_merged_export_is_the_adapter_forward(qwen_run, sentences, tmp_path):
    """`save` folds the adapters into the weights: a plain folder that sentence-transformers and
    siamjax load, embedding as the adapter model does."""
    encoder = trained_encoder(qwen_run)
    texts = sentences[-40:]
    adapter = encoder.encode(texts)
    folder = encoder.save(tmp_path / "merged")
    reloaded = SentenceEncoder.from_pretrained(folder)
    assert reloaded.spec.lora is None
    assert cosines(reloaded.encode(texts), adapter).min() >= 0.99999
    st = SentenceTransformer(str(folder), device="cpu").encode(texts, convert_to_numpy=True)
    assert cosines(st, adapter).min() >= 0.99999


def test_peft_folder_loads_in_peft_and_sentence_transformers(qwen_run, folders, sentences, tmp_path):
    """The PEFT folder on the HF base: `PeftModel.from_pretrained` (last-token states of
    left-padded rows) and sentence-transformers' `load_adapter` embed as siamjax's adapter model."""
    encoder = trained_encoder(qwen_run)
    texts = sentences[-40:]
    adapter = encoder.encode(texts)
    peft_dir = encoder.save_adapter(tmp_path / "adapter", base_model_name_or_path=str(folders["qwen3"]))
    model = PeftModel.from_pretrained(AutoModel.from_pretrained(str(folders["qwen3"])), str(peft_dir)).eval()
    assert model.peft_config["default"].r == 4
    tokens = encoder.tokenizer(texts, padding=True, truncation=True, max_length=MAX_SEQ_LENGTH, return_tensors="pt")
    assert encoder.tokenizer.padding_side == "left"
    with torch.no_grad():
        last = model(**tokens).last_hidden_state[:, -1].numpy()
    assert cosines(last, adapter).min() >= 0.99999
    st = SentenceTransformer(str(folders["qwen3"]), device="cpu")
    plain = st.encode(texts, convert_to_numpy=True)
    st.load_adapter(str(peft_dir))
    assert cosines(st.encode(texts, convert_to_numpy=True), adapter).min() >= 0.99999
    assert cosines(plain, adapter).min() < 0.999, "the adapters must change the embeddings"


@pytest.mark.parametrize("family", ["qwen3", "gemma3"])
def test_optimizer_state_is_a_few_percent_of_full_fine_tuning(family, folders):
    """Abstract states (nothing allocated): rank-4 q/v adapters' Adam moments vs full
    fine-tuning's, and the frozen base stored in bf16 (`base_dtype`)."""
    mesh = parallel.make_mesh(1, 1, devices=jax.devices()[:1])
    build = lambda config: builders.build_parts(config, mesh, total_steps=1, num_labels={builders.RUN_LOSS: None})
    full = build(lora_run_config(folders[family], rank=0))
    parts = build(lora_run_config(folders[family], targets=("q", "v"), base_dtype="bfloat16"))
    full_bytes, lora_bytes = nbytes(full.abstract.opt_state), nbytes(parts.abstract.opt_state)
    print(f"{family}: optimizer state {lora_bytes} B with LoRA vs {full_bytes} B ({lora_bytes / full_bytes:.2%})")
    assert lora_bytes <= 0.05 * full_bytes
    assert {x.dtype for x in jax.tree.leaves(parts.abstract.frozen["encoder"])} == {jnp.dtype(jnp.bfloat16)}
    assert {x.dtype for x in jax.tree.leaves(parts.abstract.params["encoder"])} == {jnp.dtype(jnp.float32)}
    assert "dense" not in parts.abstract.params["encoder"]
    heads, _ = lora.split_trainable(parts.encoder.params, train_heads=True)
    assert ("dense" in heads) == (family == "gemma3"), "train_heads trains the Dense heads (Gemma's 2_Dense, 3_Dense)"


def test_lora_dropout_only_in_training(folders):
    """Dropout acts on an adapter's input when given a key, never without one; every wrapped
    projection of the decoder gets its key (one Bernoulli draw each in the traced forward)."""
    config = lora.LoRAConfig(rank=2, alpha=4.0, dropout=0.5)
    layer = lora.LoRALinear(nnx.Linear(8, 4, rngs=nnx.Rngs(0)), config, rngs=nnx.Rngs(1))
    layer.lora_b[...] = jnp.ones((2, 4))
    x_2x8 = jax.random.normal(jax.random.PRNGKey(2), (2, 8))
    expected = x_2x8 @ layer.kernel[...] + layer.bias[...] + 2.0 * (x_2x8 @ layer.lora_a[...]) @ layer.lora_b[...]
    np.testing.assert_allclose(layer(x_2x8), expected, rtol=1e-6)
    assert float(jnp.abs(layer(x_2x8, rng=jax.random.PRNGKey(3)) - expected).max()) > 1e-3
    encoder = SentenceEncoder.from_pretrained(folders["qwen3"]).with_lora(
        lora.LoRAConfig(rank=2, dropout=0.1, targets=ALL_TARGETS))
    batch = encoder.tokenize(["a short text", "another one"])
    draws = lambda rng: str(jax.make_jaxpr(lambda p: encoder.encode_fn(p, batch, rng=rng))(encoder.params)).count(
        "name=_bernoulli")
    assert draws(None) == 0
    assert draws(jax.random.PRNGKey(0)) == 7 * LAYERS, "one dropout mask per wrapped projection"


def test_lora_config_errors_name_the_field(folders):
    for field, value, message in [("rank", -1, r"model\.lora\.rank=-1"), ("targets", ("q", "x"), r"targets="),
                                  ("dropout", 1.0, r"model\.lora\.dropout=1\.0"),
                                  ("base_dtype", "float16", r"model\.lora\.base_dtype='float16'")]:
        config = lora_run_config(folders["qwen3"], **{field: value})
        with pytest.raises(ConfigError, match=message):
            lora_config(config.model.lora)
    config = lora_run_config(folders["qwen3"])
    config.model.name_or_path = ""
    config.model.init.tokenizer = str(folders["qwen3"])
    config.model.init.update(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    with pytest.raises(ConfigError, match=r"model\.lora\.targets=.*'gate'.* do not exist in 'bert'"):
        builders.build_encoder(config.model, 0)
    # BERT-like blocks take the other six; their PEFT module names are BertModel's own
    config.model.lora.targets = ("q", "k", "v", "o", "up", "down")
    bert = builders.build_encoder(config.model, 0)
    names = set(peft_folder.module_names(bert.spec, bert.params).values())
    hf = dict(BertModel(BertConfig(**bert.spec.transformer.to_hf({}))).named_modules())
    assert len(names) == 6 and all(isinstance(hf[n], torch.nn.Linear) for n in names)
    assert "encoder.layer.0.attention.output.dense" in names


def test_siamjax_train_and_export_a_lora_run(folders, sentences, tmp_path, capsys):
    """`siamjax train` with LoRA on the LLM preset (8 devices, fsdp=8, packed rows, sharded MNRL +
    hard negatives, LoRA dropout; GradCache and remat off here, the 8-device test above covers
    GradCache), then `siamjax export --adapter`: the merged folder embeds as the run's adapter
    model (restored with its frozen base from the checkpoint), the PEFT folder holds every adapter."""
    data = tmp_path / "triplets.jsonl"
    data.write_text("".join(json.dumps({"anchor": sentences[i], "positive": sentences[i + 40],
                                        "negative": sentences[i + 80]}) + "\n" for i in range(40)))
    overrides = {"model.name_or_path": str(folders["qwen3"]), "model.max_seq_length": MAX_SEQ_LENGTH,
                 "model.dtype": "float32", "model.param_dtype": "float32", "model.lora.rank": 4,
                 "model.lora.targets": ("q", "k", "v", "o"), "model.lora.dropout": 0.1,
                 "data.pack_length": MAX_SEQ_LENGTH, "data.train.path": str(data), "data.train.tfds.builder": "",
                 "data.train.columns": (("anchor", "anchor"), ("positive", "positive"), ("negative", "negative")),
                 "data.nli_to_triplets": False, "data.prefetch": 1, "eval.sts.tfds.builder": "",
                 "mesh.fsdp": 8, "mesh.fsdp_min_size": 2**10, "train.batch_size": BATCH,
                 "model.remat": False, "train.grad_cache_tokens": 0, "optim.lr": 1e-2, "train.num_steps": 2,
                 "train.progress_bar": False, "checkpoint.every_steps": 100}
    flags = [f"--config.{k}={v!r}" if isinstance(v, tuple) else f"--config.{k}={v}" for k, v in overrides.items()]
    run = tmp_path / "run"
    assert cli_main(["train", "--config", str(CONFIGS / "llm_embedder.py:qwen3,gpu_cluster"), "--workdir", str(run),
                     *flags]) == 0
    assert cli_main(["export", "--workdir", str(run), "--output", str(tmp_path / "merged"),
                     "--adapter", str(tmp_path / "adapter")]) == 0
    assert "and its LoRA adapters to" in capsys.readouterr().out
    trained, step = load_trained_encoder(run)
    assert step == 2 and trained.spec.lora.targets == ("q", "k", "v", "o")
    texts = sentences[-24:]
    merged = SentenceEncoder.from_pretrained(tmp_path / "merged")
    assert merged.spec.lora is None
    assert cosines(merged.encode(texts), trained.encode(texts)).min() >= 0.99999
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["r"] == 4 and len(config["target_modules"]) == 4 * LAYERS
    assert config["base_model_name_or_path"] == str(folders["qwen3"])
    _check_checkpoints_leave_the_base_out(run, folders["qwen3"], flags, tmp_path, capsys)


def _check_checkpoints_leave_the_base_out(run, base, flags, tmp_path, capsys):
    """A LoRA run's checkpoint holds no frozen base (the config rebuilds it); resuming joins the
    rebuilt base, and resuming onto a changed base folder is one error line, exit 2."""
    import shutil

    from safetensors.numpy import load_file, save_file

    from siamjax.train import checkpoint as ckpt

    manager = ckpt.make_manager(run / "checkpoints", save_interval_steps=100, read_only=True)
    saved = manager.item_metadata(2)[ckpt.STATE_ITEM]
    assert "frozen" not in saved or not jax.tree.leaves(saved["frozen"]), "the frozen base was written"
    manager.close()
    changed = tmp_path / "changed-base"
    shutil.copytree(base, changed)
    weights = next(changed.rglob("*.safetensors"))
    tensors = load_file(weights)
    name = next(k for k in tensors if k.endswith("input_layernorm.weight"))
    tensors[name] = tensors[name] * np.float32(1.01).astype(tensors[name].dtype)
    save_file(tensors, weights)
    config = str(CONFIGS / "llm_embedder.py:qwen3,gpu_cluster")
    assert cli_main(["train", "--config", config, "--workdir", str(run), *flags, "--config.train.num_steps=3",
                     f"--config.model.name_or_path={changed}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "was trained on another frozen base" in err[0], err
    assert cli_main(["train", "--config", config, "--workdir", str(run), *flags, "--config.train.num_steps=3"]) == 0
    printed = capsys.readouterr()
    assert "resumed from" in printed.out + printed.err
    assert load_trained_encoder(run)[1] == 3
