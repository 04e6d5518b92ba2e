"""A training run from start to end: config -> mesh -> data -> sharded state -> compiled step
-> loop -> export.

`train_and_evaluate(config, workdir)` is the library's one entry point that reads a whole
config (nanodo's and the Flax examples' shape): it validates the config once, turns it into
typed objects and hands them to `train_loop`. Metrics go to `metrics.jsonl` and TensorBoard,
checkpoints to `<workdir>/checkpoints`; rerunning the same call resumes. `export_run` writes a
run's best (else last) checkpoint as a sentence-transformers folder.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import warnings
import logging
import pathlib

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh

from siamjax.data import in_memory, length_grouped, make_train_iterator
from siamjax.encoder import SentenceEncoder
from siamjax.encoder.rows import TOKEN_KEYS
from siamjax.losses import TEXT_ID_LOSSES, make_grad_cache_value_and_grad
from siamjax.parallel import batch_shard_count, make_mesh, to_global_array
from siamjax.train import builders, checkpoint as ckpt, model_card
from siamjax.train.config import ConfigError
from siamjax.train.config_checks import validate
from siamjax.train.loop import LoopResult, train_loop
from siamjax.train.metrics import MetricWriter
from siamjax.train.preemption import PreemptionFlag
from siamjax.train.state import create_train_state, encoder_params
from siamjax.train.workdir import WorkdirLock, check_writable, storage_errors
from siamjax.train.step import compile_train_step, make_train_step

log = logging.getLogger(__name__)
RUN_INFO = "run_info.json"  # facts about the run the config alone does not fix (class counts)


@dataclasses.dataclass
class RunData:
    """The training data of a run, ready for the iterator."""

    sets: list[builders.TrainSet]  # the training datasets, in batch `dataset` index order
    total_steps: int
    steps_per_epoch: int
    shuffle: bool              # False once length grouping fixed the order

    @property
    def num_labels(self) -> dict[str, int | None]:
        """Class count per loss slot."""
        return builders.slot_labels(self.sets)


def _write_json(path: pathlib.Path, record: dict) -> None:
    """Writes a small JSON file from process 0 (no torn reads by the others)."""
    if jax.process_index() == 0:
        path.write_text(json.dumps(record, indent=2))


def _write_config(config: ml_collections.ConfigDict, workdir: pathlib.Path) -> None:
    """Saves the resolved config (export reads it); warns when a resume changed it."""
    path = workdir / "config.json"
    text = config.to_json_best_effort(indent=2, sort_keys=True)
    if jax.process_index() != 0:
        return
    if path.exists() and json.loads(path.read_text()) != json.loads(text):
        log.warning("%s differs from the current config; resuming with the current one", path)
    path.write_text(text)


def _manager(config: ml_collections.ConfigDict, workdir: pathlib.Path, *, read_only: bool = False):
    c = config.checkpoint
    return ckpt.make_manager(
        workdir / "checkpoints", save_interval_steps=c.every_steps, max_to_keep=c.keep,
        keep_best=c.keep_best, best_metric=c.best_metric or None, best_mode=c.best_mode,
        async_save=c.async_save, read_only=read_only,
    )


def prepare_data(config: ml_collections.ConfigDict, tokenizer) -> RunData:
    """Reads (or opens) the training sets and fixes the run length (and the length-grouped order)."""
    t, d = config.train, config.data
    sets = builders.read_train_sets(d, config.seed)
    for ts in sets:
        if getattr(ts.source, "num_bad_rows", 0) and jax.process_index() == 0:
            field = f"data.datasets.{ts.name}" if len(d.datasets) else "data.train"
            print(f"data: skipped {ts.source.num_bad_rows} bad row(s) of {ts.source.name} "
                  f"({field}.on_bad_row=skip)", flush=True)
    sizes = [len(ts.source) for ts in sets]
    total = builders.total_steps_for(t, sizes)
    per_epoch = builders.steps_per_epoch(t.batch_size, sizes)
    shuffle = d.shuffle
    if d.group_by_length:
        epochs = -(-total // per_epoch)
        sets = [dataclasses.replace(ts, source=length_grouped(in_memory(ts.source), tokenizer, t.batch_size, epochs,
                                                              config.seed, config.model.max_seq_length))
                for ts in sets]
        shuffle = False
    return RunData(sets, total, per_epoch, shuffle)


def _train_iterator(config: ml_collections.ConfigDict, data: RunData, encoder: SentenceEncoder, mesh: Mesh):
    d = config.data
    weights = [ts.weight for ts in data.sets]
    return make_train_iterator(
        [ts.source for ts in data.sets], encoder.tokenizer, global_batch_size=config.train.batch_size,
        max_seq_length=config.model.max_seq_length, seed=config.seed, shuffle=data.shuffle,
        mixing=d.mixing, weights=weights if any(weights) else None,
        prompts=[ts.prompts for ts in data.sets],
        no_duplicates=d.no_duplicates, buckets=tuple(d.buckets), prefetch=d.prefetch,
        pack_length=d.pack_length, num_shards=batch_shard_count(mesh) // jax.process_count(),
        row_multiple=max(1, config.train.grad_cache_tokens // max(d.pack_length, 1)),
        mask_prompts=_masks_prompts(encoder),
    )


def _masks_prompts(encoder: SentenceEncoder) -> bool:
    """Whether batches carry `prompt_mask`: the model pools without its prompts (include_prompt=False)."""
    return encoder.pools_without_prompt


def _uses_text_ids(config: ml_collections.ConfigDict, ts: builders.TrainSet) -> bool:
    """Whether dataset `ts`'s loss receives the batch's text ids (false-negative masking)."""
    return bool(config.data.text_ids) and builders.loss_slot_configs(config)[ts.loss_slot].name in TEXT_ID_LOSSES


def step_for(config: ml_collections.ConfigDict, parts: builders.TrainParts, slot: str, encode_fn):
    """The train step of one loss slot (GradCache over pairs or packed tokens when configured);
    the frozen guide (GIST) goes to the run's loss only (validate refuses guided per-dataset losses).
    `encode_fn`: the dataset's (`builders.sides_encode_fn`: a Router routes each side)."""
    t, value_and_grad_fn, loss_fn = config.train, None, parts.loss_fns[slot]
    guide_encode_fn = parts.guide_encode_fn if slot == builders.RUN_LOSS else None
    if t.grad_cache_chunk or t.grad_cache_tokens:
        value_and_grad_fn = make_grad_cache_value_and_grad(
            encode_fn, loss_fn, t.grad_cache_chunk or None, chunk_tokens=t.grad_cache_tokens or None,
            guide_encode_fn=guide_encode_fn)
    return make_train_step(encode_fn, loss_fn, parts.optimizer, schedule=parts.schedule,
                           dropout=t.dropout, value_and_grad_fn=value_and_grad_fn, guide_encode_fn=guide_encode_fn,
                           loss_slot=None if len(parts.loss_fns) == 1 else slot)


def _compiled_steps(config: ml_collections.ConfigDict, parts: builders.TrainParts, data: RunData, mesh: Mesh):
    """One jitted train step per dataset (shared by datasets with the same loss and batch keys):
    each dataset's batches go through its own loss, with the state's and batch's shardings."""
    compiled, steps = {}, []
    for ts in data.sets:
        keys = TOKEN_KEYS + ("text_index",) * bool(config.data.pack_length)
        keys += ("prompt_mask",) * _masks_prompts(parts.encoder)
        example = {k: np.zeros((1, 1, 1), np.int32) for k in keys}
        if ts.source.label_kind is not None:
            example["labels"] = np.zeros((1,), np.float32)
        if _uses_text_ids(config, ts):
            example["text_ids"] = np.zeros((1, 1), np.int32)
        encode_fn = builders.sides_encode_fn(config.model, parts.encoder, ts.source.sides)
        cache_key = (ts.loss_slot, tuple(sorted(example)), getattr(encode_fn, "side_routes", None))
        if cache_key not in compiled:
            compiled[cache_key] = compile_train_step(step_for(config, parts, ts.loss_slot, encode_fn),
                                                     parts.shardings, example, mesh)
        steps.append(compiled[cache_key])
    return steps


def _batch_router(config: ml_collections.ConfigDict, parts: builders.TrainParts, data: RunData, mesh: Mesh):
    """(to_device, train_step) for the loop: a host batch goes to the step of its dataset, without
    the host-only `dataset` index (and without text ids when that dataset's loss takes none);
    with several datasets each step also reports its loss as `loss/<dataset>`."""
    steps = _compiled_steps(config, parts, data, mesh)
    text_ids = [_uses_text_ids(config, ts) for ts in data.sets]
    names = [ts.name for ts in data.sets]

    def to_device(host_batch: dict):
        d = int(host_batch["dataset"])
        arrays = {k: v for k, v in host_batch.items() if k != "dataset" and (k != "text_ids" or text_ids[d])}
        return d, to_global_array(arrays, mesh)

    def train_step(state, routed):
        d, batch = routed
        state, metrics = steps[d](state, batch)
        if len(names) > 1:
            metrics = {**metrics, f"loss/{names[d]}": metrics["loss"]}
        return state, metrics

    return to_device, train_step


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | pathlib.Path) -> LoopResult:
    """Trains (or resumes) the run in `workdir` as `config` describes; returns how it ended.

    Process 0 holds the workdir's lock for the whole run (`WorkdirBusyError` if another run has
    it). Raises `ConfigError`, `DataError`, `CheckpointError` or `NonFiniteLossError` (the CLI
    turns them into exit codes), and `OSError(errno, ..., workdir)` when the disk fills up or
    the folder is read-only; a preempted run returns with `preempted=True`.
    """
    validate(config)
    workdir = pathlib.Path(workdir)
    lock = WorkdirLock(workdir) if jax.process_index() == 0 else contextlib.nullcontext()
    with storage_errors(workdir), lock:
        workdir.mkdir(parents=True, exist_ok=True)
        return _train(config, workdir)


def _train(config: ml_collections.ConfigDict, workdir: pathlib.Path) -> LoopResult:
    mesh = make_mesh(config.mesh.data, config.mesh.fsdp, devices=jax.devices()[: config.mesh.num_devices or None])
    with jax.set_mesh(mesh), PreemptionFlag() as preemption:
        encoder = builders.build_encoder(config.model, config.seed)
        evaluates = bool(config.eval.sts.path or config.eval.sts.tfds.builder)
        if evaluates:
            _check_best_metric(config.checkpoint.best_metric, builders.sts_metric_names(encoder.similarity_fn_name))
        data = prepare_data(config, encoder.tokenizer)
        parts = builders.build_parts(config, mesh, total_steps=data.total_steps, num_labels=data.num_labels,
                                     encoder=encoder)
        manager = _manager(config, workdir)
        frozen = jax.device_put(parts.frozen, parts.shardings.frozen)  # checkpoints do not store it
        restored = ckpt.restore_latest(manager, parts.abstract, frozen)
        # only once model, data and checkpoint load: a bad run leaves a run folder as it was
        _write_config(config, workdir)
        _write_json(workdir / RUN_INFO, {"num_labels": data.num_labels, "total_steps": data.total_steps,
                                         "datasets": [ts.name for ts in data.sets],
                                         "dataset_sizes": {ts.name: len(ts.source) for ts in data.sets}})
        if restored is None:
            state, _ = create_train_state(parts.params, parts.optimizer, parts.dropout_rng, mesh,
                                          config.mesh.fsdp_min_size, frozen)
        else:
            state = restored[1]
        iterator = _train_iterator(config, data, encoder, mesh)
        if restored is not None:
            iterator.set_state(restored[2])
        evaluate = None
        if evaluates:
            evaluate = builders.make_sts_evaluate(config.eval.sts, encoder, config.eval.batch_size)
        writer = MetricWriter(workdir, total_steps=data.total_steps, start_step=int(jax.device_get(state.step)),
                              batch_size=config.train.batch_size, log_every=config.train.log_every_steps,
                              progress_bar=config.train.progress_bar)
        if restored is not None:
            writer.message(f"resumed from {manager.directory}/{restored[0]}")
        to_device, train_step = _batch_router(config, parts, data, mesh)
        closers = (writer.close, manager.wait_until_finished, manager.close, iterator.close)
        try:
            result = train_loop(
                state=state, train_step=train_step, batches=iterator,
                data_state=iterator.get_state, to_device=to_device,
                manager=manager, total_steps=data.total_steps, writer=writer, evaluate=evaluate,
                eval_every=config.eval.every_steps, best_metric=config.checkpoint.best_metric,
                stop_requested=preemption.reached, steps_per_epoch=data.steps_per_epoch,
            )
        except BaseException:
            _close_all(closers, failing=True)  # the first error is the one to report
            raise
        _close_all(closers, failing=False)
        return result


def _check_best_metric(best_metric: str, names: list[str]) -> None:
    """checkpoint.best_metric must be one the evaluation reports (`names`): a misspelt name would
    keep no checkpoint as the best, silently."""
    if best_metric and best_metric not in names:
        raise ConfigError(f"checkpoint.best_metric={best_metric!r}: the evaluation reports {', '.join(names)}")


def _close_all(closers, *, failing: bool) -> None:
    """Calls every closer; while an error propagates, later failures (e.g. the same full disk
    again on the final wait for an async save) are logged instead of hiding it."""
    for close in closers:
        try:
            close()
        except Exception:
            if not failing:
                raise
            log.exception("while closing after an error")


def load_trained_encoder(workdir: str | pathlib.Path, step: int | None = None) -> tuple[SentenceEncoder, int]:
    """(SentenceEncoder with the trained weights, step) from a run folder.

    Picks the best checkpoint by `checkpoint.best_metric` if any has one, else the latest;
    the checkpoint's fingerprint is verified, and one that fails is skipped with a warning for
    the newest that verifies (unless `step` asks for that one). Works on any device count
    (restores onto one).
    """
    workdir = pathlib.Path(workdir)
    config_path = workdir / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path} not found: is {workdir} a siamjax run folder?")
    config = ml_collections.ConfigDict(json.loads(config_path.read_text()))
    mesh = make_mesh(1, 1, devices=jax.local_devices()[:1])
    with jax.set_mesh(mesh):
        labels = json.loads((workdir / RUN_INFO).read_text())["num_labels"]
        if not isinstance(labels, dict):  # a run_info.json from before per-dataset losses
            labels = {builders.RUN_LOSS: labels}
        parts = builders.build_parts(config, mesh, total_steps=1, num_labels=labels)
        manager = _manager(config, workdir, read_only=True)
        try:
            step, state = _restore_for_export(manager, parts, step, workdir)
        finally:
            manager.close()
    params = jax.tree.map(np.asarray, jax.device_get(encoder_params(state.params, state.frozen)))
    return parts.encoder.with_params(params), step  # a LoRA encoder: `save` writes the merged model


def _restore_for_export(manager, parts: builders.TrainParts, step: int | None, workdir: pathlib.Path):
    """(step, state): `step` if given, else the best checkpoint, falling back to the newest that
    verifies (as a resumed `train` does; read-only, so nothing is moved aside), with a warning.
    A LoRA run's frozen base comes from the config (`parts.frozen`), as checkpoints do not hold it."""
    abstract, frozen = parts.abstract, parts.frozen
    if step is not None:
        return step, ckpt.restore_step(manager, step, abstract, frozen)[0]
    best = ckpt.best_or_latest_step(manager)
    if best is None:
        raise FileNotFoundError(f"no checkpoint in {workdir / 'checkpoints'}")
    candidates = [best] + sorted((s for s in manager.all_steps() if s != best), reverse=True)
    failures = []
    for candidate in candidates:
        try:
            state, _ = ckpt.restore_step(manager, candidate, abstract, frozen)
        except ckpt.FrozenBaseMismatch:
            raise
        except Exception as err:  # noqa: BLE001 - any failure means "not usable"
            failures.append(f"step {candidate}: {type(err).__name__}: {' '.join(str(err).split())[:200]}")
            continue
        if failures:
            warnings.warn(f"skipped corrupt checkpoint(s) in {manager.directory} ({'; '.join(failures)}); "
                          f"using step {candidate}", stacklevel=2)
        return candidate, state
    raise ckpt.CheckpointError(f"no usable checkpoint in {manager.directory}: {'; '.join(failures)}")


def export_run(workdir: str | pathlib.Path, output: str | pathlib.Path, step: int | None = None, *,
               adapter: str | pathlib.Path | None = None) -> tuple[pathlib.Path, int]:
    """Writes a run's best (else last, or `step`) checkpoint as a sentence-transformers folder
    (a LoRA run's adapters merged into the weights), with the prompts it trained with
    (`model_card.training_prompts`, added to the base model's) and a model card of the run
    (`model_card.render`); with `adapter`, a LoRA run's adapters as a PEFT folder there too (for
    `peft` / sentence-transformers' `load_adapter` on the base).

    In a multi-process job every process joins the (collective) orbax restore, each onto one
    of its own devices, and only process 0 writes the folder. Returns (folder, step).
    """
    output, workdir = pathlib.Path(output), pathlib.Path(workdir)
    check_writable(output, "model folder")  # before the restore, not after it
    if adapter is not None:
        check_writable(pathlib.Path(adapter), "adapter folder")
    encoder, step = load_trained_encoder(workdir, step)
    if adapter is not None and encoder.lora is None:
        raise ValueError(f"{workdir} is not a LoRA run (model.lora.rank is 0): it has no adapters to export")
    config = ml_collections.ConfigDict(json.loads((workdir / "config.json").read_text()))
    encoder = encoder.with_settings(prompts={**encoder.prompts, **model_card.training_prompts(config)})
    if jax.process_index() == 0:
        card = model_card.render(encoder, config, json.loads((workdir / RUN_INFO).read_text()), step,
                                 workdir / "metrics.jsonl")
        encoder.save(output, card=card)
        if adapter is not None:
            encoder.save_adapter(adapter, base_model_name_or_path=config.model.name_or_path)
    return output, step
