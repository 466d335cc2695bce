"""The training losses, all in float32: V-MSE, DCT frequency loss, iREPA and the gamma-L2 penalty.

Total = V-MSE + freq_lambda * freq + repa_lambda * iREPA + gamma_l2_lambda * gamma_l2
(docs/original.md §4, §5; DeCo's JPEG-weighted DCT loss; iREPA's spatially normalised target). Images and
velocities are
channel-last (B, H, W, 3).

The iREPA loss takes the output of `models.repa_projector.RepaProjector`, a trained part of the train state
(the original never optimised nor saved it). REPA is off (its term is 0 and no teacher is needed) when
`repa_lambda` is 0 or from optimizer step `repa_early_stop` on (`repa_active`).

Deviation: the frequency loss uses the true orthonormal DCT-II. The original's block DCT computes D X D
instead of D X D^T (verified on its micro fixture: 0.18% different loss); `freq_transform="original"`
reproduces it for parity checks.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from pixelhdm_jax import flow

HIGHEST = jax.lax.Precision.HIGHEST
DCT_BLOCK = 8

# BT.601 full-range RGB -> YCbCr without offsets; rows are (Y, Cb, Cr).
RGB_TO_YCBCR = np.array([[0.299, 0.587, 0.114],
                         [-0.168736, -0.331264, 0.5],
                         [0.5, -0.418688, -0.081312]], np.float64)

# The standard JPEG (ITU T.81 Annex K) base quantisation tables, row = vertical frequency.
JPEG_LUMINANCE = np.array([
    [16, 11, 10, 16, 24, 40, 51, 61],
    [12, 12, 14, 19, 26, 58, 60, 55],
    [14, 13, 16, 24, 40, 57, 69, 56],
    [14, 17, 22, 29, 51, 87, 80, 62],
    [18, 22, 37, 56, 68, 109, 103, 77],
    [24, 35, 55, 64, 81, 104, 113, 92],
    [49, 64, 78, 87, 103, 121, 120, 101],
    [72, 92, 95, 98, 112, 100, 103, 99]], np.float64)
JPEG_CHROMINANCE = np.full((8, 8), 99.0)
JPEG_CHROMINANCE[:4, :4] = [[17, 18, 24, 47], [18, 21, 26, 66], [24, 26, 56, 99], [47, 66, 99, 99]]
# `loss.freq_transform`: the einsum of D (DCT-II rows), an 8x8 block and D again. `dct2` is D X D^T; `original`
# is the original's D X D (its horizontal pass is an inverse DCT), kept only for parity with the original.
BLOCK_TRANSFORMS = {"dct2": "ki,bhiwjc,lj->bhwckl", "original": "ki,bhiwjc,jl->bhwckl"}


class LossTerms(NamedTuple):
  """The total and each weighted term (scalars, float32); `repa` is 0 while REPA is off."""
  total: jax.Array
  velocity: jax.Array
  frequency: jax.Array
  repa: jax.Array
  gamma_l2: jax.Array


def velocity_mse(v_pred: jax.Array, v_target: jax.Array) -> jax.Array:
  """mean((v_pred - v_target)^2) over every element, in float32."""
  return jnp.mean(jnp.square(v_pred.astype(jnp.float32) - v_target.astype(jnp.float32)))


def dct_matrix(size: int = DCT_BLOCK) -> np.ndarray:
  """Orthonormal DCT-II matrix D[k, i] = a_k cos(pi k (2 i + 1) / (2 size)), so a block transforms as D X D^T."""
  k = np.arange(size)[:, None]
  i = np.arange(size)[None, :]
  scale = np.where(k == 0, np.sqrt(1.0 / size), np.sqrt(2.0 / size))
  return scale * np.cos(np.pi * k * (2 * i + 1) / (2 * size))


def jpeg_table(base: np.ndarray, quality: int) -> np.ndarray:
  """The libjpeg quality scaling: S = 5000/q (q < 50) else 200 - 2q; Q = clip(floor((base S + 50)/100), 1, 255)."""
  if not 1 <= quality <= 100:
    raise ValueError(f"JPEG quality must be in [1, 100], got {quality}")
  scale = 5000.0 / quality if quality < 50 else 200.0 - 2.0 * quality
  return np.clip(np.floor((base * scale + 50.0) / 100.0), 1, 255)


def frequency_weights(quality: int, use_ycbcr: bool = True) -> np.ndarray:
  """Per-channel DCT weights (3, 8, 8): w = (1/Q) / mean(1/Q), luminance for Y, chrominance for Cb and Cr.

  Without YCbCr every RGB channel uses the luminance weights (as the original).
  """
  def normalised(table):
    inverse = 1.0 / table
    return inverse / inverse.mean()
  luma = normalised(jpeg_table(JPEG_LUMINANCE, quality))
  chroma = normalised(jpeg_table(JPEG_CHROMINANCE, quality)) if use_ycbcr else luma
  return np.stack([luma, chroma, chroma]).astype(np.float32)


def _reflect_pad_to_blocks(x: jax.Array) -> jax.Array:
  """Reflect-pads H and W (bottom, right) up to multiples of the DCT block."""
  pad_h, pad_w = -x.shape[1] % DCT_BLOCK, -x.shape[2] % DCT_BLOCK
  if pad_h or pad_w:
    x = jnp.pad(x, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="reflect")
  return x


def block_dct(x: jax.Array, transform: str = "dct2") -> jax.Array:
  """(B, H, W, C) -> (B, H/8, W/8, C, 8, 8): a 2-D transform (`BLOCK_TRANSFORMS`) of every 8x8 block
  (reflect-padded)."""
  if transform not in BLOCK_TRANSFORMS:
    raise ValueError(f"unknown block transform {transform!r}: choose one of {tuple(BLOCK_TRANSFORMS)}")
  x = _reflect_pad_to_blocks(x.astype(jnp.float32))
  batch, height, width, channels = x.shape
  blocks = x.reshape(batch, height // DCT_BLOCK, DCT_BLOCK, width // DCT_BLOCK, DCT_BLOCK, channels)
  d = jnp.asarray(dct_matrix(), jnp.float32)
  return jnp.einsum(BLOCK_TRANSFORMS[transform], d, blocks, d, precision=HIGHEST)


def frequency_loss(v_pred: jax.Array, v_target: jax.Array, *, quality: int = 90, use_ycbcr: bool = True,
                   transform: str = "dct2") -> jax.Array:
  """DeCo's JPEG-weighted DCT loss mean(w * (DCT(v_pred) - DCT(v_target))^2) over B x C x H x W, float32.

  The transform is linear, so it is taken once of the difference (equal to differencing two transforms).
  """
  diff = v_pred.astype(jnp.float32) - v_target.astype(jnp.float32)
  if use_ycbcr:
    diff = jnp.einsum("bhwc,dc->bhwd", diff, jnp.asarray(RGB_TO_YCBCR, jnp.float32), precision=HIGHEST)
  weights = jnp.asarray(frequency_weights(quality, use_ycbcr))
  return jnp.mean(weights * jnp.square(block_dct(diff, transform)))


def spatial_zscore(features: jax.Array, eps: float = 1e-6) -> jax.Array:
  """iREPA's spatial normalisation over tokens, per sample and channel: (y - mean_L) / (std_L + eps), ddof=1."""
  y = features.astype(jnp.float32)
  return (y - jnp.mean(y, axis=1, keepdims=True)) / (jnp.std(y, axis=1, ddof=1, keepdims=True) + eps)


def _normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
  """x / max(||x||, eps) over the last axis (torch F.normalize), written so the gradient is finite at x = 0."""
  return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(jnp.square(x), axis=-1, keepdims=True), eps * eps))


def repa_loss(projected: jax.Array, teacher: jax.Array) -> jax.Array:
  """mean over (B, L) of 1 - cos(projected, z-scored teacher); both (B, L, D_teacher), the teacher frozen."""
  if projected.shape != teacher.shape:
    raise ValueError(f"projected REPA features {projected.shape} and teacher features {teacher.shape} differ: "
                     "the teacher must see the same 16-px grid as the patch tokens")
  target = _normalize(spatial_zscore(jax.lax.stop_gradient(teacher)))
  cosine = jnp.sum(_normalize(projected.astype(jnp.float32)) * target, axis=-1)
  return jnp.mean(1.0 - cosine)


def repa_active(loss: ml_collections.ConfigDict, step: int) -> bool:
  """Whether the optimizer step `step` (host int) runs REPA: repa_lambda > 0 and step < repa_early_stop."""
  return loss.repa_lambda > 0 and step < loss.repa_early_stop


def training_loss(loss: ml_collections.ConfigDict, *, v_pred: jax.Array, x_clean: jax.Array, noise: jax.Array,
                  gamma_l2: jax.Array, repa_projected: jax.Array | None = None,
                  repa_teacher: jax.Array | None = None) -> LossTerms:
  """Weighted losses from `config.loss` and the total (float32).

  Args:
    loss: `config.loss`.
    v_pred: predicted velocity (B, H, W, 3); the target is x_clean - noise.
    x_clean, noise: the clean image and the noise of z_t (B, H, W, 3).
    gamma_l2: the network's gamma-L2 sum (scalar).
    repa_projected: `RepaProjector` output (B, L, D_teacher), or None while REPA is off.
    repa_teacher: the teacher's patch tokens of x_clean (B, L, D_teacher), not yet normalised; None when off.
  """
  v_target = flow.velocity_target(x_clean.astype(jnp.float32), noise.astype(jnp.float32))
  velocity = velocity_mse(v_pred, v_target)
  zero = jnp.zeros((), jnp.float32)
  frequency = zero
  if loss.freq_lambda > 0:
    frequency = loss.freq_lambda * frequency_loss(v_pred, v_target, quality=loss.freq_quality,
                                                  use_ycbcr=loss.freq_ycbcr, transform=loss.freq_transform)
  repa = zero
  if (repa_projected is None) != (repa_teacher is None):
    raise ValueError("pass both repa_projected and repa_teacher (REPA on) or neither (REPA off)")
  if repa_projected is not None and loss.repa_lambda > 0:
    repa = loss.repa_lambda * repa_loss(repa_projected, repa_teacher)
  gamma = loss.gamma_l2_lambda * jnp.asarray(gamma_l2, jnp.float32)
  return LossTerms(velocity + frequency + repa + gamma, velocity, frequency, repa, gamma)
