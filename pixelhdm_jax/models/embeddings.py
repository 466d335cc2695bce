"""Input and time embeddings, and the patchify / unpatchify reshapes of channel-last images."""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from pixelhdm_jax.models.layers import Dtype, dense


def patchify(x: jax.Array, patch: int) -> jax.Array:
  """(B, H, W, C) -> (B, L, p*p, C): raster order over patches, (row, col) order inside a patch."""
  batch, height, width, channels = x.shape
  h, w = height // patch, width // patch
  x = x.reshape(batch, h, patch, w, patch, channels).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(batch, h * w, patch * patch, channels)


def unpatchify(x: jax.Array, patch: int, height: int, width: int) -> jax.Array:
  """Inverse of `patchify`: (B, L, p*p, C) -> (B, H, W, C)."""
  batch, _, _, channels = x.shape
  h, w = height // patch, width // patch
  x = x.reshape(batch, h, w, patch, patch, channels).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(batch, height, width, channels)


class PatchEmbedding(nn.Module):
  """p x p patches (p^2 * 3 values) -> Dense(bottleneck) -> SiLU -> Dense(D), no biases, no positions."""
  hidden_dim: int
  patch_size: int
  bottleneck_dim: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array) -> jax.Array:
    patches = patchify(images, self.patch_size)
    patches = patches.reshape(patches.shape[0], patches.shape[1], -1)
    h = dense(self.bottleneck_dim, ("patch_pixels", "bottleneck"), name="proj_down", dtype=self.dtype)(patches)
    return dense(self.hidden_dim, ("bottleneck", "embed"), name="proj_up", dtype=self.dtype)(nn.silu(h))


class PixelEmbedding(nn.Module):
  """Per-pixel Dense(3 -> D_pix) with bias, regrouped per patch: (B, H, W, 3) -> (B, L, p^2, D_pix)."""
  pixel_dim: int
  patch_size: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array) -> jax.Array:
    x = dense(self.pixel_dim, ("rgb", "pixel_dim"), name="proj", dtype=self.dtype, use_bias=True)(images)
    return patchify(x, self.patch_size)


def timestep_sinusoid(t: jax.Array, dim: int) -> jax.Array:
  """[sin, cos] of 1000 t times frequencies exp(-ln(1e4) i / (dim/2)), i < dim/2; float32 (B, dim)."""
  half = dim // 2
  freqs = jnp.exp(-math.log(10000.0) * jnp.arange(half, dtype=jnp.float32) / half)
  args = t.astype(jnp.float32)[:, None] * freqs[None, :] * 1000.0
  return jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)


class TimeEmbedding(nn.Module):
  """Sinusoid(t) -> Dense(D) -> SiLU -> Dense(D), with biases; t in [0, 1] (t = 1 is the clean image)."""
  hidden_dim: int
  frequency_dim: int = 256
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, t: jax.Array) -> jax.Array:
    h = dense(self.hidden_dim, ("time_freq", "embed"), name="fc1", dtype=self.dtype, use_bias=True)(
        timestep_sinusoid(t, self.frequency_dim))
    return dense(self.hidden_dim, ("embed", "embed_out"), name="fc2", dtype=self.dtype, use_bias=True)(nn.silu(h))
