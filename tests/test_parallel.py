"""Mesh creation, parameter shardings of the `default` preset (>= 98% of bytes sharded, golden specs), batches.

Regenerate the golden dump after an intended change of names or rules:
  PIXELHDM_UPDATE_GOLDEN=1 python -m pytest tests/test_parallel.py
"""

import json
import os
import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType
from jax.sharding import PartitionSpec as P

from configs.base import get_config
from pixelhdm_jax import parallel
from pixelhdm_jax.models.pixelhdm import PixelHDM

GOLDEN = pathlib.Path(__file__).parent / "golden" / "default_param_specs_2x2x2.json"


def _abstract_params(config):
  """Params of `config.model` as ShapeDtypeStructs with logical names (nothing is allocated)."""
  m = config.model
  inputs = (jnp.zeros((1, m.patch_size, m.patch_size, 3)), jnp.zeros((1,)), jnp.zeros((1, 2, m.text_dim)),
            jnp.ones((1, 2), bool), jnp.zeros((1, m.text_dim)))
  return jax.eval_shape(PixelHDM.from_config(m).init, jax.random.PRNGKey(0), *inputs)["params"]


@pytest.fixture(scope="module")
def default_on_2x2x2():
  config = get_config("default")
  config.mesh.shape = (2, 2, 2)
  mesh = parallel.create_mesh(config.mesh)
  rules = parallel.logical_rules(config.mesh)
  abstract = _abstract_params(config)
  return abstract, parallel.param_shardings(abstract, mesh, rules)


def _spec_dump(shardings):
  flat = jax.tree_util.tree_flatten_with_path(shardings)[0]
  return {"/".join(key.key for key in path): [list(axis) if isinstance(axis, tuple) else axis
                                              for axis in sharding.spec]
          for path, sharding in flat}


@pytest.mark.parametrize("shape, devices, expected", [((1, -1, 1), 8, (1, 8, 1)), ((2, -1, 2), 8, (2, 2, 2)),
                                                      ((-1, 1, 1), 1, (1, 1, 1)), ((2, 2, 2), 8, (2, 2, 2))])
def test_mesh_shape(shape, devices, expected):
  assert parallel.mesh_shape(shape, devices) == expected


@pytest.mark.parametrize("shape, message", [
    ((3, -1, 1), r"mesh.shape=\(3, -1, 1\) does not fit 8 devices: the fixed sizes multiply to 3"),
    ((2, 2, 1), r"mesh.shape=\(2, 2, 1\) needs 4 devices but 8 are available")])
def test_mesh_shape_that_does_not_fit(shape, message):
  with pytest.raises(ValueError, match=message):
    parallel.mesh_shape(shape, 8)


def test_create_mesh_fills_minus_one_with_auto_axes():
  mesh = parallel.create_mesh(get_config("default").mesh)
  assert dict(mesh.shape) == {"data": 1, "fsdp": 8, "tensor": 1}
  assert mesh.axis_types == (AxisType.Auto,) * 3


def test_default_params_sharded_bytes(default_on_2x2x2):
  abstract, shardings = default_on_2x2x2
  sizes = [np.prod(leaf.shape) for leaf in jax.tree.leaves(nn.meta.unbox(abstract))]
  assert sum(sizes) == 356_364_355  # abstract only: nothing was materialised
  assert parallel.sharded_fraction(abstract, shardings) >= 0.98


def test_default_param_specs_match_golden(default_on_2x2x2):
  dump = _spec_dump(default_on_2x2x2[1])
  for name, spec in dump.items():
    axes = [a for axis in spec if axis for a in ([axis] if isinstance(axis, str) else axis)]
    assert len(axes) == len(set(axes)), f"{name}: mesh axis used twice in {spec}"
  if os.environ.get("PIXELHDM_UPDATE_GOLDEN"):
    GOLDEN.write_text(json.dumps(dump, indent=1, sort_keys=True) + "\n")
  assert dump == json.loads(GOLDEN.read_text()), f"partition specs changed; regenerate {GOLDEN.name} if intended"


def test_batch_sharding_and_global_batch():
  config = get_config("tiny")
  config.mesh.shape = (2, 2, 2)
  mesh = parallel.create_mesh(config.mesh)
  rules = parallel.logical_rules(config.mesh)
  assert parallel.batch_sharding(mesh, rules).spec == P(("fsdp", "data"))
  local = {"images": np.arange(8 * 3, dtype=np.float32).reshape(8, 3), "t": np.linspace(0, 1, 8)}
  batch = parallel.global_batch(local, mesh, rules)
  np.testing.assert_array_equal(batch["images"], local["images"])
  assert batch["images"].sharding.shard_shape((8, 3)) == (2, 3)
  assert batch["t"].sharding.spec == P(("fsdp", "data"))


@pytest.fixture(scope="module")
def tiny_reference():
  """The tiny model, its params, a batch of 4 (32x48 images, 8 text tokens) and the one-device velocity."""
  config = get_config("tiny")
  model = PixelHDM.from_config(config.model)
  rng = np.random.default_rng(0)
  inputs = (jnp.asarray(rng.uniform(-1, 1, (4, 32, 48, 3)), jnp.float32), jnp.linspace(0.1, 0.9, 4),
            jnp.asarray(rng.standard_normal((4, 8, config.model.text_dim)), jnp.float32),
            jnp.arange(8)[None, :] < jnp.asarray([3, 8, 5, 1])[:, None],
            jnp.asarray(rng.standard_normal((4, config.model.text_dim)), jnp.float32))
  params = jax.jit(model.init)(jax.random.PRNGKey(0), *inputs)
  return model, params, inputs, jax.jit(model.apply)(params, *inputs).velocity


@pytest.mark.parametrize("shape", [(2, 2, 2), pytest.param((1, 4, 2), marks=pytest.mark.slow)])
def test_sharded_tiny_forward_matches_unsharded(tiny_reference, shape):
  """Params placed by `param_shardings`, batch by `batch_sharding`: same velocity as on one device.

  On 2x2x2 this guards the batch rule's fsdp-major order: with ("data", "fsdp") XLA computed wrong rows.
  """
  model, params, inputs, reference = tiny_reference
  mesh_config = get_config("tiny").mesh
  mesh_config.shape = shape
  mesh = parallel.create_mesh(mesh_config)
  rules = parallel.logical_rules(mesh_config)
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    params = jax.device_put(params, parallel.param_shardings(jax.eval_shape(lambda: params), mesh, rules))
    batch = jax.device_put(inputs, parallel.batch_sharding(mesh, rules))
    velocity = jax.jit(model.apply)(params, *batch).velocity
  np.testing.assert_allclose(velocity, reference, atol=2e-5, rtol=1e-5)


def test_maybe_initialize_distributed_is_a_no_op_for_one_process(monkeypatch):
  for name in ("MEGASCALE_COORDINATOR_ADDRESS", "TPU_WORKER_HOSTNAMES", "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE"):
    monkeypatch.delenv(name, raising=False)
  monkeypatch.setenv("SLURM_NTASKS", "1")
  assert parallel.maybe_initialize_distributed() is False
  assert not jax.distributed.is_initialized()


def test_logical_rules_are_flax_tuples():
  rules = parallel.logical_rules(get_config("default").mesh)
  assert ("batch", ("fsdp", "data")) in rules and ("layers", None) in rules
  assert all(isinstance(axes, (str, tuple, type(None))) for _, axes in rules)


@pytest.mark.parametrize("name, value", [("SLURM_NTASKS", "4"), ("OMPI_COMM_WORLD_SIZE", "2"),
                                         ("TPU_WORKER_HOSTNAMES", "host-0,host-1"),
                                         ("MEGASCALE_COORDINATOR_ADDRESS", "10.0.0.1:8080")])
def test_multi_process_launch_is_detected(monkeypatch, name, value):
  for other in ("MEGASCALE_COORDINATOR_ADDRESS", "TPU_WORKER_HOSTNAMES", "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE"):
    monkeypatch.delenv(other, raising=False)
  assert not parallel._multi_process_launch()
  monkeypatch.setenv(name, value)
  assert parallel._multi_process_launch()
