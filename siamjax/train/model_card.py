"""What an exported model carries about its training: the prompts it was trained with (into
`config_sentence_transformers.json`, so `encode_query` / `encode_document` use them) and a
model card in the spirit of sentence-transformers' generated ones (base model, data files and
sizes, loss and its arguments, hyperparameters, final metrics, versions, prompts, usage).

Why: a prompted model used without its prompts still returns vectors, only worse ones; and a
folder without its recipe cannot be reproduced or judged. Everything here is read from the
run folder (`config.json`, `run_info.json`, `metrics.jsonl`), so `siamjax export` of an old run
writes the same card as the end of training.
"""
from __future__ import annotations

import json
import pathlib
from collections.abc import Mapping

import ml_collections

from siamjax.encoder import SentenceEncoder
from siamjax.encoder.folder import library_versions
from siamjax.train.config import train_groups

# Side roles whose prompt `encode_query` looks up as "query"; positive*/negative* are "document".
_QUERY_ROLES = ("anchor", "query", "question")
_DOCUMENT_ROLES = ("positive", "negative", "document", "passage")
_HYPERPARAMETERS = {"train": ("batch_size", "num_epochs", "num_steps", "dropout", "grad_cache_chunk",
                              "grad_cache_tokens"),
                    "optim": ("lr", "schedule", "warmup_ratio", "warmup_steps", "end_lr", "weight_decay", "b1", "b2",
                              "eps", "clip_norm"),
                    "model": ("max_seq_length", "dtype", "param_dtype"),
                    "data": ("pack_length", "group_by_length", "no_duplicates", "mixing")}


def _prompt_name(role: str) -> str:
    if role in _QUERY_ROLES:
        return "query"
    return "document" if role.startswith(_DOCUMENT_ROLES) else role


def training_prompts(config: ml_collections.ConfigDict) -> dict[str, str]:
    """Prompt name -> text of every prompt the run trained with: an anchor's prompt is "query",
    a positive's or negative's "document", another side's its role; a name two datasets give
    different texts becomes `<dataset>_<role>` for the later one."""
    out: dict[str, str] = {}
    for dataset, group in train_groups(config.data).items():
        for role, text in (group.prompts or ()):
            name = _prompt_name(role)
            if out.get(name, text) != text:
                name = f"{dataset}_{role}"
            out[name] = text
    return out


def final_metrics(metrics_path: pathlib.Path) -> tuple[dict[str, float], dict[str, float]]:
    """(the last evaluation's metrics, the last logged training metrics) of a metrics.jsonl."""
    evaluation, train = {}, {}
    if metrics_path.is_file():
        for line in metrics_path.read_text().splitlines():
            record = json.loads(line) if line.strip() else {}
            if "loss" in record:  # a training record; an evaluation's has its metrics only
                train = {k: v for k, v in record.items() if k in ("step", "loss", "grad_norm", "learning_rate")}
            elif len(record) > 1:
                evaluation = {("eval step" if k == "step" else k): v for k, v in record.items()}
    return evaluation, train


def _source(group) -> str:
    return group.path or group.shards or f"tfds:{group.tfds.builder}"


def _table(rows: list[tuple], header: tuple[str, ...]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(v).replace("|", "\\|").replace("\n", "\\n") for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _loss_lines(config: ml_collections.ConfigDict) -> list[str]:
    loss = config.loss
    lines = [f"- run loss: `{loss.name}` with `{json.dumps(loss.kwargs.to_dict(), sort_keys=True)}`"]
    for dataset, group in train_groups(config.data).items():
        if group.loss.name:
            lines.append(f"- `{dataset}`: `{group.loss.name}` with "
                         f"`{json.dumps(group.loss.kwargs.to_dict(), sort_keys=True)}`")
    return lines


def _head(encoder: SentenceEncoder) -> str:
    """What follows the transformer: pooling, Dense, normalisation; or a Router's routes."""
    spec = encoder.spec
    if encoder.is_router:
        return (f"through a Router (routes {', '.join(name for name, _ in spec.routes)}; default "
                f"{spec.default_route}) after one shared trunk")
    prompt = "included" if spec.pooling.include_prompt else "excluded"
    return (f"with {'+'.join(spec.pooling.modes)} pooling (prompt tokens {prompt})"
            f"{' + Dense' * len(spec.dense)}{' + L2 normalisation' if spec.normalize else ''}")


def _usage(encoder: SentenceEncoder) -> str:
    prompted = any(encoder.prompts.values())
    calls = ("queries = model.encode_query([\"What is siamjax?\"])\n"
             "documents = model.encode_document([\"siamjax trains sentence embeddings in JAX.\"])\n"
             "scores = model.similarity(queries, documents)") if prompted else (
        "embeddings = model.encode([\"A sentence.\", \"Another one.\"])\n"
        "scores = model.similarity(embeddings, embeddings)")
    return (f"```python\nimport siamjax                                            # JAX\n"
            f"model = siamjax.SentenceEncoder.from_pretrained(\"path/to/this/folder\")\n{calls}\n```\n\n"
            f"```python\nfrom sentence_transformers import SentenceTransformer   # PyTorch\n"
            f"model = SentenceTransformer(\"path/to/this/folder\")\n{calls}\n```")


def render(encoder: SentenceEncoder, config: ml_collections.ConfigDict, run_info: Mapping, step: int,
           metrics_path: pathlib.Path) -> str:
    """The README.md model card of a model exported at `step` of the run that `config`,
    `run_info` (dataset sizes) and `metrics_path` (metrics.jsonl) describe."""
    t = encoder.spec.transformer
    base = config.model.name_or_path or f"random {t.model_type} ({t.num_hidden_layers} layers, hidden {t.hidden_size})"
    sizes = run_info.get("dataset_sizes", {})
    data_rows = [(name, _source(g), sizes.get(name, "?"), ", ".join(f"{k}={v}" for k, v in (g.columns or ())) or "-",
                  ", ".join(f"{r}: {p!r}" for r, p in (g.prompts or ())) or "-")
                 for name, g in train_groups(config.data).items()]
    hyper = [(f"{group}.{field}", config[group][field]) for group, fields in _HYPERPARAMETERS.items()
             for field in fields if field in config[group]] + [("seed", config.seed), ("steps run", step)]
    evaluation, train = final_metrics(metrics_path)
    train = {("train step" if k == "step" else f"train {k}"): v for k, v in train.items()}
    metric_rows = [(k, f"{v:.4f}" if isinstance(v, float) else v) for k, v in {**train, **evaluation}.items()]
    prompt_rows = [(name, repr(text)) for name, text in encoder.prompts.items()]
    return f"""---
library_name: sentence-transformers
tags: [sentence-transformers, sentence-similarity, feature-extraction, siamjax]
pipeline_tag: sentence-similarity
base_model: {config.model.name_or_path or "none"}
---
# Sentence embedding model (trained with siamjax)

Fine-tuned from **{base}**: a {t.model_type} encoder ({t.num_hidden_layers} layers, hidden size
{t.hidden_size}) mapping text to {encoder.embedding_dim}-dimensional vectors {_head(encoder)} over at most
{encoder.max_seq_length} tokens; similarity: {encoder.similarity_fn_name}.

## Usage

{_usage(encoder)}

## Prompts

{_table(prompt_rows, ("name", "prompt")) if any(encoder.prompts.values()) else "None: texts are encoded as they are."}

## Training data

{_table(data_rows, ("dataset", "file", "rows", "columns", "prompts"))}

## Loss

{chr(10).join(_loss_lines(config))}

## Hyperparameters

{_table(hyper, ("name", "value"))}

## Final metrics

{_table(metric_rows, ("metric", "value")) if metric_rows else "No metrics were logged."}

## Library versions

{_table(sorted(library_versions().items()), ("library", "version"))}
"""
