"""`validate`: every check on a training config that needs no compilation.

It runs once, before anything is built, so a typo costs seconds, not a compile; each error is a
`ConfigError` naming the field. The fields themselves, their defaults and meanings are in
`siamjax.train.config`.
"""

import json
import pathlib
import re

import jax
import ml_collections

from siamjax.data.records import ON_BAD_ROW_CHOICES, split_roles
from siamjax.data.sampler import MIXING_CHOICES
from siamjax.data.shards import INDEX_FILE
from siamjax.encoder.layers import ATTENTION_CHOICES
from siamjax.losses import GUIDED_LOSSES, LOSS_NAMES, TEACHER_LOSSES
from siamjax.parallel import check_batch_divisible, resolve_mesh_shape
from siamjax.train.optim import SCHEDULES

from siamjax.train.config import TFDS_BUILDERS, ConfigError, lora_config, train_groups


def validate(config: ml_collections.ConfigDict, *, data: bool = True, devices: int | None = None) -> None:
    """Every check that needs no compilation: fields, files, mesh and batch divisibility.

    Raises ConfigError naming the field, so a typo costs seconds, not a compile. `data=False`
    skips the checks that read data files (`siamjax plan`: a planned run's data may be elsewhere).
    `devices`: how many devices the run will have (default: this process's; a plan's slice).
    """
    def need(ok: bool, message: str):
        if not ok:
            raise ConfigError(message)

    m, d, o, t = config.model, config.data, config.optim, config.train
    _check_model(m, o, need)
    if data:
        _check_train_data(d)
        _check_file(config.eval.sts, "eval.sts", required=False)
    need(all(b > 0 for b in d.buckets), f"data.buckets={d.buckets}: lengths must be positive")
    need(d.pack_length == 0 or d.pack_length >= m.max_seq_length,
         f"data.pack_length={d.pack_length}: must be 0 (off) or >= model.max_seq_length={m.max_seq_length}")
    _check_grad_cache(t, d, need)
    _check_loss(config, need)
    need(o.schedule in SCHEDULES, f"optim.schedule={o.schedule!r}: use one of {SCHEDULES}")
    need(o.lr > 0, f"optim.lr={o.lr}: must be positive")
    need(t.num_steps == -1 or t.num_steps >= 1,
         f"train.num_steps={t.num_steps}: must be >= 1, or -1 to train for train.num_epochs")
    need(t.num_steps >= 1 or t.num_epochs > 0, f"train.num_epochs={t.num_epochs}: must be > 0 "
         "(or set train.num_steps)")
    need(t.log_every_steps > 0, f"train.log_every_steps={t.log_every_steps}: must be >= 1")
    need(config.checkpoint.every_steps > 0, "checkpoint.every_steps must be >= 1")
    need(config.checkpoint.best_mode in ("max", "min"), "checkpoint.best_mode must be 'max' or 'min'")
    available = jax.device_count() if devices is None else devices
    num_devices = config.mesh.num_devices or available
    need(0 < num_devices <= available,
         f"mesh.num_devices={config.mesh.num_devices}: only {available} devices exist")
    need(jax.process_count() == 1 or num_devices == jax.device_count(),
         f"mesh.num_devices={config.mesh.num_devices}: a {jax.process_count()}-process job must use all "
         f"{jax.device_count()} devices (set it to 0), or some processes would have no device to feed")
    try:
        data, fsdp = resolve_mesh_shape(config.mesh.data, config.mesh.fsdp, num_devices)
        check_batch_divisible(t.batch_size, data * fsdp, jax.process_count())
    except ValueError as err:
        raise ConfigError(f"{err} (mesh.data={config.mesh.data}, mesh.fsdp={config.mesh.fsdp})") from None
    if t.grad_cache_chunk:
        need(t.batch_size % t.grad_cache_chunk == 0,
             f"train.grad_cache_chunk={t.grad_cache_chunk} must divide train.batch_size={t.batch_size}")
        need(t.grad_cache_chunk % data == 0,
             f"train.grad_cache_chunk={t.grad_cache_chunk} must be a multiple of the mesh's data axis size {data} "
             f"(each data shard encodes its part of every chunk)")


def _check_model(m: ml_collections.ConfigDict, o: ml_collections.ConfigDict, need) -> None:
    """The `model` group (and the optimizer's moment dtype, which follows the weights')."""
    if m.name_or_path:
        local = pathlib.Path(m.name_or_path)
        looks_local = m.name_or_path.startswith((".", "/", "~")) or local.exists()
        need(not looks_local or local.is_dir(), f"model.name_or_path={m.name_or_path!r}: no such folder")
    else:
        need(bool(m.init.tokenizer), "model.name_or_path is empty: set it, or model.init.tokenizer "
             "for a randomly initialised model")
        need(isinstance(m.init.include_prompt, bool),
             f"model.init.include_prompt={m.init.include_prompt!r}: use True or False")
    need(m.dtype in ("float32", "bfloat16"), f"model.dtype={m.dtype!r}: use 'float32' or 'bfloat16'")
    need(m.param_dtype in ("float32", "bfloat16"), f"model.param_dtype={m.param_dtype!r}: use 'float32' or 'bfloat16'")
    need(m.param_dtype == "float32" or m.dtype == "bfloat16",
         "model.param_dtype='bfloat16' needs model.dtype='bfloat16' (float32 compute on bf16 weights gains nothing)")
    need(isinstance(o.float32_moments, bool), f"optim.float32_moments={o.float32_moments!r}: use True or False")
    need(m.attention in ATTENTION_CHOICES, f"model.attention={m.attention!r}: use one of {ATTENTION_CHOICES}")
    need(m.attention != "cudnn" or m.dtype == "bfloat16",
         "model.attention='cudnn' needs model.dtype='bfloat16' (cuDNN's fused attention has no float32 kernel)")
    need(m.max_seq_length >= 8, f"model.max_seq_length={m.max_seq_length}: must be >= 8")
    lora_config(m.get("lora"))
    mapping = tuple(m.router_mapping or ())
    need(all(isinstance(p, (tuple, list)) and len(p) == 2 and all(isinstance(x, str) and x for x in p)
             for p in mapping) and len({role for role, _ in mapping}) == len(mapping),
         f"model.router_mapping={m.router_mapping!r}: must be (side role, task) pairs of non-empty strings, "
         "each role once")


def _check_train_data(d: ml_collections.ConfigDict) -> None:
    """`data.train` or `data.datasets`, each group's source, weight, loss and prompts."""
    if d.mixing not in MIXING_CHOICES:
        raise ConfigError(f"data.mixing={d.mixing!r}: use one of {MIXING_CHOICES}")
    if len(d.datasets) and (d.train.path or d.train.shards or d.train.tfds.builder):
        raise ConfigError("data.train and data.datasets are both set: give one (data.datasets for several)")
    groups = train_groups(d)
    many = len(d.datasets) > 0
    fields = {name: f"data.datasets.{name}" if many else "data.train" for name in groups}
    for name, group in groups.items():
        field = fields[name]
        if many and not re.fullmatch(r"[A-Za-z][\w-]*", name):
            raise ConfigError(f"{field}: dataset names must start with a letter and hold only letters, "
                              "digits, '_' and '-'")
        if not isinstance(group, ml_collections.ConfigDict) or "weight" not in group:
            raise ConfigError(f"{field}: expected a group made by siamjax.train.config.train_dataset()")
        _check_file(group, field, required=True)
        _check_training_group(group, field, many, d)
    weighted = [name for name, group in groups.items() if group.weight > 0]
    if weighted and (len(weighted) != len(groups) or d.mixing != "proportional"):
        raise ConfigError(f"data.datasets weights are set for {weighted}: give every dataset a weight > 0 "
                          "and set data.mixing='proportional' (or leave all weights at 0: by size)")


def _check_training_group(group, field: str, many: bool, d) -> None:
    """Weight, loss override, prompts and whole-dataset options of one training dataset."""
    if group.weight < 0:
        raise ConfigError(f"{field}.weight={group.weight}: must be >= 0 (0 = by dataset size)")
    if group.loss.name and group.loss.name not in LOSS_NAMES:
        raise ConfigError(f"{field}.loss.name={group.loss.name!r}: unknown; valid: {', '.join(LOSS_NAMES)}")
    if group.loss.name and not many:
        raise ConfigError(f"{field}.loss.name is set: with one dataset set loss.name instead")
    if group.shards and (d.group_by_length or d.nli_to_triplets):
        option = "data.group_by_length" if d.group_by_length else "data.nli_to_triplets"
        raise ConfigError(f"{field}.shards with {option}: that option reads the whole dataset into memory; "
                          "turn it off (prepare NLI triplets before sharding)")
    prompts = dict(group.prompts) if group.prompts else {}
    if any(not isinstance(v, str) for v in prompts.values()) or len(prompts) != len(group.prompts or ()):
        raise ConfigError(f"{field}.prompts must be (side role, prompt text) pairs, got {group.prompts}")
    if prompts and not group.tfds.builder:
        if group.shards:
            sides = json.loads((pathlib.Path(group.shards) / INDEX_FILE).read_text())["sides"]
        else:
            sides, _ = split_roles(dict(group.columns))
        unknown = sorted(set(prompts) - set(sides))
        if unknown:
            raise ConfigError(f"{field}.prompts names {unknown}, which are not text sides of its data {list(sides)}")


def _check_grad_cache(t, d, need) -> None:
    """GradCache chunks pairs of padded batches, or tokens (whole packed rows) of packed ones."""
    need(t.grad_cache_chunk >= 0 and t.grad_cache_tokens >= 0, "train.grad_cache_chunk / grad_cache_tokens must be >= 0")
    if d.pack_length > 0:
        need(not t.grad_cache_chunk,
             f"train.grad_cache_chunk={t.grad_cache_chunk} with data.pack_length={d.pack_length}: packed batches are "
             f"chunked by tokens; set train.grad_cache_tokens (a multiple of {d.pack_length}) instead")
        need(t.grad_cache_tokens % d.pack_length == 0,
             f"train.grad_cache_tokens={t.grad_cache_tokens} must be a multiple of data.pack_length={d.pack_length} "
             f"(a chunk is whole packed rows)")
    else:
        need(not t.grad_cache_tokens, f"train.grad_cache_tokens={t.grad_cache_tokens} chunks packed rows: set "
             f"data.pack_length, or use train.grad_cache_chunk (pairs) for padded batches")


def _check_loss(config, need) -> None:
    """The loss name, and what it needs from the rest of the config (guide, teacher data, mesh)."""
    loss = config.loss
    need(loss.name in LOSS_NAMES, f"loss.name={loss.name!r}: unknown; valid: {', '.join(LOSS_NAMES)}")
    if loss.name in GUIDED_LOSSES:
        need(bool(loss.guide), f"loss.name={loss.name!r} needs a guide model: set loss.guide")
    else:
        need(not loss.guide, f"loss.guide={loss.guide!r} is only used by {GUIDED_LOSSES}, not loss.name={loss.name!r}")
    need(not loss.kwargs.get("ring", False) or loss.sharded,
         "loss.kwargs.ring=True passes candidate blocks between devices: it needs loss.sharded=True")
    many = len(config.data.datasets) > 0
    for name, group in train_groups(config.data).items():
        field = f"data.datasets.{name}" if many else "data.train"
        own = group.loss.name if many else ""
        need(own not in GUIDED_LOSSES, f"{field}.loss.name={own!r}: a guided loss needs loss.guide; "
             f"make it the run's loss (loss.name, loss.guide) instead")
        if (own or loss.name) in TEACHER_LOSSES and not group.shards:
            roles = [role for role, _ in group.columns] if not group.tfds.builder else []
            name_field = f"{field}.loss.name" if own else "loss.name"
            need("teacher" in roles, f"{name_field}={own or loss.name!r} distils teacher data: map a column "
                 f"to the 'teacher' role in {field}.columns (got roles {roles or 'of a tfds builder'})")


def _check_file(file_cfg, field: str, *, required: bool) -> None:
    """The data file must exist (if required or given) and on_bad_row must be a known policy."""
    if file_cfg.on_bad_row not in ON_BAD_ROW_CHOICES:
        raise ConfigError(f"{field}.on_bad_row={file_cfg.on_bad_row!r}: use one of {ON_BAD_ROW_CHOICES}")
    given = [k for k, v in (("path", file_cfg.path), ("shards", file_cfg.get("shards", "")),
                            ("tfds.builder", file_cfg.tfds.builder)) if v]
    if len(given) > 1:
        raise ConfigError(f"{field}: {' and '.join(given)} are both set; give one source")
    if file_cfg.tfds.builder:
        if file_cfg.tfds.builder not in TFDS_BUILDERS:
            raise ConfigError(f"{field}.tfds.builder={file_cfg.tfds.builder!r}: use one of {TFDS_BUILDERS}")
        return
    if file_cfg.get("shards", ""):
        if not (pathlib.Path(file_cfg.shards) / INDEX_FILE).is_file():
            raise ConfigError(f"{field}.shards={file_cfg.shards!r}: not a prepared dataset (no {INDEX_FILE}; "
                              "make one with `siamjax data prepare`)")
        return
    if not file_cfg.path:
        if required:
            raise ConfigError(f"{field}.path is empty: give the training file ({field}.shards or "
                              f"{field}.tfds.builder)")
        return
    if not pathlib.Path(file_cfg.path).is_file():
        raise ConfigError(f"{field}.path={file_cfg.path!r}: file not found")
    if not file_cfg.columns or any(len(pair) != 2 for pair in file_cfg.columns):
        raise ConfigError(f"{field}.columns must be (role, column) pairs, got {file_cfg.columns}")
    low, high = _pair(file_cfg.score_range, f"{field}.score_range")
    if not low < high:
        raise ConfigError(f"{field}.score_range={tuple(file_cfg.score_range)}: must be (low, high) with low < high")


def _pair(value, field: str) -> tuple[float, float]:
    try:
        low, high = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ConfigError(f"{field}={value!r}: must be two numbers (low, high)") from None
    return low, high
