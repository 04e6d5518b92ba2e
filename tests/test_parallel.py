"""Mesh construction, the FSDP parameter rule and batch shardings (8 fake CPU devices)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, PartitionSpec as P

from siamjax import parallel


def test_resolve_mesh_shape_fills_minus_one():
    assert parallel.resolve_mesh_shape(-1, 1, 8) == (8, 1)
    assert parallel.resolve_mesh_shape(-1, 4, 8) == (2, 4)
    assert parallel.resolve_mesh_shape(2, -1, 8) == (2, 4)
    assert parallel.resolve_mesh_shape(2, 4, 8) == (2, 4)


@pytest.mark.parametrize("data, fsdp, match", [
    (-1, -1, "both -1"),
    (-1, 3, "mesh.data=-1 cannot fill 8 devices"),
    (2, 2, r"mesh.data=2 x mesh.fsdp=2 = 4 devices, but 8"),
    (0, 1, "mesh.data=0"),
    (1, -2, "mesh.fsdp=-2"),
])
def test_resolve_mesh_shape_errors_name_the_fields(data, fsdp, match):
    with pytest.raises(ValueError, match=match):
        parallel.resolve_mesh_shape(data, fsdp, 8)


def test_make_mesh_axes_and_auto_types():
    mesh = parallel.make_mesh(2, -1)
    assert mesh.axis_names == ("data", "fsdp")
    assert dict(mesh.shape) == {"data": 2, "fsdp": 4}
    assert mesh.axis_types == (AxisType.Auto, AxisType.Auto)
    small = parallel.make_mesh(1, 1, devices=jax.devices()[:1])
    assert small.devices.size == 1


def test_fsdp_spec_picks_largest_divisible_dim():
    assert parallel.fsdp_spec((30720, 384), 4, 1024) == P("fsdp", None)
    assert parallel.fsdp_spec((384, 1536), 4, 1024) == P(None, "fsdp")
    # largest dim not divisible (BERT's 30522-word vocabulary) -> next largest that is
    assert parallel.fsdp_spec((30522, 384), 8, 1024) == P(None, "fsdp")
    # nothing divisible -> replicated
    assert parallel.fsdp_spec((7, 9), 4, 1) == P(None, None)


def test_fsdp_spec_replicates_small_and_fsdp1():
    assert parallel.fsdp_spec((384,), 4, 1024) == P(None)
    assert parallel.fsdp_spec((), 4, 1) == P()
    assert parallel.fsdp_spec((4096, 4096), 1, 1) == P(None, None)


def test_tree_shardings_on_params_and_adam_moments():
    mesh = parallel.make_mesh(2, 4)
    tree = {
        "kernel": jax.ShapeDtypeStruct((64, 32), jnp.float32),
        "bias": jax.ShapeDtypeStruct((32,), jnp.float32),
        "step": jax.ShapeDtypeStruct((), jnp.int32),
        "mu": {"kernel": jnp.zeros((64, 32))},
    }
    out = parallel.tree_shardings(tree, mesh, min_size=1024)
    assert out["kernel"].spec == P("fsdp", None)
    assert out["mu"]["kernel"].spec == out["kernel"].spec  # moments follow their parameter
    assert out["bias"].spec == P(None)
    assert out["step"].spec == P()


def test_batch_shardings_split_b_over_both_axes():
    mesh = parallel.make_mesh(2, 4)
    batch = {"input_ids": np.zeros((2, 16, 32), np.int32), "labels": np.zeros((16,), np.float32)}
    out = parallel.batch_shardings(batch, mesh)
    assert out["input_ids"].spec == P(None, ("data", "fsdp"), None)
    assert out["labels"].spec == P(("data", "fsdp"))
    placed = jax.device_put(batch["input_ids"], out["input_ids"])
    assert placed.addressable_shards[0].data.shape == (2, 2, 32)


def test_check_batch_divisible_names_the_field():
    mesh = parallel.make_mesh(2, 4)
    parallel.check_batch_divisible(16, parallel.batch_shard_count(mesh))
    with pytest.raises(ValueError, match=r"train.batch_size=12 is not divisible by the 8 devices.*e.g. 16"):
        parallel.check_batch_divisible(12, parallel.batch_shard_count(mesh))
    with pytest.raises(ValueError, match=r"global_batch_size=12 is not divisible by the 8 processes"):
        parallel.check_batch_divisible(12, 4, 8, field="global_batch_size")


def test_one_batch_rule_for_jit_and_global_arrays():
    """The jit in-shardings and the assembled global arrays put the pair axis in one place."""
    mesh = parallel.make_mesh(2, 4)
    batch = {"input_ids": np.zeros((2, 16, 8), np.int32), "text_index": np.zeros((2, 8, 2), np.int32),
             "labels": np.zeros((16,), np.float32)}
    specs = {k: s.spec for k, s in parallel.batch_shardings(batch, mesh).items()}
    assert specs == {"input_ids": P(None, ("data", "fsdp"), None), "text_index": P(None, ("data", "fsdp"), None),
                     "labels": P(("data", "fsdp"))}
    arrays = parallel.to_global_array(batch, mesh)
    assert {k: a.sharding.spec for k, a in arrays.items()} == specs
    with pytest.raises(ValueError, match=r"labels.*rank 0"):
        parallel.batch_spec("labels", 0)
