"""Gated grouped-query attention with per-head QK RMSNorm and mRoPE (patch blocks and token compaction).

q, k, v projections (no bias) -> per-head RMSNorm of q and k (one weight of size head_dim shared by the
heads) -> mRoPE -> non-causal attention (scale 1/sqrt(head_dim)) -> head-wise sigmoid gate computed from the
attention input (arXiv 2505.06708, position G1) -> output projection. The gate kernel starts at zero, so
every gate is 0.5 at init (the original module's own init, which its global init overwrote: docs/deviations.md).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from pixelhdm_jax.kernels.attention import attention
from pixelhdm_jax.models.layers import Dtype, RMSNorm, dense
from pixelhdm_jax.models.rope import apply_rope


class GatedAttention(nn.Module):
  num_heads: int
  num_kv_heads: int
  head_dim: int
  kernel: str = "xla"
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, rope: tuple[jax.Array, jax.Array], key_mask: jax.Array | None) -> jax.Array:
    batch, length, width = x.shape
    q = dense(self.num_heads * self.head_dim, ("embed", "q_heads"), name="q_proj", dtype=self.dtype)(x)
    k = dense(self.num_kv_heads * self.head_dim, ("embed", "kv_heads"), name="k_proj", dtype=self.dtype)(x)
    v = dense(self.num_kv_heads * self.head_dim, ("embed", "kv_heads"), name="v_proj", dtype=self.dtype)(x)
    q = q.reshape(batch, length, self.num_heads, self.head_dim)
    k = k.reshape(batch, length, self.num_kv_heads, self.head_dim)
    v = v.reshape(batch, length, self.num_kv_heads, self.head_dim)
    q = apply_rope(RMSNorm(dtype=self.dtype, name="q_norm")(q), rope)
    k = apply_rope(RMSNorm(dtype=self.dtype, name="k_norm")(k), rope)
    q = nn.with_logical_constraint(q, ("activation_batch", "activation_length", "activation_heads", "head_dim"))
    k = nn.with_logical_constraint(k, ("activation_batch", "activation_length", "activation_kv_heads", "head_dim"))
    out = checkpoint_name(attention(q, k, v, key_mask, kernel=self.kernel), "attention_out")
    gate = dense(self.num_heads, ("embed", "gate"), name="gate", dtype=self.dtype,
                 kernel_init=nn.initializers.zeros)(x)
    out = out * nn.sigmoid(gate)[..., None]
    out = out.reshape(batch, length, self.num_heads * self.head_dim)
    return dense(width, ("q_heads", "embed"), name="out_proj", dtype=self.dtype)(out)
