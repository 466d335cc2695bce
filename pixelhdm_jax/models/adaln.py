"""Adaptive normalisation: TokenAdaLN (patch path, from t_emb) and factorised PixelwiseAdaLN (pixel path).

Pre-modulation (the original) returns six modulations in the order [gamma1, beta1, alpha1, gamma2, beta2, alpha2].
TokenAdaLN is used as `gamma * norm(x) + beta` with bias init [1, 0, 1, 1, 0, 1]; PixelwiseAdaLN as
`(1 + gamma) * norm(x) + beta` with bias init [0, 0, 1, 0, 0, 1] (docs/original.md §2.3, §2.7). PixelwiseAdaLN's
post-modulation form (PixelDiT's answer to pixel-path loss spikes, docs/deviations.md) returns four,
[gamma1, beta1, gamma2, beta2], that modulate each branch's output, `(1 + gamma) * f(norm(x)) + beta`, no gates.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from pixelhdm_jax.models.layers import ChunkedDense, Dtype, RMSNorm, dense


def chunk_bias(width: int, chunk_values: tuple[float, ...]):
  """Initializer of a bias made of `len(chunk_values)` constant chunks of size `width`."""
  def init(key, shape, dtype=jnp.float32):
    del key
    assert shape == (width * len(chunk_values),), shape
    return jnp.repeat(jnp.asarray(chunk_values, dtype), width)
  return init


class TokenAdaLN(nn.Module):
  """SiLU -> Dense(D -> 6D) of the time embedding; each modulation is (B, 1, D)."""
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, t_emb: jax.Array) -> tuple[jax.Array, ...]:
    width = t_emb.shape[-1]
    proj = dense(6 * width, ("embed", "adaln"), name="proj", dtype=self.dtype, use_bias=True,
                 kernel_init=nn.initializers.normal(0.02), bias_init=chunk_bias(width, (1, 0, 1, 1, 0, 1)))
    mods = proj(nn.silu(t_emb))[:, None, :]
    return tuple(jnp.split(mods, 6, axis=-1))


# The bias init of PixelwiseAdaLN's modulations per form: pre = the original's six (gates start at 1), post = four.
PIXEL_ADALN_BIAS = {"pre": (0, 0, 1, 0, 0, 1), "post": (0, 0, 0, 0)}


class PixelwiseAdaLN(nn.Module):
  """Per-pixel modulation from s_cond: Dense(D -> p^2 D_pix), then SiLU -> Dense(D_pix -> n D_pix) per pixel
  (n = 6 for `form` pre, 4 for post).

  Also owns the RMSNorm(D_pix) that both modulations of a pixel block normalise with.
  """
  pixels_per_patch: int
  pixel_dim: int
  form: str = "pre"
  dtype: Dtype = jnp.float32

  def setup(self):
    bias = PIXEL_ADALN_BIAS[self.form]
    self.cond_expand = dense(self.pixels_per_patch * self.pixel_dim, ("embed", "pixel_features"),
                             name="cond_expand", dtype=self.dtype)
    self.param_gen = ChunkedDense(len(bias) * self.pixel_dim, len(bias), ("pixel_dim", "pixel_adaln"),
                                  name="param_gen", dtype=self.dtype, bias_init=chunk_bias(self.pixel_dim, bias))
    self.norm = RMSNorm(dtype=self.dtype, name="norm")

  def __call__(self, s_cond: jax.Array) -> tuple[jax.Array, ...]:
    """s_cond (B, L, D) -> six (pre) or four (post) (B, L, p^2, D_pix) modulations."""
    batch, length, _ = s_cond.shape
    cond = self.cond_expand(s_cond).reshape(batch, length, self.pixels_per_patch, self.pixel_dim)
    return self.param_gen(nn.silu(cond))

  def modulate(self, x: jax.Array, gamma: jax.Array, beta: jax.Array) -> jax.Array:
    return (1 + gamma) * self.norm(x) + beta
