"""sentence-transformers Router models (asymmetric query/document routes on one shared trunk)
against sentence-transformers 6.x: loading, encoding, saving, training and bad folders.

The reference folder is built by sentence-transformers itself: a tiny random BERT Transformer
and a mean Pooling shared by both routes, a Tanh Dense on the query route and an Identity Dense
on the document route, then Normalize (`Router.for_query_document`, default route "document").
"""
import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from encoder_fixtures import varied_sentences
from family_fixtures import save_random_model
from siamjax.encoder import SentenceEncoder
from siamjax.encoder.router import make_route_encode_fn
from siamjax.losses import get_loss, make_grad_cache_value_and_grad
from siamjax.train import export_run, train_and_evaluate
from siamjax.train.config import default_config
from siamjax.train.step import make_embed_fn, make_loss_fn

MAX_SEQ_LENGTH = 48
TASKS = ("query", "document", None)
# BERT's exact GELU: one `erfc` per layer each time the trunk runs.
NUM_LAYERS = 2


def _cos(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return (a * b).sum(-1) / np.maximum(np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1), 1e-30)


@pytest.fixture(scope="module")
def router_dir(tmp_path_factory, minilm_dir):
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer import modules as st
    from transformers import AutoTokenizer

    root = tmp_path_factory.mktemp("router")
    config = {"model_type": "bert", "vocab_size": 30522, "hidden_size": 32, "num_hidden_layers": NUM_LAYERS,
              "num_attention_heads": 4, "intermediate_size": 64, "max_position_embeddings": 64,
              "hidden_act": "gelu", "type_vocab_size": 2, "pad_token_id": 0}
    hf = save_random_model(root / "hf", config, AutoTokenizer.from_pretrained(str(minilm_dir)), seed=3)
    torch.manual_seed(0)
    trunk, pooling = st.Transformer(str(hf), max_seq_length=MAX_SEQ_LENGTH), st.Pooling(32, pooling_mode="mean")
    router = st.Router.for_query_document(
        query_modules=[trunk, pooling, st.Dense(32, 16, activation_function=torch.nn.Tanh())],
        document_modules=[trunk, pooling, st.Dense(32, 16, activation_function=torch.nn.Identity())])
    SentenceTransformer(modules=[router, st.Normalize()], device="cpu").save(str(root / "st"))
    return root / "st"


@pytest.fixture(scope="module")
def texts(stsb_dir):
    return varied_sentences(stsb_dir, n_sts=50)


@pytest.fixture(scope="module")
def reference(router_dir, texts):
    """sentence-transformers' embeddings per task (None = plain `encode`)."""
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(router_dir), device="cpu")
    return {task: model.encode(texts, task=task) if task else model.encode(texts) for task in TASKS}


def test_router_folder_encodes_saves_and_reloads_like_sentence_transformers(router_dir, texts, reference, tmp_path):
    """Each route (and the default one) equals sentence-transformers' `encode(task=)`, packed and
    padded; the routes really differ; a saved folder loads in sentence-transformers with the same
    embeddings and in siamjax bit for bit."""
    from sentence_transformers import SentenceTransformer

    model = SentenceEncoder.from_pretrained(router_dir)
    assert model.is_router and model.spec.default_route == "document" and model.embedding_dim == 16
    padded = model.tokenize(texts)
    for task in TASKS:
        packed = model.encode(texts, route=task)
        assert _cos(packed, reference[task]).min() >= 0.99999, task
        route = model.spec.resolve(task)
        one_per_row = make_route_encode_fn(model.graphdef, route)(model.params, padded)
        assert _cos(one_per_row, reference[task]).min() >= 0.99999, task
    assert _cos(reference["query"], reference["document"]).max() < 0.99
    with pytest.raises(ValueError, match="no route for task 'passage'"):
        model.encode(texts[:2], route="passage")

    model.save(tmp_path / "saved")
    config = json.loads((tmp_path / "saved" / "router_config.json").read_text())
    assert config["structure"]["query"][0] == config["structure"]["document"][0]  # one shared trunk
    torch_model = SentenceTransformer(str(tmp_path / "saved"), device="cpu")
    reloaded = SentenceEncoder.from_pretrained(tmp_path / "saved")
    for task in ("query", "document"):
        assert _cos(torch_model.encode(texts, task=task), model.encode(texts, route=task)).min() >= 0.99999
    assert reloaded.spec == model.spec
    jax.tree.map(np.testing.assert_array_equal, reloaded.params, model.params)


def test_encode_cli_takes_the_task_route(router_dir, texts, reference, tmp_path, capsys):
    """`siamjax encode --task query` = sentence-transformers' `encode(task="query")`; an unknown
    task is one line naming --task, exit 2."""
    from siamjax.cli import main as cli_main

    (tmp_path / "texts.txt").write_text("".join(t.replace("\n", " ") + "\n" for t in texts[:8]))
    base = ["encode", "--model", str(router_dir), "--input", str(tmp_path / "texts.txt"), "--quiet"]
    for task in ("query", "document"):
        assert cli_main([*base, "--output", str(tmp_path / f"{task}.npy"), "--task", task]) == 0
        assert _cos(np.load(tmp_path / f"{task}.npy"), reference[task][:8]).min() >= 0.99999, task
    assert cli_main([*base, "--output", str(tmp_path / "bad.npy"), "--task", "passage"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--task: no route for task 'passage'" in err[0]


def _count_primitive(jaxpr, name: str) -> int:
    """Occurrences of primitive `name` in a jaxpr and every jaxpr nested in it."""
    count = 0
    for eqn in jaxpr.eqns:
        count += eqn.primitive.name == name
        for value in eqn.params.values():
            for sub in value if isinstance(value, (list, tuple)) else [value]:
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    count += _count_primitive(inner, name)
    return count


def test_training_batch_routes_each_side_after_one_trunk_call(router_dir, texts):
    """On a [3, B, L] (anchor, positive, negative) batch: the trunk runs once (one `erfc` per
    layer in the traced step, as for a plain model), side s equals sentence-transformers'
    encoding through its route (query, document, document), the
    MNRL loss equals the one computed from sentence-transformers' encode_query/encode_document,
    and GradCache gives the same loss and gradients."""
    import torch
    from sentence_transformers import SentenceTransformer

    model = SentenceEncoder.from_pretrained(router_dir)
    anchors, positives, negatives = texts[:8], texts[8:16], texts[16:24]
    rows = [model.tokenize(side, MAX_SEQ_LENGTH) for side in (anchors, positives, negatives)]
    length = max(r["input_ids"].shape[1] for r in rows)
    sides = {k: jnp.stack([np.pad(r[k], ((0, 0), (0, length - r[k].shape[1]))) for r in rows]) for k in rows[0]}
    encode_fn = model.sides_encode_fn(["query", "document", "document"])
    embed = make_embed_fn(encode_fn)

    jaxpr = jax.make_jaxpr(lambda p: embed(p, sides, jax.random.PRNGKey(0)))(model.params).jaxpr
    assert _count_primitive(jaxpr, "erfc") == NUM_LAYERS
    loss_fn = get_loss("mnrl", scale=20.0)
    params = {"encoder": model.params, "loss": {}}
    cached = make_grad_cache_value_and_grad(encode_fn, loss_fn, 4)

    @jax.jit
    def run(params, sides):
        return (embed(params["encoder"], sides, None),
                jax.value_and_grad(make_loss_fn(embed, loss_fn))(params, sides, None), cached(params, sides, None, None))

    emb_SxBxD, (loss, grads), (cached_loss, cached_grads) = run(params, sides)
    st_model = SentenceTransformer(str(router_dir), device="cpu")
    q = st_model.encode_query(anchors)
    d = np.concatenate([st_model.encode_document(positives), st_model.encode_document(negatives)])
    assert _cos(emb_SxBxD[0], q).min() >= 0.99999
    assert _cos(emb_SxBxD[1:].reshape(-1, emb_SxBxD.shape[-1]), d).min() >= 0.99999
    q, d = torch.tensor(q), torch.tensor(d)
    logits = 20.0 * torch.nn.functional.normalize(q, dim=-1) @ torch.nn.functional.normalize(d, dim=-1).T
    expected = torch.nn.functional.cross_entropy(logits, torch.arange(len(anchors))).item()
    assert abs(float(loss) - expected) < 1e-4
    assert abs(float(cached_loss) - float(loss)) < 1e-5
    for a, b in zip(jax.tree.leaves(cached_grads["encoder"]), jax.tree.leaves(grads["encoder"])):
        np.testing.assert_allclose(a, b, atol=2e-5)
    assert float(jnp.abs(grads["encoder"]["dense"]["query_2_Dense"]["kernel"]).max()) > 0
    assert float(jnp.abs(grads["encoder"]["dense"]["document_2_Dense"]["kernel"]).max()) > 0


def test_router_trains_exports_and_loads_in_sentence_transformers(router_dir, texts, tmp_path):
    """3 MNRL steps on 8 devices, packed rows, with q -> query and p -> document: both route Dense
    layers and the shared trunk move; the exported folder loads in sentence-transformers with
    the trained model's embeddings for queries and documents."""
    from sentence_transformers import SentenceTransformer

    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps({"q": texts[i], "p": texts[49 - i]}) + "\n" for i in range(48)))
    config = default_config()
    config.model.name_or_path = str(router_dir)
    config.model.max_seq_length = MAX_SEQ_LENGTH
    config.model.router_mapping = (("q", "query"), ("p", "document"))
    config.data.train.path = str(data)
    config.data.train.columns = (("q", "q"), ("p", "p"))
    config.data.no_duplicates = False  # each sentence is a query in one row and a document in another
    config.data.pack_length = 64  # packed rows: each side's texts pooled per slot, then routed
    config.loss.name = "mnrl"
    config.optim.lr = 1e-3
    config.optim.warmup_steps = 0
    config.train.update(batch_size=16, num_steps=3, log_every_steps=1, progress_bar=False)
    config.checkpoint.every_steps = 100
    train_and_evaluate(config, tmp_path / "run")
    exported, step = export_run(tmp_path / "run", tmp_path / "model")
    assert step == 3 and (exported / "router_config.json").is_file()

    before = SentenceEncoder.from_pretrained(router_dir)
    trained = SentenceEncoder.from_pretrained(exported)
    for module_id in ("query_2_Dense", "document_2_Dense"):
        assert np.abs(trained.params["dense"][module_id]["kernel"] - before.params["dense"][module_id]["kernel"]).max() > 1e-4
    trunk_moved = [np.abs(a - b).max() for a, b in zip(jax.tree.leaves(trained.params["encoder"]),
                                                         jax.tree.leaves(before.params["encoder"]))]
    assert max(trunk_moved) > 1e-4
    torch_model = SentenceTransformer(str(exported), device="cpu")
    assert _cos(torch_model.encode_query(texts), trained.encode(texts, route="query")).min() >= 0.99999
    assert _cos(torch_model.encode_document(texts), trained.encode(texts, route="document")).min() >= 0.99999


def _damaged(router_dir, tmp_path, change):
    folder = tmp_path / "bad"
    shutil.copytree(router_dir, folder)
    config = json.loads((folder / "router_config.json").read_text())
    change(config)
    (folder / "router_config.json").write_text(json.dumps(config))
    return folder


@pytest.mark.parametrize("change, message", [
    (lambda c: c["types"].update(query_2_Dense="sentence_transformers.models.CNN"), "has type 'CNN'"),
    (lambda c: c["structure"]["document"].append("document_3_Dense"), "does not define"),
    (lambda c: c["parameters"].update(default_route="passage"), "route 'passage'"),
    (lambda c: c["structure"].update(query=["query_1_Pooling", "query_2_Dense"]), "Transformer, a Pooling"),
    (lambda c: c.pop("structure"), "without 'types' and 'structure'"),
])
def test_bad_router_folders_name_the_file(router_dir, tmp_path, change, message):
    folder = _damaged(router_dir, tmp_path, change)
    with pytest.raises(ValueError, match=message) as err:
        SentenceEncoder.from_pretrained(folder)
    assert str(folder / "router_config.json") in str(err.value)
