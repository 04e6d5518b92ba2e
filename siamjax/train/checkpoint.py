"""Checkpoints of {train state, data-iterator state} with orbax, verified on restore.

Saving is asynchronous (training continues while arrays are written), keeps the last N
checkpoints plus the best K by an evaluation metric, and saves on preemption signals. Each
checkpoint stores a fingerprint of the state (a wrapping uint32 sum of every leaf's bits,
exact and independent of sharding); `restore` recomputes it, and a checkpoint that fails to
load or does not match (half-written, truncated, bit-rotted) is moved aside with a warning
and the previous one is used instead.

A run's frozen parameters (`state.frozen`: a LoRA run's base, GIST's guide) are not written:
the config rebuilds them bit for bit, and rewriting a Qwen3-8B base (16 GB in bf16) at every
save would cost more than the adapters' whole training state. Their fingerprint is stored, and a
restore onto a different base (the model folder changed since) is refused.
"""
from __future__ import annotations

import base64
import logging
import shutil
import time
import warnings
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies

log = logging.getLogger(__name__)


class _QuietExpectedWarnings(logging.Filter):
    """Orbax warns on every save without metrics when best-tracking is on (siamjax records
    metrics only at evaluation steps, on purpose) and whenever a folder is opened read-only
    (as export does); both are expected here, so they are dropped."""

    EXPECTED = ("did not provide metrics", "read_only=True", "Given directory is read only")

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(text in message for text in self.EXPECTED)


logging.getLogger("absl").addFilter(_QuietExpectedWarnings())

STATE_ITEM = "state"
META_ITEM = "meta"
CORRUPT_DIRNAME = "corrupt_checkpoints"


class CheckpointError(RuntimeError):
    """No usable checkpoint exists although some were found (all failed verification)."""


class FrozenBaseMismatch(CheckpointError):
    """The checkpoint is sound but was trained on another frozen base: a config problem, so the
    checkpoint is reported, never moved aside."""


def make_manager(
    directory: str | Path,
    *,
    save_interval_steps: int,
    max_to_keep: int = 2,
    keep_best: int = 1,
    best_metric: str | None = None,
    best_mode: str = "max",
    async_save: bool = True,
    read_only: bool = False,
) -> ocp.CheckpointManager:
    """An orbax CheckpointManager for `directory` with siamjax's save/keep policies.

    Saves every `save_interval_steps` and whenever a preemption sync point is reached; keeps
    the latest `max_to_keep` checkpoints and, if `best_metric` is given, also the `keep_best`
    best by that metric (checkpoints saved with metrics, i.e. at evaluation steps).
    Half-written temporary directories from a killed run are removed on creation.
    `read_only` opens an existing folder for export/evaluation without touching it.
    """
    if best_mode not in ("max", "min"):
        raise ValueError(f"best_mode must be 'max' or 'min', got {best_mode!r}")
    keep: list[Any] = [policies.LatestN(n=max(1, max_to_keep))]
    best_fn = None
    if best_metric:
        best_fn = lambda metrics: float(metrics[best_metric])  # noqa: E731
        keep.append(
            policies.BestN(
                get_metric_fn=best_fn,
                reverse=best_mode == "min",
                n=max(1, keep_best),
                keep_checkpoints_without_metrics=False,
            )
        )
    options = ocp.CheckpointManagerOptions(
        save_decision_policy=policies.AnySavePolicy(
            [
                policies.FixedIntervalPolicy(max(1, save_interval_steps)),
                policies.PreemptionCheckpointingPolicy(),
            ]
        ),
        preservation_policy=policies.AnyPreservationPolicy(keep),
        best_fn=best_fn,
        best_mode=best_mode,
        enable_async_checkpointing=async_save,
        cleanup_tmp_directories=not read_only,
        create=not read_only,
        read_only=read_only,
    )
    handlers = {STATE_ITEM: ocp.StandardCheckpointHandler(), META_ITEM: ocp.JsonCheckpointHandler()}
    return ocp.CheckpointManager(Path(directory).absolute(), item_handlers=handlers, options=options)


@jax.jit
def _leaf_fingerprints(tree):
    """Per-leaf wrapping uint32 sum of the raw bits: exact, order- and sharding-independent."""

    def leaf_bits(x):
        x = jnp.asarray(x)
        if x.dtype.itemsize == 4:
            bits = jax.lax.bitcast_convert_type(x, jnp.uint32)
        elif x.dtype.itemsize == 2:
            bits = jax.lax.bitcast_convert_type(x, jnp.uint16).astype(jnp.uint32)
        else:
            bits = x.astype(jnp.uint32)
        return jnp.sum(bits, dtype=jnp.uint32)

    return [leaf_bits(x) for x in jax.tree.leaves(tree)]


def state_fingerprint(state: Any) -> list[int]:
    """The fingerprint of `state` as plain ints (stored in the checkpoint's metadata)."""
    return [int(v) for v in jax.device_get(_leaf_fingerprints(state))]


def _stored(state: Any) -> Any:
    """What a checkpoint holds of `state`: everything but its frozen parameters (module docstring)."""
    return state.replace(frozen={}) if getattr(state, "frozen", None) else state


def _encode_data_state(data_state: Any) -> Any:
    """Makes an iterator state JSON-safe (grain may return bytes)."""
    if isinstance(data_state, bytes):
        return {"__bytes_b64__": base64.b64encode(data_state).decode("ascii")}
    return data_state


def _decode_data_state(encoded: Any) -> Any:
    """Inverse of `_encode_data_state`."""
    if isinstance(encoded, dict) and set(encoded) == {"__bytes_b64__"}:
        return base64.b64decode(encoded["__bytes_b64__"])
    return encoded


def save(
    manager: ocp.CheckpointManager,
    step: int,
    state: Any,
    data_state: Any = None,
    *,
    metrics: dict[str, float] | None = None,
    force: bool = False,
) -> bool:
    """Saves (asynchronously) the state and data-iterator state at `step`; True if it saved.

    `force` saves even off the interval (final step, preemption, evaluation); `metrics` (for
    best-checkpoint tracking) is only recorded when given.
    """
    if not force and not manager.should_save(step):
        return False
    if step in manager.all_steps():
        return False
    stored = _stored(state)
    meta = {
        "step": int(step),
        "fingerprint": state_fingerprint(stored),
        "frozen_fingerprint": state_fingerprint(getattr(state, "frozen", {})),
        "data_state": _encode_data_state(data_state),
        "saved_at": time.time(),
    }
    args = ocp.args.Composite(
        **{STATE_ITEM: ocp.args.StandardSave(stored), META_ITEM: ocp.args.JsonSave(meta)}
    )
    return bool(manager.save(step, args=args, metrics=metrics, force=True))


def _quarantine(manager: ocp.CheckpointManager, step: int) -> Path | None:
    """Moves a bad step directory out of the manager's folder so it is never picked again."""
    step_dir = Path(manager.directory) / str(step)
    if not step_dir.exists() or jax.process_index() != 0:
        return None
    target = Path(manager.directory).parent / CORRUPT_DIRNAME / f"{step}-{int(time.time())}"
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(step_dir), str(target))
    return target


def restore_step(manager: ocp.CheckpointManager, step: int, abstract_state: Any,
                 frozen: Any = None) -> tuple[Any, Any]:
    """Restores one step into the layout of `abstract_state`, verifies its fingerprint, and joins
    the run's `frozen` parameters (rebuilt from its config, placed as the state wants them).

    Raises CheckpointError if the fingerprint does not match (silent data corruption), or if
    `frozen` is not the frozen base the checkpoint was trained with.
    """
    restored = manager.restore(
        step,
        args=ocp.args.Composite(
            **{
                STATE_ITEM: ocp.args.StandardRestore(_stored(abstract_state)),
                META_ITEM: ocp.args.JsonRestore(),
            }
        ),
    )
    state, meta = restored[STATE_ITEM], restored[META_ITEM]
    expected = meta.get("fingerprint") if isinstance(meta, dict) else None
    if expected is None or state_fingerprint(state) != list(expected):
        raise CheckpointError(f"checkpoint step {step}: state fingerprint does not match its metadata")
    if getattr(abstract_state, "frozen", None):
        if state_fingerprint(frozen) != list(meta.get("frozen_fingerprint", [])):
            raise FrozenBaseMismatch(
                f"checkpoint step {step} in {manager.directory} was trained on another frozen base (a LoRA "
                f"run's model.name_or_path, or GIST's guide, changed since): restore the model it was trained "
                f"from, or train in a new workdir")
        state = state.replace(frozen=frozen)
    return state, _decode_data_state(meta.get("data_state"))


def _leaf_name(path) -> str:
    """Orbax's name for a leaf: its key path joined with dots (e.g. "opt_state.1.0.mu.encoder.w")."""
    return ".".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def layout_mismatch(manager: ocp.CheckpointManager, step: int, abstract_state: Any) -> str | None:
    """None if the saved state has the leaves, shapes and dtypes of `abstract_state`, else what differs.

    A difference means the run's config changed (another model, loss or optimizer), not that
    the files are damaged: such checkpoints are reported, never quarantined.
    """
    tree = manager.item_metadata(step)[STATE_ITEM]
    saved = {m.name: (tuple(m.shape), str(m.dtype))
             for m in jax.tree.leaves(tree, is_leaf=lambda x: hasattr(x, "shape")) if hasattr(m, "name")}
    wanted = {_leaf_name(path): (tuple(x.shape), str(x.dtype))
              for path, x in jax.tree_util.tree_flatten_with_path(abstract_state)[0]}
    if not saved or saved == wanted:  # no readable metadata: left to the restore to judge
        return None
    missing, extra = sorted(set(wanted) - set(saved)), sorted(set(saved) - set(wanted))
    changed = sorted(n for n in set(wanted) & set(saved) if wanted[n] != saved[n])
    parts = [f"{label} {names[:4]}{' ...' if len(names) > 4 else ''}"
             for label, names in (("missing", missing), ("unexpected", extra), ("reshaped", changed)) if names]
    return "; ".join(parts)


def restore_latest(manager: ocp.CheckpointManager, abstract_state: Any,
                   frozen: Any = None) -> tuple[int, Any, Any] | None:
    """(step, state, data_state) of the newest checkpoint that loads and verifies, or None.

    Newer checkpoints that fail are moved to `<workdir>/corrupt_checkpoints/` with a warning
    naming the step and the reason. Raises CheckpointError if checkpoints exist but none is
    usable, or if they were written for another config, rather than silently starting over.
    """
    manager.reload()
    steps = sorted(manager.all_steps(), reverse=True)
    failures = []
    for step in steps:
        try:
            mismatch = layout_mismatch(manager, step, _stored(abstract_state))
        except Exception:  # noqa: BLE001 - unreadable metadata: handled as corruption below
            mismatch = None
        if mismatch:
            raise CheckpointError(
                f"checkpoint step {step} in {manager.directory} was written for a different model, "
                f"loss or optimizer ({mismatch}); train in a new workdir, or restore the config "
                f"that wrote it"
            )
        try:
            state, data_state = restore_step(manager, step, abstract_state, frozen)
        except FrozenBaseMismatch:
            raise
        except Exception as err:  # noqa: BLE001 - any failure means "not usable"
            reason = f"{type(err).__name__}: {str(err)[:300]}"
            failures.append(f"step {step}: {reason}")
            moved = _quarantine(manager, step)
            warnings.warn(
                f"checkpoint at step {step} in {manager.directory} is corrupt or incomplete "
                f"({reason}); moved to {moved}; falling back to the previous checkpoint.",
                stacklevel=2,
            )
            continue
        if failures:
            manager.reload()
        return step, state, data_state
    if failures:
        raise CheckpointError(
            f"no usable checkpoint in {manager.directory}: " + "; ".join(failures)
        )
    return None


def best_or_latest_step(manager: ocp.CheckpointManager) -> int | None:
    """The best step by the tracked metric if any checkpoint has metrics, else the latest."""
    manager.reload()
    best = manager.best_step()
    return best if best is not None else manager.latest_step()
