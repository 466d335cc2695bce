"""The tiny PixelHDM forward with each CPU-runnable kernel matches `xla` end to end, and `check_backend`."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.base import get_config
from pixelhdm_jax import parallel
from pixelhdm_jax.config import check_backend
from pixelhdm_jax.errors import ConfigError
from pixelhdm_jax.models.pixelhdm import PixelHDM


@pytest.fixture(scope="module")
def tiny_reference():
  """Params, inputs and the xla output for a 32x48 image (2x3 patches) and 8 text tokens (3 and 8 valid)."""
  config = get_config("tiny")
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.uniform(-1, 1, (2, 32, 48, 3)), jnp.float32)
  t = jnp.asarray([0.3, 0.8], jnp.float32)
  text = jnp.asarray(rng.standard_normal((2, 8, config.model.text_dim)), jnp.float32)
  text_mask = jnp.arange(8)[None, :] < jnp.asarray([3, 8])[:, None]
  inputs = (images, t, text, text_mask, text[:, 0])
  model = PixelHDM.from_config(config.model, attention="xla")
  params = jax.jit(model.init)(jax.random.PRNGKey(0), *inputs)
  return config, params, inputs, jax.jit(model.apply)(params, *inputs)


@pytest.mark.parametrize("kernel", ["pallas_gpu", "splash"])
def test_tiny_forward_matches_xla(tiny_reference, kernel):
  """Patch path with the text padding mask (joint length 14) and the pixel path without a mask (6)."""
  config, params, inputs, reference = tiny_reference
  out = jax.jit(PixelHDM.from_config(config.model, attention=kernel).apply)(params, *inputs)
  np.testing.assert_allclose(out.velocity, reference.velocity, atol=2e-5, rtol=1e-5)
  np.testing.assert_allclose(out.repa_features, reference.repa_features, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("kernel, backend", [("xla", "cpu"), ("auto", "tpu"), ("cudnn", "gpu"),
                                             ("pallas_gpu", "gpu"), ("splash", "tpu")])
def test_check_backend_accepts(kernel, backend):
  config = get_config("default")
  config.model.attention = kernel
  assert check_backend(config, backend) is config


@pytest.mark.parametrize("kernel, backend", [("cudnn", "cpu"), ("cudnn", "tpu"), ("splash", "gpu"),
                                             ("splash", "cpu"), ("pallas_gpu", "tpu"), ("pallas_gpu", "cpu")])
def test_check_backend_rejects_kernel_the_backend_cannot_run(kernel, backend):
  config = get_config("default")
  config.model.attention = kernel
  with pytest.raises(ConfigError, match=f"model.attention='{kernel}' cannot run on backend '{backend}'"):
    check_backend(config, backend)


def test_check_backend_rejects_cudnn_in_float32():
  config = get_config("default")
  config.model.update(attention="cudnn", compute_dtype="float32")
  with pytest.raises(ConfigError, match="needs bfloat16 or float16 inputs"):
    check_backend(config, "gpu")


def test_check_backend_rejects_cudnn_head_dim():
  config = get_config("default")
  config.model.update(attention="cudnn", hidden_dim=1040, num_heads=8)  # head_dim 130
  with pytest.raises(ConfigError, match="multiple of 8 and <= 128, got 130"):
    check_backend(config, "gpu")


@pytest.mark.slow
@pytest.mark.parametrize("kernel", ["pallas_gpu", "splash"])
def test_tiny_gradients_with_remat_match_xla(tiny_reference, kernel):
  """Parameter gradients through scanned, rematerialised blocks (`remat_policy=full`)."""
  config, params, inputs, _ = tiny_reference

  def grads(attention):
    model = PixelHDM.from_config(config.model, attention=attention, remat_policy="full")
    loss = lambda params: jnp.mean(jnp.square(model.apply(params, *inputs).velocity))
    return jax.jit(jax.grad(loss))(params)

  for path, ref in zip(jax.tree_util.tree_flatten_with_path(grads(kernel))[0],
                             jax.tree.leaves(grads("xla")), strict=True):
    np.testing.assert_allclose(path[1], ref, atol=1e-5, rtol=1e-4, err_msg=jax.tree_util.keystr(path[0]))


@pytest.mark.slow
@pytest.mark.parametrize("kernel", ["pallas_gpu", "splash"])
def test_tiny_forward_under_mesh_matches_xla(tiny_reference, kernel):
  """`shard_map` inside scanned, rematerialised blocks on a 1x4x2 mesh (batch 2 over fsdp 4: replicated)."""
  config, params, inputs, reference = tiny_reference
  mesh_config = get_config("tiny").mesh
  mesh_config.shape = (1, 4, 2)
  model = PixelHDM.from_config(config.model, attention=kernel, remat_policy="full")
  with jax.set_mesh(parallel.create_mesh(mesh_config)), nn.logical_axis_rules(parallel.logical_rules(mesh_config)):
    out = jax.jit(model.apply)(params, *inputs)
  np.testing.assert_allclose(out.velocity, reference.velocity, atol=2e-5, rtol=1e-5)
