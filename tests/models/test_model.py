"""Shapes, masking, scan/remat equivalence, gradients, dtype and init of the PixelHDM network."""

import math

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import base
from pixelhdm_jax.models.pixelhdm import PixelHDM


def _inputs(config, batch=2, height=48, width=32, text_len=8, seed=0):
  keys = jax.random.split(jax.random.key(seed), 4)
  x = jax.random.normal(keys[0], (batch, height, width, 3))
  t = jax.random.uniform(keys[1], (batch,))
  text = jax.random.normal(keys[2], (batch, text_len, config.model.text_dim))
  lengths = np.linspace(text_len, 1, batch).astype(int)
  mask = jnp.asarray(np.arange(text_len)[None, :] < lengths[:, None])
  pooled = jax.random.normal(keys[3], (batch, config.model.text_dim))
  return x, t, text, mask, pooled


def _tiny(**model_overrides):
  config = base.get_config("tiny")
  config.model.update(compute_dtype="float32", **model_overrides)
  return config


@pytest.fixture(scope="module")
def tiny():
  config = _tiny()
  model = PixelHDM.from_config(config.model)
  inputs = _inputs(config)
  params = model.init(jax.random.key(1), *inputs)["params"]
  return config, model, flax.core.meta.unbox(params), inputs


@pytest.mark.parametrize("batch,height,width", [(1, 32, 32), (2, 48, 32), (1, 32, 64), (3, 64, 48)])
def test_shapes_for_buckets(tiny, batch, height, width):
  config, model, params, _ = tiny
  inputs = _inputs(config, batch=batch, height=height, width=width, text_len=5)
  out = jax.jit(model.apply)({"params": params}, *inputs)
  num_patches = (height // 16) * (width // 16)
  assert out.velocity.shape == (batch, height, width, 3) and out.velocity.dtype == jnp.float32
  assert out.repa_features.shape == (batch, num_patches, config.model.hidden_dim)
  assert out.gamma_l2.shape == () and np.isfinite(out.gamma_l2)
  assert np.all(np.isfinite(out.velocity))


def test_image_only_forward(tiny):
  config, model, params, (x, t, *_rest) = tiny
  out = model.apply({"params": params}, x, t)
  assert out.velocity.shape == x.shape


def test_padded_text_tokens_do_not_change_output(tiny):
  _, model, params, (x, t, text, mask, pooled) = tiny
  assert not np.all(mask), "the inputs must contain padding"
  scrambled = jnp.where(mask[..., None], text, 1e3 * jax.random.normal(jax.random.key(9), text.shape))
  first = model.apply({"params": params}, x, t, text, mask, pooled)
  second = model.apply({"params": params}, x, t, scrambled, mask, pooled)
  np.testing.assert_array_equal(first.velocity, second.velocity)
  np.testing.assert_array_equal(first.repa_features, second.repa_features)
  changed = model.apply({"params": params}, x, t, scrambled, jnp.ones_like(mask), pooled)
  assert not np.allclose(first.velocity, changed.velocity), "unmasked text must matter"


def test_scan_and_unrolled_blocks_agree(tiny):
  config, model, params, inputs = tiny
  unrolled = PixelHDM.from_config(config.model, scan_layers=False)
  unrolled_params = {}
  for name, value in params.items():
    if name in ("patch_blocks", "pixel_blocks"):
      for i in range(jax.tree.leaves(value)[0].shape[0]):
        unrolled_params[f"{name}_{i}"] = jax.tree.map(lambda a, i=i: a[i], value)
    else:
      unrolled_params[name] = value
  expected = jax.eval_shape(unrolled.init, jax.random.key(0), *inputs)["params"]
  assert jax.tree.structure(flax.core.meta.unbox(expected)) == jax.tree.structure(unrolled_params)
  # Both compiled, as in training: op-by-op unrolled blocks round differently (JAX >= 0.11: ~3e-5 on CPU).
  scanned_out = jax.jit(model.apply)({"params": params}, *inputs)
  unrolled_out = jax.jit(unrolled.apply)({"params": unrolled_params}, *inputs)
  for a, b in zip(scanned_out, unrolled_out):  # equal up to float32 rounding of differently fused ops
    assert np.max(np.abs(a - b)) <= 1e-5 * np.max(np.abs(b))


def _loss(model, params, inputs, target):
  out = model.apply({"params": params}, *inputs)
  return (jnp.mean(jnp.square(out.velocity - target)) + 1e-4 * out.gamma_l2
          + jnp.mean(jnp.square(out.repa_features)))


_grad_fn = jax.jit(jax.grad(_loss, argnums=1), static_argnums=0)


@pytest.fixture(scope="module")
def reference_gradients(tiny):
  _, model, params, inputs = tiny
  return _grad_fn(model, params, inputs, jnp.ones_like(inputs[0]))


@pytest.mark.parametrize("policy", ["full", "dots", "dots_no_batch", "save_attention"])
def test_remat_policies_give_same_gradients(tiny, reference_gradients, policy):
  config, _, params, inputs = tiny
  config.model.remat_policy = policy
  remat_model = PixelHDM.from_config(config.model)
  config.model.remat_policy = "none"
  grads = _grad_fn(remat_model, params, inputs, jnp.ones_like(inputs[0]))
  for a, b in zip(jax.tree.leaves(reference_gradients), jax.tree.leaves(grads)):  # up to float32 rounding
    assert np.max(np.abs(a - b)) <= 1e-4 * np.max(np.abs(b)) + 1e-9


def test_every_parameter_gets_a_gradient(tiny):
  _, model, params, inputs = tiny
  target = jax.random.normal(jax.random.key(3), inputs[0].shape)

  def loss(p):  # v-MSE + gamma-L2, the network's own training terms (REPA aside)
    out = model.apply({"params": p}, *inputs)
    return jnp.mean(jnp.square(out.velocity - target)) + 1e-4 * out.gamma_l2

  grads = flax.traverse_util.flatten_dict(jax.grad(loss)(params))
  zero = [("/".join(path)) for path, g in grads.items() if not np.any(np.asarray(g) != 0)]
  assert not zero, f"parameters without gradient: {zero}"
  scanned = [g for path, g in grads.items() if path[0].endswith("_blocks")]
  for g in scanned:  # every layer of a stacked parameter gets its own gradient
    assert np.all(np.any(np.asarray(g).reshape(g.shape[0], -1) != 0, axis=1))


def test_gamma_l2_has_gradient_on_pixel_adaln(tiny):
  _, model, params, inputs = tiny
  grads = jax.grad(lambda p: model.apply({"params": p}, *inputs).gamma_l2)(params)
  assert np.any(np.asarray(grads["pixel_blocks"]["adaln"]["param_gen"]["kernel"]) != 0)


def test_bf16_compute_close_to_float32(tiny):
  config, model, params, inputs = tiny
  config.model.compute_dtype = "bfloat16"
  bf16 = PixelHDM.from_config(config.model)
  config.model.compute_dtype = "float32"
  reference = model.apply({"params": params}, *inputs).velocity
  low = bf16.apply({"params": params}, *inputs).velocity
  assert low.dtype == jnp.float32
  relative = float(jnp.linalg.norm(low - reference) / jnp.linalg.norm(reference))
  assert relative < 3e-2, relative  # measured 1.0e-2 (relative L2 of the velocity) on the tiny preset


def test_inits():
  config = base.get_config("default")
  config.model.update(patch_layers=2, pixel_layers=1, compute_dtype="float32")
  model = PixelHDM.from_config(config.model)
  inputs = _inputs(config, batch=1, height=32, width=32, text_len=4)
  params = flax.core.meta.unbox(jax.jit(model.init)(jax.random.key(0), *inputs)["params"])
  width = config.model.hidden_dim
  adaln = params["patch_blocks"]["adaln"]["proj"]
  np.testing.assert_array_equal(adaln["bias"][0].reshape(6, width),
                                np.repeat(np.array([1, 0, 1, 1, 0, 1.0])[:, None], width, axis=1))
  assert abs(float(np.std(adaln["kernel"])) - 0.02) < 5e-4
  pixel_dim = config.model.pixel_dim
  gen = params["pixel_blocks"]["adaln"]["param_gen"]
  np.testing.assert_array_equal(gen["bias"][0].reshape(6, pixel_dim),
                                np.repeat(np.array([0, 0, 1, 0, 0, 1.0])[:, None], pixel_dim, axis=1))
  for scope in (params["patch_blocks"]["attention"], params["pixel_blocks"]["compaction"]["attention"]):
    assert not np.any(scope["gate"]["kernel"]), "attention gate weights start at zero (gate = 0.5)"
  expand = params["pixel_blocks"]["compaction"]["expand"]["kernel"][0]
  limit = 0.1 * math.sqrt(6.0 / sum(expand.shape))
  assert np.max(np.abs(expand)) <= limit * (1 + 1e-6)
  assert abs(float(np.std(expand)) - limit / math.sqrt(3)) < 0.02 * limit
  q_kernel = params["patch_blocks"]["attention"]["q_proj"]["kernel"][0]
  assert abs(float(np.std(q_kernel)) - math.sqrt(2.0 / sum(q_kernel.shape))) < 1e-3  # xavier uniform
  assert np.all(params["output_norm"]["scale"] == 1)


def test_full_remat_needs_less_memory_than_none(tiny):
  """Remat is applied: with `full`, the backward pass keeps far fewer activations than with `none`."""
  config, _, params, inputs = tiny
  inputs = _inputs(config, batch=4, height=64, width=64, text_len=8)
  temp = {}
  for policy in ("none", "full"):
    config.model.remat_policy = policy
    model = PixelHDM.from_config(config.model)
    compiled = _grad_fn.lower(model, params, inputs, jnp.ones_like(inputs[0])).compile()
    temp[policy] = compiled.memory_analysis().temp_size_in_bytes
  config.model.remat_policy = "none"
  assert temp["full"] < 0.7 * temp["none"], temp
