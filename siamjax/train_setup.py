"""Config groups -> the typed objects a training run needs: datasets, encoder, loss, optimizer,
evaluator. Used only by the entry points (`siamjax.train`, `siamjax/cli`), which read configs;
everything these functions return is plain library objects.
"""
from __future__ import annotations

import pathlib
from collections.abc import Callable
from typing import Any

import numpy as np

from siamjax import optim
from siamjax import sharding as sharding_lib
from siamjax.cli.train_cmd import ConfigError


def read_file_dataset(file_cfg):
    """A `PairDataset` (or tfds pair source) from one `data.*` / `eval.*` group.

    A tfds builder is used when `tfds.builder` is set (several builder configs are
    concatenated, e.g. SNLI + MultiNLI = AllNLI); otherwise the local file at `path` is read
    through the declared (role, column) pairs in their order.
    """
    from siamjax.data import load_tfds_pairs, read_pairs

    if file_cfg.tfds.builder:
        tf = file_cfg.tfds
        parts = [
            load_tfds_pairs(tf.builder, tf.split, data_dir=_local_or_url(tf.data_dir),
                            manual_dir=tf.manual_dir or None, config=name or None,
                            normalize_scores=file_cfg.normalize_scores, on_bad_row=file_cfg.on_bad_row)
            for name in (tf.configs.split(",") if tf.configs else [""])
        ]
        return parts[0] if len(parts) == 1 else concat_datasets([p.materialize() for p in parts])
    lo, hi = file_cfg.score_range
    return read_pairs(
        file_cfg.path,
        columns={role: col for role, col in file_cfg.columns},
        format=file_cfg.format or None,
        header=file_cfg.header,
        quoting=file_cfg.quoting or None,
        score_range=(float(lo), float(hi)),
        normalize_scores=file_cfg.normalize_scores,
        on_bad_row=file_cfg.on_bad_row,
    )


def _local_or_url(path: str) -> str:
    """`~` expanded for local folders; URLs (gs://, s3://) passed through for tfds/etils."""
    return path if "://" in path else str(pathlib.Path(path).expanduser())


def in_memory(dataset):
    """`dataset` as an in-memory PairDataset (tfds sources are read once)."""
    return dataset.materialize() if hasattr(dataset, "materialize") else dataset


def concat_datasets(datasets):
    """One PairDataset holding the rows of several with the same sides and label kind."""
    from siamjax.data import PairDataset

    first = datasets[0]
    if any(d.sides != first.sides or d.label_kind != first.label_kind for d in datasets):
        raise ConfigError(f"cannot concatenate datasets with different columns: "
                          f"{[(d.name, d.sides, d.label_kind) for d in datasets]}")
    texts = tuple([t for d in datasets for t in d.texts[i]] for i in range(len(first.sides)))
    labels = None if first.labels is None else np.concatenate([d.labels for d in datasets])
    return PairDataset("+".join(d.name for d in datasets), first.sides, texts, labels, first.label_kind,
                       bad_rows=[r for d in datasets for r in d.bad_rows])


def build_encoder(model_cfg, seed: int):
    """The SentenceEncoder to train: pretrained from `name_or_path`, or a random BERT."""
    from siamjax.encoder import BertConfig, SentenceEncoder

    common = dict(dtype=model_cfg.dtype, remat=model_cfg.remat, max_seq_length=model_cfg.max_seq_length)
    if model_cfg.name_or_path:
        try:
            return SentenceEncoder.from_pretrained(model_cfg.name_or_path, **common)
        except (OSError, ValueError) as err:  # missing folder, offline hub, bad config.json
            raise ConfigError(f"model.name_or_path={model_cfg.name_or_path!r}: {err}") from err
    from transformers import AutoTokenizer

    init = model_cfg.init
    tokenizer = AutoTokenizer.from_pretrained(init.tokenizer)
    bert = BertConfig(
        vocab_size=len(tokenizer), hidden_size=init.hidden_size,
        num_hidden_layers=init.num_hidden_layers, num_attention_heads=init.num_attention_heads,
        intermediate_size=init.intermediate_size, max_position_embeddings=init.max_position_embeddings,
        hidden_dropout_prob=init.hidden_dropout_prob, pad_token_id=tokenizer.pad_token_id or 0,
    )
    return SentenceEncoder.from_config(
        bert, tokenizer, pooling=tuple(init.pooling.split("+")), normalize=init.normalize, seed=seed,
        **common,
    )


def build_loss(loss_cfg, mesh, dim: int, num_labels: int | None, rng):
    """(registry LossFn, initial learnable loss params) for `loss.name` and `loss.kwargs`."""
    from siamjax import losses

    kwargs = dict(loss_cfg.kwargs.items())
    try:
        loss_params = losses.init_loss_params(loss_cfg.name, dim, num_labels, rng, **kwargs)
        if loss_cfg.sharded:
            kwargs.update(mesh=mesh, batch_axes=sharding_lib.BATCH_AXES)
        loss_fn = losses.get_loss(loss_cfg.name, **kwargs)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"loss.name={loss_cfg.name!r} / loss.kwargs: {err}") from err
    return loss_fn, loss_params


def build_optimizer(optim_cfg, total_steps: int):
    """(optax AdamW chain, learning-rate schedule) for a run of `total_steps` steps."""
    warmup = optim_cfg.warmup_steps
    if warmup < 0:
        warmup = int(round(optim_cfg.warmup_ratio * total_steps))
    schedule = optim.make_schedule(optim_cfg.lr, total_steps, warmup, optim_cfg.schedule, optim_cfg.end_lr)
    optimizer = optim.make_optimizer(
        schedule, weight_decay=optim_cfg.weight_decay, b1=optim_cfg.b1, b2=optim_cfg.b2,
        eps=optim_cfg.eps, clip_norm=optim_cfg.clip_norm or None,
    )
    return optimizer, schedule


def total_steps_for(train_cfg, dataset_size: int) -> int:
    """Steps of the run: `num_steps`, or `num_epochs` full batches of the training set."""
    if train_cfg.num_steps > 0:
        return int(train_cfg.num_steps)
    steps = int(train_cfg.num_epochs * (dataset_size // train_cfg.batch_size))
    if steps <= 0:
        raise ConfigError(
            f"train.num_epochs={train_cfg.num_epochs} x {dataset_size} examples / batch "
            f"{train_cfg.batch_size} gives 0 steps; lower train.batch_size or set train.num_steps"
        )
    return steps


def make_sts_evaluate(file_cfg, encoder, batch_size: int) -> Callable[[Any], dict[str, float]]:
    """evaluate(encoder_params) -> {"sts/spearman_cosine": ..., ...} on an STS dev file."""
    from siamjax.evaluation import STSEvaluator

    dev = in_memory(read_file_dataset(file_cfg))
    if dev.num_sides != 2 or dev.label_kind != "score":
        raise ConfigError(f"eval.sts: needs two sentence columns and a 'score' column, got "
                          f"sides {dev.sides} and label kind {dev.label_kind}")
    evaluator = STSEvaluator(dev.texts[0], dev.texts[1], dev.labels, similarities=("cosine",))

    def evaluate(params) -> dict[str, float]:
        import jax
        from jax.experimental import multihost_utils

        if jax.process_count() > 1:
            # FSDP over hosts leaves each process only part of a parameter: gather a full host
            # copy (a collective, so every process evaluates, on its own devices).
            params = multihost_utils.process_allgather(params, tiled=True)
        model = encoder.with_params(params)
        metrics = evaluator(lambda texts: model.encode(texts, batch_size=batch_size))
        return {f"sts/{k}": float(v) for k, v in metrics.items()}

    return evaluate


def length_grouped(dataset, tokenizer, batch_size: int, epochs: int, seed: int):
    """The dataset reordered for `epochs` epochs into batches of similar token length.

    Each epoch is shuffled, sorted by the longest side's length (stable, so ties stay
    shuffled), cut into batches and the batches shuffled again, so batches are random in
    order but need little padding — HF Trainer's `group_by_length`. Feed it with
    `shuffle=False` and `num_epochs=1`.
    """
    from siamjax.data import PairDataset

    lengths = np.max([[len(ids) for ids in tokenizer(list(side))["input_ids"]] for side in dataset.texts], 0)
    rng = np.random.default_rng(seed)
    order = []
    for _ in range(max(1, epochs)):
        perm = rng.permutation(len(dataset))
        perm = perm[np.argsort(lengths[perm], kind="stable")]
        batches = [perm[i:i + batch_size] for i in range(0, len(perm), batch_size)]
        rng.shuffle(batches)
        order.extend(int(i) for b in batches for i in b)
    texts = tuple([side[i] for i in order] for side in dataset.texts)
    labels = None if dataset.labels is None else dataset.labels[order]
    return PairDataset(f"{dataset.name}:grouped", dataset.sides, texts, labels, dataset.label_kind,
                       bad_rows=list(dataset.bad_rows), info=dict(dataset.info))
