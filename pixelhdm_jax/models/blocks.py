"""The two kinds of transformer block and the token compaction inside the pixel block.

PatchBlock: sandwich-norm DiT block modulated by TokenAdaLN(t_emb), residual scale 1/sqrt(2N).
PixelBlock: PixelwiseAdaLN(s_cond) modulation, token compaction (compress p^2 pixels of a patch into one
token, attend over patches, expand back, no inner residual) and a per-pixel SwiGLU, residual scale 1/sqrt(M).
Shapes and orders follow the original (docs/original.md §2.3-2.7).
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from pixelhdm_jax.models.adaln import PixelwiseAdaLN, TokenAdaLN
from pixelhdm_jax.models.attention import GatedAttention
from pixelhdm_jax.models.layers import Dtype, RMSNorm, SwiGLU, dense

Rope = tuple[jax.Array, jax.Array]


class PatchBlock(nn.Module):
  """x (B, S, D) joint image+text sequence -> same shape."""
  num_heads: int
  num_kv_heads: int
  mlp_ratio: float
  residual_scale: float
  kernel: str = "xla"
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, t_emb: jax.Array, rope: Rope, key_mask: jax.Array | None) -> jax.Array:
    width = x.shape[-1]
    gamma1, beta1, alpha1, gamma2, beta2, alpha2 = TokenAdaLN(dtype=self.dtype, name="adaln")(t_emb)
    h = RMSNorm(dtype=self.dtype, name="pre_attn_norm")(x) * gamma1 + beta1
    h = GatedAttention(self.num_heads, self.num_kv_heads, width // self.num_heads, kernel=self.kernel,
                       dtype=self.dtype, name="attention")(h, rope, key_mask)
    h = RMSNorm(dtype=self.dtype, name="post_attn_norm")(h)
    x = x + (alpha1 * self.residual_scale) * h
    h = RMSNorm(dtype=self.dtype, name="pre_mlp_norm")(x) * gamma2 + beta2
    h = SwiGLU(int(width * self.mlp_ratio), dtype=self.dtype, name="mlp")(h)
    h = RMSNorm(dtype=self.dtype, name="post_mlp_norm")(h)
    return x + (alpha2 * self.residual_scale) * h


class TokenCompaction(nn.Module):
  """(B, L, p^2, D_pix) -> compress to D -> RMSNorm -> gated attention -> RMSNorm -> expand; no residual.

  The expand kernel is xavier-uniform with gain 0.1 (the original's configured gain, which its global init
  overwrote; see docs/deviations.md).
  """
  hidden_dim: int
  num_heads: int
  num_kv_heads: int
  kernel: str = "xla"
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, rope: Rope) -> jax.Array:
    batch, length, pixels, pixel_dim = x.shape
    c = dense(self.hidden_dim, ("pixel_features", "embed"), name="compress", dtype=self.dtype)(
        x.reshape(batch, length, pixels * pixel_dim))
    c = RMSNorm(dtype=self.dtype, name="norm")(c)
    c = GatedAttention(self.num_heads, self.num_kv_heads, self.hidden_dim // self.num_heads, kernel=self.kernel,
                       dtype=self.dtype, name="attention")(c, rope, None)
    c = RMSNorm(dtype=self.dtype, name="post_norm")(c)
    expand_init = nn.initializers.variance_scaling(0.1 ** 2, "fan_avg", "uniform")
    e = dense(pixels * pixel_dim, ("embed", "pixel_features"), name="expand", dtype=self.dtype,
              kernel_init=expand_init)(c)
    return e.reshape(batch, length, pixels, pixel_dim)


class PixelBlock(nn.Module):
  """x (B, L, p^2, D_pix) conditioned per pixel on s_cond (B, L, D); also returns its gamma-L2 term.

  `pixel_adaln` pre (the original): x + alpha * f((1 + gamma) * norm(x) + beta) for f = compaction, then MLP;
  post: x + (1 + gamma) * f(norm(x)) + beta. Both scale the update by `residual_scale`.
  """
  hidden_dim: int
  num_heads: int
  num_kv_heads: int
  mlp_ratio: float
  residual_scale: float
  pixel_adaln: str = "pre"
  kernel: str = "xla"
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, s_cond: jax.Array, rope: Rope) -> tuple[jax.Array, jax.Array]:
    pixels, pixel_dim = x.shape[2], x.shape[3]
    adaln = PixelwiseAdaLN(pixels, pixel_dim, form=self.pixel_adaln, dtype=self.dtype, name="adaln")
    compaction = TokenCompaction(self.hidden_dim, self.num_heads, self.num_kv_heads, kernel=self.kernel,
                                 dtype=self.dtype, name="compaction")
    mlp = SwiGLU(int(pixel_dim * self.mlp_ratio), axes=("pixel_dim", "pixel_mlp"), dtype=self.dtype, name="mlp")
    if self.pixel_adaln == "post":
      gamma1, beta1, gamma2, beta2 = adaln(s_cond)
      x = x + self.residual_scale * ((1 + gamma1) * compaction(adaln.norm(x), rope) + beta1)
      x = x + self.residual_scale * ((1 + gamma2) * mlp(adaln.norm(x)) + beta2)
    else:
      gamma1, beta1, alpha1, gamma2, beta2, alpha2 = adaln(s_cond)
      x = x + (alpha1 * self.residual_scale) * compaction(adaln.modulate(x, gamma1, beta1), rope)
      x = x + (alpha2 * self.residual_scale) * mlp(adaln.modulate(x, gamma2, beta2))
    gamma_l2 = (jnp.mean(jnp.square(gamma1.astype(jnp.float32)))
                + jnp.mean(jnp.square(gamma2.astype(jnp.float32))))
    return x, gamma_l2


def patch_residual_scale(patch_layers: int) -> float:
  return 1.0 / math.sqrt(2 * patch_layers)


def pixel_residual_scale(pixel_layers: int) -> float:
  return 1.0 / math.sqrt(pixel_layers)
