"""The model's Dense layers against flax's `nn.Dense`: same parameters, outputs and gradients.

`Dense` merges the leading axes before its matmul and `ChunkedDense` computes each part of its output with its
own matmul (both for XLA:CPU's speed, docs/performance.md); neither may change what the layer computes.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pixelhdm_jax.models.layers import ChunkedDense, Dense


def _normal(shape, seed=0):
  return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def _values_and_grads(module, params, x, reduce):
  """Output and the gradients of a random projection of it w.r.t. the parameters and the input."""
  def loss(p, x):
    return reduce(module.apply({"params": p}, x))
  out = jax.jit(module.apply)({"params": params}, x)
  return out, jax.jit(jax.grad(loss, argnums=(0, 1)))(params, x)


@pytest.mark.parametrize("shape", [(5, 7), (2, 3, 7), (2, 3, 4, 7)], ids=["2d", "3d", "4d"])
@pytest.mark.parametrize("use_bias", [False, True])
def test_dense_equals_flax_dense(shape, use_bias):
  ours, flax_dense = Dense(6, use_bias=use_bias), nn.Dense(6, use_bias=use_bias)
  x = _normal(shape)
  params = flax_dense.init(jax.random.key(0), x)["params"]
  assert jax.tree.structure(ours.init(jax.random.key(0), x)["params"]) == jax.tree.structure(params)
  weights = _normal(shape[:-1] + (6,), seed=1)
  reduce = lambda y: jnp.sum(y * weights)
  out, grads = _values_and_grads(ours, params, x, reduce)
  ref_out, ref_grads = _values_and_grads(flax_dense, params, x, reduce)
  np.testing.assert_allclose(out, ref_out, rtol=1e-6, atol=1e-6)
  for got, want in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads)):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_chunked_dense_equals_flax_dense_then_split(dtype):
  """Six chunks of a 4 -> 24 layer on (batch, patches, pixels, 4) inputs, as the pixel AdaLN uses it."""
  x = _normal((2, 3, 5, 4))
  bias_init = lambda key, shape, dtype=jnp.float32: jax.random.normal(key, shape, dtype)
  ours = ChunkedDense(24, 6, ("pixel_dim", "pixel_adaln"), dtype=dtype, bias_init=bias_init)
  params = nn.unbox(ours.init(jax.random.key(0), x)["params"])
  assert jax.tree.map(jnp.shape, params) == {"kernel": (4, 24), "bias": (24,)}
  flax_dense = nn.Dense(24, dtype=dtype)
  split = lambda p, x: tuple(jnp.split(flax_dense.apply({"params": p}, x), 6, axis=-1))
  weights = [_normal((2, 3, 5, 4), seed=i) for i in range(6)]
  reduce = lambda parts: sum(jnp.sum(part.astype(jnp.float32) * w) for part, w in zip(parts, weights))
  out = jax.jit(lambda p, x: ours.apply({"params": p}, x))(params, x)
  ref_out = jax.jit(split)(params, x)
  tolerance = 1e-6 if dtype == jnp.float32 else 1e-2
  assert [part.dtype for part in out] == [jnp.dtype(dtype)] * 6
  for got, want in zip(out, ref_out):
    np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(want, np.float32), rtol=tolerance,
                               atol=tolerance)
  grads = jax.jit(jax.grad(lambda p, x: reduce(ours.apply({"params": p}, x)), argnums=(0, 1)))(params, x)
  ref_grads = jax.jit(jax.grad(lambda p, x: reduce(split(p, x)), argnums=(0, 1)))(params, x)
  for got, want in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads)):
    np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(want, np.float32),
                               rtol=tolerance, atol=tolerance * 10)
