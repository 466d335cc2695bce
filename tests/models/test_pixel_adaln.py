"""`model.pixel_adaln`: the original's pre-modulated pixel blocks and PixelDiT's post-modulation."""

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import base
from pixelhdm_jax.models.blocks import PixelBlock
from pixelhdm_jax.models.pixelhdm import PixelHDM
from pixelhdm_jax.models.rope import grid_positions, rope_tables
from pixelhdm_jax.weights.interop import ConversionError, write_original_safetensors

PIXELS, PIXEL_DIM, HIDDEN = 16, 4, 64


def _block(form):
  """(block, params, x, s_cond, rope) of one pixel block on a 2x2 patch grid with random weights."""
  block = PixelBlock(HIDDEN, num_heads=4, num_kv_heads=2, mlp_ratio=3.0, residual_scale=0.5, pixel_adaln=form)
  keys = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(keys[0], (2, 4, PIXELS, PIXEL_DIM))
  s_cond = jax.random.normal(keys[1], (2, 4, HIDDEN))
  rope = rope_tables(jnp.broadcast_to(grid_positions(2, 2), (2, 4, 3)), (4, 6, 6), 10000.0)
  params = flax.core.meta.unbox(block.init(keys[2], x, s_cond, rope)["params"])
  params = jax.tree.map(lambda p: p + 0.1 * jax.random.normal(keys[2], p.shape), params)  # no init symmetry
  return block, params, x, s_cond, rope


def _with_bias_chunk(params, chunk, value):
  """`params` with chunk `chunk` (of PIXEL_DIM values) of the modulation bias set to `value`."""
  bias = params["adaln"]["param_gen"]["bias"]
  return flax.core.copy(params, {"adaln": {**params["adaln"], "param_gen": {
      **params["adaln"]["param_gen"], "bias": bias.at[chunk * PIXEL_DIM:(chunk + 1) * PIXEL_DIM].set(value)}}})


def test_post_modulation_adds_the_last_shift_to_the_output():
  """Post: the MLP branch's shift (beta2, chunk 3) lands on the output unchanged, times the residual scale.
  Pre: the same chunk (beta1's place among six) goes through the network first."""
  post, params, x, s_cond, rope = _block("post")
  out = jax.jit(lambda p: post.apply({"params": p}, x, s_cond, rope)[0])
  shifted = out(_with_bias_chunk(params, 3, params["adaln"]["param_gen"]["bias"][3 * PIXEL_DIM:4 * PIXEL_DIM] + 1))
  np.testing.assert_allclose(shifted - out(params), 0.5, rtol=0, atol=1e-5)
  pre, params, *_ = _block("pre")
  out = jax.jit(lambda p: pre.apply({"params": p}, x, s_cond, rope)[0])
  delta = out(_with_bias_chunk(params, 4, params["adaln"]["param_gen"]["bias"][4 * PIXEL_DIM:5 * PIXEL_DIM] + 1)
              ) - out(params)
  assert float(jnp.std(delta)) > 1e-2  # pre: the shift is an input of the MLP, not of the sum


def test_post_modulation_has_no_gates_and_starts_as_plain_residuals():
  """Four modulations (gamma1, beta1, gamma2, beta2), biases at zero: at init each branch adds its whole output."""
  pre, post = (_block(form)[1] for form in ("pre", "post"))
  assert pre["adaln"]["param_gen"]["kernel"].shape == (PIXEL_DIM, 6 * PIXEL_DIM)
  assert post["adaln"]["param_gen"]["kernel"].shape == (PIXEL_DIM, 4 * PIXEL_DIM)
  block = PixelBlock(HIDDEN, 4, 2, 3.0, 0.5, pixel_adaln="post")
  _, _, x, s_cond, rope = _block("post")
  init = block.init(jax.random.key(1), x, s_cond, rope)["params"]
  assert not np.any(flax.core.meta.unbox(init)["adaln"]["param_gen"]["bias"])


@pytest.mark.slow  # ~20 s: the option's whole network; the default (pre) is covered in test_model.py
def test_post_modulation_trains_every_parameter_and_scan_equals_unrolled():
  """As tests/models/test_model.py checks the pre-modulated (default) network."""
  config = base.get_config("tiny")
  config.model.update(compute_dtype="float32", pixel_adaln="post")
  batch = (jax.random.normal(jax.random.key(0), (2, 32, 32, 3)), jnp.array([0.3, 0.8]),
           jax.random.normal(jax.random.key(1), (2, 4, 64)), jnp.ones((2, 4), bool), jnp.zeros((2, 64)))
  scanned, unrolled = (PixelHDM.from_config(config.model, scan_layers=s) for s in (True, False))
  params = flax.core.meta.unbox(jax.jit(scanned.init)(jax.random.key(2), *batch)["params"])
  grads = flax.traverse_util.flatten_dict(
      jax.jit(jax.grad(lambda p: jnp.mean(jnp.square(scanned.apply({"params": p}, *batch).velocity))))(params))
  assert not [path for path, g in grads.items() if not np.any(np.asarray(g))]
  unstacked = {name: ({f"{name}_{i}": jax.tree.map(lambda a, i=i: a[i], value) for i in range(2)}
                      if name.endswith("_blocks") else value) for name, value in params.items()}
  flat = {}
  for name, value in unstacked.items():
    flat.update(value if name.endswith("_blocks") else {name: value})
  velocity = lambda model, p: jax.jit(lambda p: model.apply({"params": p}, *batch).velocity)(p)
  np.testing.assert_allclose(velocity(unrolled, flat), velocity(scanned, params), atol=1e-5)


def test_the_original_format_refuses_post_modulation(tmp_path):
  config = base.get_config("tiny")
  config.model.pixel_adaln = "post"
  with pytest.raises(ConversionError, match=r"model.pixel_adaln='post' has no counterpart in the original .*"
                                            r"--format=orbax"):
    write_original_safetensors(tmp_path, config, params={}, step=0)
  assert not list(tmp_path.iterdir())
