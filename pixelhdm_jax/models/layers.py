"""Basic layers with logical axis names: dense projections, RMSNorm, SwiGLU."""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from pixelhdm_jax.perf import target

Dtype = Any
Initializer = Callable[..., jax.Array]

xavier_uniform = nn.initializers.xavier_uniform()

# What `*.compute_dtype` may be: `auto` is bfloat16 on GPU/TPU and float32 on CPU.
COMPUTE_DTYPES = ("auto", "bfloat16", "float32")
# Logical axes of a (batch, sequence, width) activation at block boundaries.
ACTIVATION_AXES = ("activation_batch", "activation_length", "activation_embed")


class Dense(nn.Dense):
  """`nn.Dense`; on CPU it merges the leading axes first, so that XLA:CPU computes the weight gradient (a contraction
  over batch and sequence) as one plain matmul instead of transposing the activations' gradient (docs/performance.md,
  the leaner step). GPU and TPU programs stay as measured there."""

  def __call__(self, inputs: jax.Array) -> jax.Array:
    if target.backend() != "cpu":
      return super().__call__(inputs)
    outputs = super().__call__(inputs.reshape(-1, inputs.shape[-1]))
    return outputs.reshape(*inputs.shape[:-1], self.features)


def dense(features: int, axes: tuple[str | None, str | None], *, name: str, dtype: Dtype,
          use_bias: bool = False, kernel_init: Initializer = xavier_uniform,
          bias_init: Initializer = nn.initializers.zeros) -> Dense:
  """A float32-parameter Dense layer computing in `dtype`, its kernel annotated `(in_axis, out_axis)`."""
  return Dense(features, use_bias=use_bias, dtype=dtype, param_dtype=jnp.float32,
               kernel_init=nn.with_logical_partitioning(kernel_init, axes),
               bias_init=nn.with_logical_partitioning(bias_init, (axes[1],)), name=name)


class ChunkedDense(nn.Module):
  """A biased xavier-initialised Dense layer (float32 `kernel` and `bias`, as `dense`) whose output comes as `chunks`
  equal parts. On CPU each part is its own matmul: slicing one wide per-pixel output copied every part
  (docs/performance.md, the leaner step); elsewhere one matmul and a split, as measured there."""
  features: int
  chunks: int
  axes: tuple[str | None, str | None]
  dtype: Dtype = jnp.float32
  bias_init: Initializer = nn.initializers.zeros

  @nn.compact
  def __call__(self, inputs: jax.Array) -> tuple[jax.Array, ...]:
    if self.features % self.chunks:
      raise ValueError(f"ChunkedDense: {self.features} features do not split into {self.chunks} equal chunks")
    kernel = self.param("kernel", nn.with_logical_partitioning(xavier_uniform, self.axes),
                        (inputs.shape[-1], self.features), jnp.float32)
    bias = self.param("bias", nn.with_logical_partitioning(self.bias_init, (self.axes[1],)), (self.features,),
                      jnp.float32)
    inputs, kernel, bias = nn.dtypes.promote_dtype(inputs, kernel, bias, dtype=self.dtype)
    if target.backend() != "cpu":
      return tuple(jnp.split(inputs @ kernel + bias, self.chunks, axis=-1))
    flat = inputs.reshape(-1, inputs.shape[-1])
    width = self.features // self.chunks
    parts = []
    for start in range(0, self.features, width):
      part = flat @ kernel[:, start:start + width] + bias[start:start + width]
      parts.append(part.reshape(*inputs.shape[:-1], width))
    return tuple(parts)


class RMSNorm(nn.Module):
  """RMSNorm over the last axis, computed in float32 (eps 1e-6, learned scale, no bias)."""
  eps: float = 1e-6
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, ("norm",)),
                       (x.shape[-1],), jnp.float32)
    xf = x.astype(jnp.float32)
    y = xf * jax.lax.rsqrt(jnp.mean(jnp.square(xf), axis=-1, keepdims=True) + self.eps)
    return (y * scale).astype(self.dtype)


class SwiGLU(nn.Module):
  """`down(silu(gate(x)) * up(x))` without biases; `axes` names the (input, hidden) dimensions."""
  hidden_dim: int
  axes: tuple[str, str] = ("embed", "mlp")
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    in_axis, hidden_axis = self.axes
    gate = dense(self.hidden_dim, (in_axis, hidden_axis), name="gate_proj", dtype=self.dtype)(x)
    up = dense(self.hidden_dim, (in_axis, hidden_axis), name="up_proj", dtype=self.dtype)(x)
    return dense(x.shape[-1], (hidden_axis, in_axis), name="down_proj", dtype=self.dtype)(nn.silu(gate) * up)


def abstract_key() -> jax.ShapeDtypeStruct:
  """A PRNG key's shape and dtype for `jax.eval_shape` of an init: making a real key runs on a device, which a
  compile-only (ahead-of-time TPU) mesh does not have."""
  return jax.eval_shape(lambda: jax.random.key(0))


def compute_dtype(name: str) -> jnp.dtype:
  """Resolves a config dtype name; `auto` is bfloat16 on GPU/TPU and float32 on CPU (`target.backend()`)."""
  if name == "auto":
    return jnp.dtype(jnp.bfloat16 if target.backend() in ("gpu", "tpu") else jnp.float32)
  return jnp.dtype(name)
