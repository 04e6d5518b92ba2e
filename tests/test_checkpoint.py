"""Orbax checkpoints of {sharded state, data-iterator state}: keep policies, verification, fallback."""
import json
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from siamjax.train import checkpoint as ckpt
from siamjax import parallel
from siamjax.train import optim
from siamjax.train import state as train_state


@pytest.fixture()
def setup():
    """A sharded TrainState on a 2 x 4 mesh and its abstract target."""
    mesh = parallel.make_mesh(2, 4)
    params = {"encoder": {"dense": {"kernel": jnp.arange(64 * 32, dtype=jnp.float32).reshape(64, 32) / 1e3,
                                    "bias": jnp.zeros(32)}},
              "loss": {"log_scale": jnp.float32(3.0)}}
    optimizer = optim.make_optimizer(1e-3)
    state, _ = train_state.create_train_state(params, optimizer, jax.random.PRNGKey(0), mesh, 64)
    abstract, _ = train_state.state_shardings(params, optimizer, mesh, 64)
    return state, abstract


def bump(state, k):
    """A distinguishable state for step k."""
    return state.replace(step=jnp.int32(k), params=jax.tree.map(lambda x: x + k, state.params))


def save_steps(directory, state, steps, metrics=None, **kw):
    manager = ckpt.make_manager(directory, save_interval_steps=1, **kw)
    for k in steps:
        ckpt.save(manager, k, bump(state, k), {"step": k, "cursor": [k, 2 * k]},
                  metrics=(metrics or {}).get(k), force=True)
    manager.wait_until_finished()
    return manager


def assert_state_equal(a, b):
    jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), a, b)


def test_roundtrip_restores_sharding_values_and_data_state(tmp_path, setup):
    state, abstract = setup
    save_steps(tmp_path / "ck", state, [1, 2])
    manager = ckpt.make_manager(tmp_path / "ck", save_interval_steps=1)
    step, restored, data_state = ckpt.restore_latest(manager, abstract)
    assert step == 2 and data_state == {"step": 2, "cursor": [2, 4]}
    assert_state_equal(restored, bump(state, 2))
    kernel = restored.params["encoder"]["dense"]["kernel"]
    assert kernel.sharding.spec == state.params["encoder"]["dense"]["kernel"].sharding.spec


def test_bytes_data_state_roundtrip(tmp_path, setup):
    state, abstract = setup
    manager = ckpt.make_manager(tmp_path / "ck", save_interval_steps=1)
    ckpt.save(manager, 1, state, b"\x00grain-state\xff", force=True)
    manager.wait_until_finished()
    assert ckpt.restore_latest(manager, abstract)[2] == b"\x00grain-state\xff"


def test_no_checkpoint_returns_none(tmp_path, setup):
    _, abstract = setup
    assert ckpt.restore_latest(ckpt.make_manager(tmp_path / "ck", save_interval_steps=1), abstract) is None


def test_keeps_last_n_and_best_by_metric(tmp_path, setup):
    state, _ = setup
    metrics = {2: {"sts/spearman_cosine": 80.0}, 4: {"sts/spearman_cosine": 85.0},
               6: {"sts/spearman_cosine": 82.0}}
    manager = save_steps(tmp_path / "ck", state, range(1, 9), metrics, max_to_keep=2, keep_best=1,
                         best_metric="sts/spearman_cosine")
    assert sorted(manager.all_steps()) == [4, 7, 8]  # best (4) + latest two
    assert ckpt.best_or_latest_step(manager) == 4


def test_interval_policy_and_force(tmp_path, setup):
    state, _ = setup
    manager = ckpt.make_manager(tmp_path / "ck", save_interval_steps=5, max_to_keep=10)
    saved = [k for k in range(1, 12) if ckpt.save(manager, k, bump(state, k))]
    assert ckpt.save(manager, 12, bump(state, 12), force=True)
    manager.wait_until_finished()
    assert saved == [5, 10] and sorted(manager.all_steps()) == [5, 10, 12]
    assert not ckpt.save(manager, 12, state, force=True)  # never overwrites a step


def _latest_state_files(directory: pathlib.Path, step: int):
    return [p for p in (directory / str(step) / "state").rglob("*") if p.is_file() and p.stat().st_size > 0]


def test_corrupt_latest_checkpoint_falls_back_with_warning(tmp_path, setup):
    state, abstract = setup
    save_steps(tmp_path / "ck", state, [1, 2, 3])
    for path in _latest_state_files(tmp_path / "ck", 3):
        path.write_bytes(b"garbage" * 3)
    manager = ckpt.make_manager(tmp_path / "ck", save_interval_steps=1)
    with pytest.warns(UserWarning, match="checkpoint at step 3 .* corrupt or incomplete"):
        step, restored, data_state = ckpt.restore_latest(manager, abstract)
    assert step == 2 and data_state["step"] == 2
    assert_state_equal(restored, bump(state, 2))
    assert not (tmp_path / "ck" / "3").exists()
    assert any((tmp_path / ckpt.CORRUPT_DIRNAME).iterdir()), "the bad checkpoint is kept aside"
    assert 3 not in manager.all_steps()
    # training can continue and save step 3 again
    ckpt.save(manager, 3, bump(state, 3), {"step": 3}, force=True)
    manager.wait_until_finished()
    assert ckpt.restore_latest(manager, abstract)[0] == 3


def test_fingerprint_mismatch_is_detected(tmp_path, setup):
    """Values that load fine but differ from what was saved (silent corruption) are rejected."""
    state, abstract = setup
    save_steps(tmp_path / "ck", state, [1, 2])
    meta_file = next((tmp_path / "ck" / "2" / ckpt.META_ITEM).glob("metadata"))
    meta = json.loads(meta_file.read_text())
    meta["fingerprint"][0] = (meta["fingerprint"][0] + 1) % 2**32
    meta_file.write_text(json.dumps(meta))
    manager = ckpt.make_manager(tmp_path / "ck", save_interval_steps=1)
    with pytest.warns(UserWarning, match="fingerprint does not match"):
        assert ckpt.restore_latest(manager, abstract)[0] == 1


def test_truncated_metadata_and_half_written_tmp_dir(tmp_path, setup):
    state, abstract = setup
    save_steps(tmp_path / "ck", state, [1, 2])
    meta_file = next((tmp_path / "ck" / "2" / ckpt.META_ITEM).glob("metadata"))
    meta_file.write_text(meta_file.read_text()[:20])
    # what a SIGKILL during an async save leaves: an unfinalised temporary step folder
    tmp_dir = tmp_path / "ck" / "3.orbax-checkpoint-tmp-1234"
    (tmp_dir / "state").mkdir(parents=True)
    (tmp_dir / "state" / "partial").write_bytes(b"\x00" * 10)
    manager = ckpt.make_manager(tmp_path / "ck", save_interval_steps=1)
    with pytest.warns(UserWarning, match="step 2"):
        assert ckpt.restore_latest(manager, abstract)[0] == 1
    for _ in range(200):  # orbax removes unfinalised folders in the background on creation
        if not tmp_dir.exists():
            break
        time.sleep(0.05)
    assert not tmp_dir.exists(), "temporary folders of killed saves are cleaned up"


def test_all_checkpoints_corrupt_is_an_error(tmp_path, setup):
    state, abstract = setup
    save_steps(tmp_path / "ck", state, [1])
    for path in _latest_state_files(tmp_path / "ck", 1):
        path.write_bytes(b"x")
    manager = ckpt.make_manager(tmp_path / "ck", save_interval_steps=1)
    with pytest.warns(UserWarning), pytest.raises(ckpt.CheckpointError, match="no usable checkpoint"):
        ckpt.restore_latest(manager, abstract)


def test_fingerprint_is_sharding_independent(setup):
    state, _ = setup
    single = jax.device_put(jax.device_get(state), jax.devices()[0])
    assert ckpt.state_fingerprint(state) == ckpt.state_fingerprint(single)
    assert ckpt.state_fingerprint(bump(state, 1)) != ckpt.state_fingerprint(state)


def test_checkpoint_of_another_config_is_reported_not_quarantined(tmp_path, setup):
    """A changed model/loss/optimizer is a config problem: clear error, files left in place."""
    state, _ = setup
    save_steps(tmp_path / "ck", state, [1, 2])
    mesh = parallel.make_mesh(2, 4)
    other = {"encoder": {"dense": {"kernel": jnp.zeros((64, 16)), "bias": jnp.zeros(16)}}, "loss": {}}
    abstract, _ = train_state.state_shardings(other, optim.make_optimizer(1e-3), mesh, 64)
    manager = ckpt.make_manager(tmp_path / "ck", save_interval_steps=1)
    with pytest.raises(ckpt.CheckpointError, match=r"written for a different model.*unexpected \[.*"
                                                    r"'params.loss.log_scale'\]; reshaped \['opt_state"):
        ckpt.restore_latest(manager, abstract)
    assert (tmp_path / "ck" / "2").exists() and not (tmp_path / ckpt.CORRUPT_DIRNAME).exists()
