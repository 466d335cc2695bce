"""Every attention kernel agrees with `xla` (Pallas kernels in interpret mode on CPU), forward and gradients."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.base import get_config
from pixelhdm_jax.kernels import attention as registry
from pixelhdm_jax.kernels import pallas_gpu, splash

CPU_KERNELS = ("pallas_gpu", "splash")  # cudnn needs a GPU: see test_gpu_kernel_matches_xla_bf16
SAME_PADDED_ROWS = ("splash",)  # padded queries attend the valid keys, as in xla


def _inputs(batch, length, heads, kv_heads, head_dim, lengths, seed=0, dtype=jnp.float32):
  """Host-generated q, k, v, key mask (valid prefixes of `lengths`, or None) and an output cotangent.

  The cotangent is zero at padded query rows, as in the model, which never reads those rows.
  """
  rng = np.random.default_rng(seed)
  normal = lambda *shape: jnp.asarray(rng.standard_normal(shape), dtype)
  q, cotangent = normal(batch, length, heads, head_dim), normal(batch, length, heads, head_dim)
  k, v = normal(batch, length, kv_heads, head_dim), normal(batch, length, kv_heads, head_dim)
  mask = None if lengths is None else np.arange(length)[None, :] < np.asarray(lengths)[:, None]
  if mask is not None:
    cotangent = cotangent * mask[:, :, None, None]
  return q, k, v, mask, cotangent


def _forward_and_grads(kernel, q, k, v, mask, cotangent):
  def loss(q, k, v):
    return jnp.sum(registry.attention(q, k, v, mask, kernel=kernel) * cotangent)
  out = jax.jit(lambda q, k, v: registry.attention(q, k, v, mask, kernel=kernel))(q, k, v)
  return out, jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(q, k, v)


def _assert_matches_xla(kernel, q, k, v, mask, cotangent, atol=2e-5):
  """Outputs at valid query rows (all rows for kernels that attend the valid keys there too) and grads."""
  out, grads = _forward_and_grads(kernel, q, k, v, mask, cotangent)
  ref_out, ref_grads = _forward_and_grads("xla", q, k, v, mask, cotangent)
  if mask is not None and kernel not in SAME_PADDED_ROWS:
    out, ref_out = out * mask[:, :, None, None], ref_out * mask[:, :, None, None]
  np.testing.assert_allclose(out, ref_out, atol=atol, rtol=1e-5)
  for name, grad, ref in zip("qkv", grads, ref_grads):
    np.testing.assert_allclose(grad, ref, atol=atol, rtol=1e-5, err_msg=f"d{name}")


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("heads", [(4, 2), (16, 4), (4, 4)], ids=["gqa_4_2", "gqa_16_4", "mha"])
@pytest.mark.parametrize("lengths", [(6, 9, 14), None], ids=["text_padding", "no_mask"])
def test_xla_kernel_equals_jax_dot_product_attention(dtype, heads, lengths):
  """The heads-first `xla` kernel against JAX's own XLA attention: outputs at every row and gradients."""
  q, k, v, mask, cotangent = _inputs(3, 14, *heads, 16, lengths, dtype=dtype)
  def jax_attention(q, k, v):
    return jax.nn.dot_product_attention(q, k, v, mask=None if mask is None else mask[:, None, None, :],
                                        implementation="xla")
  def ours(q, k, v):
    return registry.xla_attention(q, k, v, None if mask is None else jnp.asarray(mask))
  tolerance = {"atol": 1e-5, "rtol": 1e-5} if dtype == jnp.float32 else {"atol": 2e-2, "rtol": 2e-2}
  results = []
  for fn in (ours, jax_attention):
    loss = lambda q, k, v, fn=fn: jnp.sum((fn(q, k, v) * cotangent).astype(jnp.float32))
    results.append((jax.jit(fn)(q, k, v), *jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(q, k, v)))
  for name, got, want in zip(("out", "dq", "dk", "dv"), *results):
    assert got.dtype == want.dtype == dtype, name
    np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(want, np.float32), err_msg=name,
                               **tolerance)


@pytest.mark.parametrize("kernel", CPU_KERNELS)
@pytest.mark.parametrize("lengths", [(6, 9, 14), None], ids=["text_padding", "no_mask"])
def test_kernel_matches_xla(kernel, lengths):
  """GQA 4:2, 6 image + 8 text tokens (odd length 14, not a block multiple), several valid lengths."""
  _assert_matches_xla(kernel, *_inputs(3, 14, 4, 2, 16, lengths))


@pytest.mark.parametrize("kernel", CPU_KERNELS)
def test_kernel_matches_xla_gqa_16_4_several_tiles(kernel):
  """The default preset's 16:4 grouping over three 128-token tiles (260 tokens padded to 384, 141 valid)."""
  _assert_matches_xla(kernel, *_inputs(1, 260, 16, 4, 8, (141,)))


@pytest.mark.parametrize("kernel", CPU_KERNELS)
def test_kernel_under_mesh_matches_xla(kernel):
  """Inside `shard_map` on a 2x2x2 mesh: batch over data x fsdp, query and KV heads over tensor."""
  config = get_config("tiny")
  mesh = jax.make_mesh((2, 2, 2), ("data", "fsdp", "tensor"), axis_types=(jax.sharding.AxisType.Auto,) * 3)
  inputs = _inputs(4, 14, 4, 2, 16, (6, 9, 14, 7))
  with jax.set_mesh(mesh), nn.logical_axis_rules(config.mesh.logical_axis_rules):
    lowered = jax.jit(lambda q, k, v, m: registry.attention(q, k, v, m, kernel=kernel)).lower(*inputs[:4])
    assert "manual_computation" in lowered.as_text()
    _assert_matches_xla(kernel, *inputs)


def test_kernel_under_mesh_repeats_kv_heads_that_do_not_split():
  """2 KV heads on 4 tensor shards: K/V are repeated per query head and the result is unchanged."""
  mesh = jax.make_mesh((1, 2, 4), ("data", "fsdp", "tensor"), axis_types=(jax.sharding.AxisType.Auto,) * 3)
  with jax.set_mesh(mesh), nn.logical_axis_rules(get_config("tiny").mesh.logical_axis_rules):
    _assert_matches_xla("pallas_gpu", *_inputs(2, 14, 4, 2, 16, (6, 14)))


@pytest.mark.parametrize("backend, length, head_dim, dtype, expected", [
    ("gpu", 1535, 64, jnp.bfloat16, "cudnn"),
    ("gpu", 1024, 64, jnp.float32, "xla"),  # cuDNN takes bf16/fp16 only
    ("gpu", 1024, 72, jnp.bfloat16, "cudnn"),
    ("gpu", 1024, 68, jnp.bfloat16, "xla"),  # head_dim not a multiple of 8
    ("gpu", 64, 64, jnp.bfloat16, "xla"),  # below MIN_FUSED_LENGTH
    ("tpu", 1535, 64, jnp.bfloat16, "splash"),
    ("tpu", 127, 64, jnp.bfloat16, "xla"),
    ("cpu", 4096, 64, jnp.float32, "xla"),
])
def test_auto_resolution(backend, length, head_dim, dtype, expected):
  assert registry.resolve("auto", backend=backend, length=length, head_dim=head_dim, dtype=dtype) == expected


def test_explicit_kernel_is_kept():
  assert registry.resolve("splash", backend="tpu", length=8, head_dim=64, dtype=jnp.float32) == "splash"


def test_auto_on_cpu_is_xla():
  q, k, v, mask, _ = _inputs(1, 130, 4, 2, 16, (100,))
  np.testing.assert_array_equal(registry.attention(q, k, v, mask, kernel="auto"),
                                registry.attention(q, k, v, mask, kernel="xla"))


def test_cudnn_on_cpu_fails_with_a_clear_message():
  q, k, v, mask, _ = _inputs(1, 14, 4, 2, 16, (6,))
  with pytest.raises(ValueError, match="'cudnn' runs on gpu only, not on 'cpu': set model.attention=auto or xla"):
    registry.attention(q, k, v, mask, kernel="cudnn")


def test_unknown_kernel_fails():
  q, k, v, mask, _ = _inputs(1, 14, 4, 2, 16, (6,))
  with pytest.raises(ValueError, match="'flash' is not available"):
    registry.attention(q, k, v, mask, kernel="flash")


@pytest.mark.parametrize("length, block", [(1, 16), (14, 16), (33, 64), (128, 128), (1535, 128)])
def test_pallas_gpu_block_size(length, block):
  assert pallas_gpu.block_size(length) == block


@pytest.mark.parametrize("padded, block", [(128, 128), (768, 256), (1536, 512), (4608, 512)])
def test_splash_block_size(padded, block):
  assert splash.block_size(padded) == block


def _assert_bf16_matches_float32_xla(kernel, q, k, v, mask, cotangent):
  """bf16 kernel against the float32 xla reference on the same (bf16-rounded) inputs: 2% of max |ref|."""
  out, grads = _forward_and_grads(kernel, q, k, v, mask, cotangent)
  as_f32 = lambda *xs: [x.astype(jnp.float32) for x in xs]
  ref_out, ref_grads = _forward_and_grads("xla", *as_f32(q, k, v), mask, *as_f32(cotangent))
  valid = 1.0 if mask is None else mask[:, :, None, None]
  for name, ours, ref in zip(("out", "dq", "dk", "dv"), (out * valid,) + grads, (ref_out * valid,) + ref_grads):
    error = float(jnp.max(jnp.abs(ours.astype(jnp.float32) - ref)) / jnp.max(jnp.abs(ref)))
    assert error < 2e-2, f"{kernel} {name}: max error {error:.2e} of max |reference|"


@pytest.mark.gpu
@pytest.mark.skipif(jax.default_backend() != "gpu", reason="needs a GPU")
@pytest.mark.parametrize("kernel", ["cudnn", "pallas_gpu"])
def test_gpu_kernel_matches_xla_bf16(kernel):
  """On a GPU in bf16 (cuDNN's dtype): the default preset's heads (16:4, 64) at 512x512 with 256 text slots."""
  _assert_bf16_matches_float32_xla(kernel, *_inputs(2, 1024 + 256, 16, 4, 64, (1024 + 37, 1280),
                                                    dtype=jnp.bfloat16))


@pytest.mark.tpu
@pytest.mark.skipif(jax.default_backend() != "tpu", reason="needs a TPU")
def test_splash_matches_xla_on_tpu():
  _assert_bf16_matches_float32_xla("splash", *_inputs(2, 1024 + 256, 16, 4, 64, (1024 + 37, 1280),
                                                      dtype=jnp.bfloat16))
