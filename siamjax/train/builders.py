"""Config groups -> the typed objects a training run is made of: datasets, encoder, losses,
optimizer, evaluator, and `TrainParts`, which holds them with the state's sharded layout.

Only entry points call these (the experiment and the CLI read configs); everything they return
is a plain library object with typed arguments.
"""
from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import optax
from jax.experimental import multihost_utils
from jax.sharding import Mesh
from transformers import AutoTokenizer

from siamjax import losses
from siamjax.data import concat_datasets, in_memory, nli_to_triplets, open_shards, read_pairs, tfds_builders
from siamjax.data.records import NLI_LABELS
from siamjax.encoder import BertConfig, SentenceEncoder, lora
from siamjax.encoder.layers import check_attention
from siamjax.encoder.model import EncodeFn
from siamjax.evaluation import STSEvaluator
from siamjax.parallel import BATCH_AXES
from siamjax.train import optim
from siamjax.train.config import ConfigError, lora_config, train_groups
from siamjax.train.state import TrainState, state_shardings

# The loss slot of the datasets that use the run's `loss` group; a dataset with its own
# `loss.name` has a slot named after it. With one slot, params["loss"] holds that loss's
# parameters; with several, params["loss"] maps slot -> parameters.
RUN_LOSS = "_run"


@dataclasses.dataclass(frozen=True)
class TrainSet:
    """One training dataset of a run: its source and how it is used."""

    name: str                  # the data.datasets key ("train" for data.train)
    source: object             # PairDataset, ShardSource or tfds pair source
    weight: float              # proportional mixing weight; 0 = by size
    loss_slot: str             # RUN_LOSS or the dataset's own loss slot
    prompts: dict[str, str]    # side role -> prompt text
    num_labels: int | None     # classes of its labels (class/NLI), else None


@dataclasses.dataclass(frozen=True)
class TrainParts:
    """Everything a run builds from its config before the first step (and export rebuilds).

    `params` are the initial `{"encoder", "loss"}` parameters (host arrays; with LoRA only the
    adapters); `frozen` the untrained ones (`"guide"` for GIST, `"encoder"` a LoRA run's base);
    `abstract` is the TrainState as ShapeDtypeStructs with shardings (the restore target) and
    `shardings` its NamedShardings (the jit in/out shardings).
    """

    encoder: SentenceEncoder
    loss_fns: dict[str, losses.LossFn]  # loss slot -> LossFn
    params: dict
    optimizer: optax.GradientTransformation
    schedule: optax.Schedule
    abstract: TrainState
    shardings: TrainState
    dropout_rng: jax.Array
    guide: SentenceEncoder | None = None
    frozen: dict = dataclasses.field(default_factory=dict)

    @property
    def encode_fn(self) -> EncodeFn:
        """The pure encoder the step vmaps over the sides of a batch."""
        return self.encoder.encode_fn

    def loss_params_path(self, slot: str) -> tuple[str, ...]:
        """Where the parameters of loss `slot` live in `params`."""
        return ("loss",) if len(self.loss_fns) == 1 else ("loss", slot)

    @property
    def guide_encode_fn(self) -> EncodeFn | None:
        """The frozen guide's pure encoder (GIST), or None."""
        return None if self.guide is None else self.guide.encode_fn


def read_dataset(file_cfg: ml_collections.ConfigDict, name: str | None = None):
    """A `PairDataset` (or tfds / prepared-shard pair source) from one `data.*` / `eval.*` group.

    A tfds builder is used when `tfds.builder` is set (several builder configs are
    concatenated, e.g. SNLI + MultiNLI = AllNLI), a prepared folder when `shards` is set
    (opened lazily); otherwise the local file at `path` is read through the declared
    (role, column) pairs in their order. `name` names the dataset (default: file/folder name).
    """
    if file_cfg.get("shards", ""):
        return open_shards(file_cfg.shards, name)
    if file_cfg.tfds.builder:
        tf = file_cfg.tfds
        data_dir = tf.data_dir if "://" in tf.data_dir else str(pathlib.Path(tf.data_dir).expanduser())
        parts = [
            tfds_builders.load_tfds_pairs(
                tf.builder, tf.split, data_dir=data_dir, manual_dir=tf.manual_dir or None,
                config=name or None, normalize_scores=file_cfg.normalize_scores,
                on_bad_row=file_cfg.on_bad_row)
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
        name=name,
    )


def class_count(source) -> int | None:
    """Classes of a source's labels: 3 for NLI, max + 1 for class labels, None otherwise."""
    if source.label_kind == "nli":
        return len(NLI_LABELS)
    if source.label_kind == "class":
        known = getattr(source, "num_classes", None)
        return int(known) if known is not None else int(in_memory(source).labels.max()) + 1
    return None


def read_train_sets(data_cfg: ml_collections.ConfigDict, seed: int) -> list[TrainSet]:
    """The training datasets of `data.datasets` (or `data.train`), NLI data turned into triplets
    when `data.nli_to_triplets` asks."""
    many = len(data_cfg.datasets) > 0
    sets = []
    for name, group in train_groups(data_cfg).items():
        source = read_dataset(group, name if many else None)
        if data_cfg.nli_to_triplets:
            source = nli_to_triplets(in_memory(source), seed=seed, symmetric=data_cfg.nli_symmetric)
        sets.append(TrainSet(name=name, source=source, weight=float(group.weight),
                             loss_slot=name if group.loss.name else RUN_LOSS,
                             prompts=dict(group.prompts or ()), num_labels=class_count(source)))
    return sets


def loss_slot_configs(config: ml_collections.ConfigDict) -> dict[str, ml_collections.ConfigDict]:
    """slot -> loss group: the run's `loss`, plus one per dataset with its own `loss.name`
    (sharded as `loss.sharded` says). Derived from the config alone, so export rebuilds it."""
    slots = {RUN_LOSS: config.loss}
    if len(config.data.datasets):
        for name, group in train_groups(config.data).items():
            if group.loss.name:
                slots[name] = ml_collections.ConfigDict({"name": group.loss.name, "kwargs": group.loss.kwargs,
                                                         "sharded": config.loss.sharded})
    return slots


def slot_labels(sets: list[TrainSet]) -> dict[str, int | None]:
    """Class count per loss slot (the largest among the datasets sharing the slot)."""
    counts: dict[str, int | None] = {RUN_LOSS: None}
    for ts in sets:
        known = [n for n in (counts.get(ts.loss_slot), ts.num_labels) if n is not None]
        counts[ts.loss_slot] = max(known) if known else None
    return counts


def build_encoder(model_cfg: ml_collections.ConfigDict, seed: int, *, abstract: bool = False) -> SentenceEncoder:
    """The SentenceEncoder to train: pretrained from `name_or_path` (any supported family), or a
    random BERT; with LoRA adapters when `model.lora.rank` > 0. `abstract=True` gives it
    `jax.ShapeDtypeStruct` parameters and reads no weights (a folder's config files suffice): what
    `siamjax plan` compiles the step from."""
    common = dict(dtype=model_cfg.dtype, param_dtype=model_cfg.param_dtype, remat=model_cfg.remat,
                  attention=model_cfg.attention, max_seq_length=model_cfg.max_seq_length)
    try:
        check_attention(model_cfg.attention, model_cfg.dtype)
    except ValueError as err:  # e.g. cudnn on a machine without a GPU
        raise ConfigError(f"model.attention={model_cfg.attention!r}: {err}") from err
    encoder = _base_encoder(model_cfg, seed, common, abstract)
    adapters = lora_config(model_cfg.get("lora"))
    if adapters is None:
        return encoder
    try:
        return encoder.with_lora(adapters, seed)
    except ValueError as err:  # a family without LoRA targets, or a target its blocks lack
        raise ConfigError(f"model.lora.targets={list(adapters.targets)!r}: {err}") from err


def _base_encoder(model_cfg: ml_collections.ConfigDict, seed: int, common: dict, abstract: bool) -> SentenceEncoder:
    """The pretrained (or random BERT) encoder of `model`, before any LoRA adapters."""
    if model_cfg.name_or_path and abstract:
        try:
            return SentenceEncoder.shape_only(model_cfg.name_or_path, **common)
        except (OSError, ValueError) as err:
            raise ConfigError(f"model.name_or_path={model_cfg.name_or_path!r}: {err}") from err
    if model_cfg.name_or_path:
        try:
            return SentenceEncoder.from_pretrained(model_cfg.name_or_path,
                                                   verify_weights=model_cfg.get("verify_weights", True), **common)
        except (OSError, ValueError) as err:  # missing folder, offline hub, bad config.json
            raise ConfigError(f"model.name_or_path={model_cfg.name_or_path!r}: {err}") from err
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
        abstract=abstract, include_prompt=init.get("include_prompt", True), **common,
    )


def sides_encode_fn(model_cfg: ml_collections.ConfigDict, encoder: SentenceEncoder,
                    sides: tuple[str, ...]) -> EncodeFn:
    """The encode function for a dataset with text sides `sides` (roles): the encoder's own for
    a plain model; for a Router, each side routed by `model.router_mapping` (role -> task)."""
    mapping = dict(model_cfg.router_mapping or ())
    try:
        return encoder.sides_encode_fn([mapping.get(role) for role in sides])
    except ValueError as err:
        raise ConfigError(f"model.router_mapping={tuple(model_cfg.router_mapping)!r} for text sides {list(sides)}: "
                          f"{err}") from err


def build_loss(loss_cfg: ml_collections.ConfigDict, mesh: Mesh, dim: int, num_labels: int | None, rng,
               field: str = "loss"):
    """(registry LossFn, initial learnable loss params) for `loss.name` and `loss.kwargs`."""
    kwargs = dict(loss_cfg.kwargs.items())
    try:
        loss_params = losses.init_loss_params(loss_cfg.name, dim, num_labels, rng, **kwargs)
        if loss_cfg.sharded:
            kwargs.update(mesh=mesh, batch_axes=BATCH_AXES)
        loss_fn = losses.get_loss(loss_cfg.name, **kwargs)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{field}.name={loss_cfg.name!r} / {field}.kwargs: {err}") from err
    return loss_fn, loss_params


def build_losses(config: ml_collections.ConfigDict, mesh: Mesh, dim: int,
                 labels: dict[str, int | None], rng) -> tuple[dict[str, losses.LossFn], dict]:
    """(slot -> LossFn, loss params): the run loss's own params with one slot, slot -> params with several."""
    fns, params = {}, {}
    for i, (slot, loss_cfg) in enumerate(loss_slot_configs(config).items()):
        field = "loss" if slot == RUN_LOSS else f"data.datasets.{slot}.loss"
        slot_rng = rng if slot == RUN_LOSS else jax.random.fold_in(rng, i)
        fns[slot], params[slot] = build_loss(loss_cfg, mesh, dim, labels.get(slot), slot_rng, field)
    return fns, (params[RUN_LOSS] if len(fns) == 1 else params)


def build_guide(loss_cfg: ml_collections.ConfigDict, model_cfg: ml_collections.ConfigDict,
                encoder: SentenceEncoder) -> SentenceEncoder | None:
    """GIST's frozen guide (`loss.guide`), or None. It reads the model's token ids, so its
    vocabulary must be the model's (sentence-transformers re-tokenises instead; siamjax's data
    pipeline tokenises once)."""
    if not loss_cfg.guide:
        return None
    try:
        guide = SentenceEncoder.from_pretrained(loss_cfg.guide, dtype=model_cfg.dtype,
                                                max_seq_length=model_cfg.max_seq_length)
    except (OSError, ValueError) as err:
        raise ConfigError(f"loss.guide={loss_cfg.guide!r}: {err}") from err
    if guide.tokenizer.get_vocab() != encoder.tokenizer.get_vocab():
        raise ConfigError(f"loss.guide={loss_cfg.guide!r}: its tokenizer vocabulary differs from the model's; "
                          f"the guide embeds the model's token ids, so use a guide with the same vocabulary")
    return guide


def build_optimizer(optim_cfg: ml_collections.ConfigDict, total_steps: int):
    """(optax AdamW chain, learning-rate schedule) for a run of `total_steps` steps."""
    warmup = optim_cfg.warmup_steps
    if warmup < 0:
        warmup = int(round(optim_cfg.warmup_ratio * total_steps))
    schedule = optim.make_schedule(optim_cfg.lr, total_steps, warmup, optim_cfg.schedule, optim_cfg.end_lr)
    optimizer = optim.make_optimizer(
        schedule, weight_decay=optim_cfg.weight_decay, b1=optim_cfg.b1, b2=optim_cfg.b2,
        eps=optim_cfg.eps, clip_norm=optim_cfg.clip_norm or None, float32_moments=optim_cfg.float32_moments,
    )
    return optimizer, schedule


def steps_per_epoch(batch_size: int, sizes: list[int]) -> int:
    """Steps of one epoch: the full global batches of all training datasets together."""
    return max(1, sum(size // batch_size for size in sizes))


def total_steps_for(train_cfg: ml_collections.ConfigDict, sizes: list[int]) -> int:
    """Steps of the run: `num_steps`, or `num_epochs` epochs (`steps_per_epoch`)."""
    if train_cfg.num_steps > 0:
        return int(train_cfg.num_steps)
    steps = int(train_cfg.num_epochs * sum(size // train_cfg.batch_size for size in sizes))
    if steps <= 0:
        raise ConfigError(
            f"train.num_epochs={train_cfg.num_epochs} x {sum(sizes)} examples / batch "
            f"{train_cfg.batch_size} gives 0 steps; lower train.batch_size or set train.num_steps"
        )
    return steps


def build_parts(config: ml_collections.ConfigDict, mesh: Mesh, *, total_steps: int,
                num_labels: dict[str, int | None], encoder: SentenceEncoder | None = None) -> TrainParts:
    """Encoder (unless given), losses, optimizer and the state's abstract/sharded layout, for
    train and export. `num_labels`: class count per loss slot (`slot_labels`)."""
    encoder = build_encoder(config.model, config.seed) if encoder is None else encoder
    loss_rng, dropout_rng = jax.random.split(jax.random.PRNGKey(config.seed))
    loss_fns, loss_params = build_losses(config, mesh, encoder.embedding_dim, num_labels, loss_rng)
    optimizer, schedule = build_optimizer(config.optim, total_steps)
    trained, base = split_encoder(encoder)
    params = {"encoder": trained, "loss": loss_params}
    guide = build_guide(config.loss, config.model, encoder)
    frozen = ({} if guide is None else {"guide": guide.params}) | ({"encoder": base} if base else {})
    abstract, shardings = state_shardings(params, optimizer, mesh, config.mesh.fsdp_min_size, frozen)
    return TrainParts(encoder=encoder, loss_fns=loss_fns, params=params, optimizer=optimizer,
                      schedule=schedule, abstract=abstract, shardings=shardings, dropout_rng=dropout_rng,
                      guide=guide, frozen=frozen)


def split_encoder(encoder: SentenceEncoder) -> tuple[dict, dict]:
    """(trained, frozen base) encoder params: with LoRA the adapters (+ Dense heads with
    `train_heads`) against the rest, stored in `base_dtype`; without, everything is trained."""
    adapters = encoder.lora
    if adapters is None:
        return encoder.params, {}
    return lora.split_trainable(encoder.params, adapters.train_heads, adapters.base_dtype or None)


def sts_similarities(similarity_fn_name: str) -> tuple[str, ...]:
    """The similarities the training-time STS evaluation reports."""
    return tuple(dict.fromkeys(("cosine", similarity_fn_name)))


def sts_metric_names(similarity_fn_name: str) -> list[str]:
    """The metric names `make_sts_evaluate` returns for a model of this similarity."""
    return [f"sts/{kind}_{sim}" for sim in sts_similarities(similarity_fn_name) for kind in ("pearson", "spearman")]


def make_sts_evaluate(file_cfg: ml_collections.ConfigDict, encoder: SentenceEncoder,
                      batch_size: int) -> Callable[[Any], dict[str, float]]:
    """evaluate(encoder_params) -> {"sts/spearman_cosine": ..., ...} on an STS dev file: cosine,
    and the model's own `similarity_fn_name` when that is another (a dot-product model is then
    also scored as sentence-transformers' evaluator scores it)."""
    dev = in_memory(read_dataset(file_cfg))
    if dev.num_sides != 2 or dev.label_kind != "score":
        raise ConfigError(f"eval.sts: needs two sentence columns and a 'score' column, got "
                          f"sides {dev.sides} and label kind {dev.label_kind}")
    evaluator = STSEvaluator(dev.texts[0], dev.texts[1], dev.labels,
                             similarities=sts_similarities(encoder.similarity_fn_name))

    def evaluate(params) -> dict[str, float]:
        if jax.process_count() > 1:
            # FSDP over hosts leaves each process only part of a parameter: gather a full host
            # copy (a collective, so every process evaluates, on its own devices).
            params = multihost_utils.process_allgather(params, tiled=True)
        model = encoder.with_params(params)
        metrics = evaluator(lambda texts: model.encode(texts, batch_size=batch_size))
        return {f"sts/{k}": float(v) for k, v in metrics.items()}

    return evaluate

