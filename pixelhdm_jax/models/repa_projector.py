"""The trainable iREPA projector: PixelHDM's REPA features onto the teacher's width (`losses.repa_loss`)."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from pixelhdm_jax.models.layers import Dtype


class RepaProjector(nn.Module):
  """iREPA's conv projector: Conv 3x3 (padding 1, bias) from the model width to the teacher width.

  Applied on the (grid_h, grid_w) patch grid of the REPA features; the grid is passed explicitly because
  buckets are not square. Kernel: kaiming-normal (fan_out, ReLU gain), bias zero (as the original).
  """
  teacher_dim: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, features: jax.Array, grid: tuple[int, int]) -> jax.Array:
    """features (B, L, D) with L = grid_h * grid_w in raster order -> (B, L, teacher_dim) float32."""
    batch, length, width = features.shape
    grid_h, grid_w = grid
    if grid_h * grid_w != length:
      raise ValueError(f"REPA grid {grid_h}x{grid_w} does not hold the {length} image tokens")
    kernel_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
    conv = nn.Conv(self.teacher_dim, (3, 3), padding=1, use_bias=True, dtype=self.dtype, param_dtype=jnp.float32,
                   kernel_init=nn.with_logical_partitioning(
                       kernel_init, ("conv_height", "conv_width", "embed", "teacher_embed")),
                   bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("teacher_embed",)),
                   name="conv")
    projected = conv(features.reshape(batch, grid_h, grid_w, width).astype(self.dtype))
    return projected.reshape(batch, length, self.teacher_dim).astype(jnp.float32)
