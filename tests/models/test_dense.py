"""The model's Dense layers against flax's `nn.Dense`: same parameters, outputs and gradients on every platform.

On CPU `Dense` merges the leading axes before its matmul and `ChunkedDense` computes each part of its output with
its own matmul (docs/performance.md); elsewhere both are the plain layer. Neither may change what it computes.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pixelhdm_jax.models.layers import ChunkedDense, Dense, dense
from pixelhdm_jax.perf import target

PLATFORMS = ("cpu", "gpu")  # the CPU formulation, and the one GPU and TPU programs keep (traced here on CPU)


def _normal(shape, seed=0):
  return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def _close(got, want, dtype):
  tolerance = 1e-5 if dtype == jnp.float32 else 2e-2
  np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(want, np.float32), rtol=tolerance,
                             atol=tolerance)


def _output_and_grads(apply, params, x, weights):
  """The output and the gradients of `sum(output * weights)` w.r.t. the parameters and the input."""
  def loss(p, x):
    outputs = apply(p, x)
    parts = outputs if isinstance(outputs, tuple) else (outputs,)
    return sum(jnp.sum(part.astype(jnp.float32) * w) for part, w in zip(parts, weights))
  return jax.jit(apply)(params, x), jax.jit(jax.grad(loss, argnums=(0, 1)))(params, x)


@pytest.mark.parametrize("platform", PLATFORMS)
@pytest.mark.parametrize("shape", [(7,), (5, 7), (2, 3, 7), (2, 3, 4, 7)], ids=["1d", "2d", "3d", "4d"])
@pytest.mark.parametrize("use_bias", [False, True])
def test_dense_equals_flax_dense(platform, shape, use_bias):
  x = _normal(shape)
  flax_dense = nn.Dense(6, use_bias=use_bias)
  params = flax_dense.init(jax.random.key(0), x)["params"]
  weights = [_normal(shape[:-1] + (6,), seed=1)]
  with target.compiling_for(platform):
    ours = Dense(6, use_bias=use_bias)
    assert jax.tree.structure(ours.init(jax.random.key(0), x)["params"]) == jax.tree.structure(params)
    out, grads = _output_and_grads(lambda p, x: ours.apply({"params": p}, x), params, x, weights)
  ref_out, ref_grads = _output_and_grads(lambda p, x: flax_dense.apply({"params": p}, x), params, x, weights)
  assert out.shape == ref_out.shape
  for got, want in zip(jax.tree.leaves((out, grads)), jax.tree.leaves((ref_out, ref_grads))):
    _close(got, want, jnp.float32)


@pytest.mark.parametrize("platform", PLATFORMS)
def test_dense_computes_in_bfloat16_with_float32_parameters(platform):
  """As the model builds it (`dense`): float32 kernel, bfloat16 output equal to flax's layer of the same setting."""
  x = _normal((2, 3, 8))
  flax_dense = nn.Dense(4, dtype=jnp.bfloat16, param_dtype=jnp.float32)
  params = flax_dense.init(jax.random.key(0), x)["params"]
  with target.compiling_for(platform):
    ours = dense(4, ("embed", "mlp"), name="proj", dtype=jnp.bfloat16)
    out = jax.jit(lambda p, x: ours.apply({"params": p}, x))(params, x)
  assert out.dtype == jnp.bfloat16 and params["kernel"].dtype == jnp.float32
  np.testing.assert_array_equal(np.asarray(out, np.float32),
                                np.asarray(flax_dense.apply({"params": params}, x), np.float32))


@pytest.mark.parametrize("platform", PLATFORMS)
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_chunked_dense_equals_flax_dense_then_split(platform, dtype):
  """Six 4-wide chunks of an 8 -> 24 layer on (batch, patches, pixels, 8) inputs, as the pixel AdaLN uses it."""
  x = _normal((2, 3, 5, 8))
  bias_init = lambda key, shape, dtype=jnp.float32: jax.random.normal(key, shape, dtype)
  with target.compiling_for(platform):
    ours = ChunkedDense(24, 6, ("pixel_dim", "pixel_adaln"), dtype=dtype, bias_init=bias_init)
    params = nn.unbox(ours.init(jax.random.key(0), x)["params"])
    weights = [_normal((2, 3, 5, 4), seed=i) for i in range(6)]
    out, grads = _output_and_grads(lambda p, x: ours.apply({"params": p}, x), params, x, weights)
  assert jax.tree.map(jnp.shape, params) == {"kernel": (8, 24), "bias": (24,)}
  flax_dense = nn.Dense(24, dtype=dtype)
  split = lambda p, x: tuple(jnp.split(flax_dense.apply({"params": p}, x), 6, axis=-1))
  ref_out, ref_grads = _output_and_grads(split, params, x, weights)
  assert [part.dtype for part in out] == [jnp.dtype(dtype)] * 6
  for got, want in zip(jax.tree.leaves((out, grads)), jax.tree.leaves((ref_out, ref_grads))):
    _close(got, want, dtype)


def test_chunked_dense_starts_as_the_dense_layer_it_replaced():
  """Same initial kernel, bias and partitioning as `dense(..., use_bias=True)` under the same name and key, so
  runs and checkpoints made before it are unchanged."""
  x = _normal((1, 2, 3, 4))
  bias_init = lambda key, shape, dtype=jnp.float32: jnp.arange(shape[0], dtype=dtype)
  chunked = ChunkedDense(12, 3, ("pixel_dim", "pixel_adaln"), bias_init=bias_init).init(jax.random.key(3), x)
  plain = dense(12, ("pixel_dim", "pixel_adaln"), name="param_gen", dtype=jnp.float32, use_bias=True,
                bias_init=bias_init).init(jax.random.key(3), x)
  assert jax.tree.map(lambda box: box.names, chunked["params"], is_leaf=lambda v: isinstance(v, nn.Partitioned)) \
      == jax.tree.map(lambda box: box.names, plain["params"], is_leaf=lambda v: isinstance(v, nn.Partitioned))
  for got, want in zip(jax.tree.leaves(nn.unbox(chunked)), jax.tree.leaves(nn.unbox(plain))):
    np.testing.assert_array_equal(got, want)


def test_chunked_dense_refuses_features_that_do_not_split():
  with pytest.raises(ValueError, match="10 features do not split into 3 equal chunks"):
    ChunkedDense(10, 3, ("pixel_dim", "pixel_adaln")).init(jax.random.key(0), _normal((2, 4)))
