"""The dual-path PixelHDM network: patch transformer over image+text tokens, pixel transformer per pixel.

Forward (docs/original.md §2.1): patch embedding and time embedding -> joint sequence of
image tokens then text tokens (non-causal attention, so the order is free; padded text trails so every
attention kernel sees a prefix of valid keys) -> N patch blocks (the REPA features are tapped after block
`repa_align_layer`) -> s_cond = image tokens + t_emb (+ pooled text) -> pixel embedding of the noisy image
-> M pixel blocks -> RMSNorm -> Dense(D_pix -> 3) -> velocity (B, H, W, 3) in float32.

Blocks are stacked with `nn.scan` (params with a leading `layers` axis) or unrolled (`patch_blocks_{i}`),
each wrapped in `nn.remat` with the policy named in the config.
"""

from __future__ import annotations

from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from pixelhdm_jax.models import remat
from pixelhdm_jax.models.blocks import PatchBlock, PixelBlock, patch_residual_scale, pixel_residual_scale
from pixelhdm_jax.models.embeddings import PatchEmbedding, PixelEmbedding, TimeEmbedding, unpatchify
from pixelhdm_jax.models.layers import ACTIVATION_AXES, Dtype, RMSNorm, abstract_key, compute_dtype, dense
from pixelhdm_jax.models.rope import grid_positions, rope_tables, text_positions


class PixelHDMOutput(NamedTuple):
  velocity: jax.Array  # (B, H, W, 3) float32, v = x - noise
  repa_features: jax.Array  # (B, L, D) image tokens after patch block `repa_align_layer`
  gamma_l2: jax.Array  # () sum over pixel blocks of mean(gamma1^2) + mean(gamma2^2), float32


class PatchStep(PatchBlock):
  """One patch block as a scan step: carry (x, repa_features, block index)."""
  tap_index: int = 0

  def __call__(self, carry, t_emb, rope, key_mask):
    x, features, index = carry
    x = nn.with_logical_constraint(super().__call__(x, t_emb, rope, key_mask), ACTIVATION_AXES)
    features = jnp.where(index == self.tap_index, x[:, :features.shape[1]], features)
    return (x, features, index + 1), None


class PixelStep(PixelBlock):
  """One pixel block as a scan step: carry (x, gamma-L2 sum)."""

  def __call__(self, carry, s_cond, rope):
    x, gamma_l2 = carry
    x, block_gamma_l2 = super().__call__(x, s_cond, rope)
    x = nn.with_logical_constraint(x, ("activation_batch", "activation_length", None, None))
    return (x, gamma_l2 + block_gamma_l2), None


def _stack(step_cls, count: int, scan: bool, remat_policy: str, num_broadcast: int, name: str, **attrs):
  """Applies `count` steps of `step_cls` to a carry, scanned (one stacked param tree) or unrolled."""
  policy = remat.policy(remat_policy)
  if policy is not None:
    step_cls = nn.remat(step_cls, policy=policy, prevent_cse=not scan)
  if scan:
    scanned = nn.scan(step_cls, variable_axes={"params": 0}, split_rngs={"params": True},
                      in_axes=(nn.broadcast,) * num_broadcast, length=count,
                      metadata_params={nn.PARTITION_NAME: "layers"})
    layer = scanned(name=name, **attrs)
    return lambda carry, *args: layer(carry, *args)[0]

  layers = [step_cls(name=f"{name}_{i}", **attrs) for i in range(count)]

  def run(carry, *args):
    for layer in layers:
      carry, _ = layer(carry, *args)
    return carry
  return run


class PixelHDM(nn.Module):
  """PixelHDM; attributes mirror `config.model` (see `from_config`)."""
  hidden_dim: int = 1024
  pixel_dim: int = 16
  patch_size: int = 16
  patch_layers: int = 16
  pixel_layers: int = 4
  num_heads: int = 16
  num_kv_heads: int = 4
  mlp_ratio: float = 3.0
  bottleneck_dim: int = 64
  time_embed_dim: int = 256
  mrope_split: tuple[int, int, int] = (16, 24, 24)
  mrope_theta: float = 10000.0
  repa_align_layer: int = 8
  text_dim: int = 1024
  use_pooled_text: bool = True
  pixel_adaln: str = "pre"
  attention: str = "xla"
  scan_layers: bool = True
  remat_policy: str = "full"
  dtype: Dtype = jnp.float32

  @classmethod
  def from_config(cls, model: ml_collections.ConfigDict, **overrides) -> "PixelHDM":
    fields = dict(hidden_dim=model.hidden_dim, pixel_dim=model.pixel_dim, patch_size=model.patch_size,
                  patch_layers=model.patch_layers, pixel_layers=model.pixel_layers, num_heads=model.num_heads,
                  num_kv_heads=model.num_kv_heads, mlp_ratio=model.mlp_ratio, bottleneck_dim=model.bottleneck_dim,
                  time_embed_dim=model.time_embed_dim, mrope_split=tuple(model.mrope_split),
                  mrope_theta=model.mrope_theta, repa_align_layer=model.repa_align_layer,
                  text_dim=model.text_dim, use_pooled_text=model.use_pooled_text, pixel_adaln=model.pixel_adaln,
                  attention=model.attention,
                  scan_layers=model.scan_layers, remat_policy=model.remat_policy,
                  dtype=compute_dtype(model.compute_dtype))
    fields.update(overrides)
    return cls(**fields)

  def _text_projection(self):
    """Identity when the text encoder's width is hidden_dim (the original), else a learned Dense."""
    if self.text_dim == self.hidden_dim:
      return lambda text: text.astype(self.dtype)
    return dense(self.hidden_dim, ("text_embed", "embed"), name="text_proj", dtype=self.dtype)

  @nn.compact
  def __call__(self, x_t: jax.Array, t: jax.Array, text: jax.Array | None = None,
               text_mask: jax.Array | None = None, pooled_text: jax.Array | None = None) -> PixelHDMOutput:
    """x_t (B, H, W, 3) noisy image, t (B,) in [0, 1]; text (B, T, text_dim), text_mask (B, T) True = valid,
    pooled_text (B, text_dim). Returns the velocity, the REPA features and the gamma-L2 term."""
    batch, height, width, _ = x_t.shape
    grid_h, grid_w = height // self.patch_size, width // self.patch_size
    num_patches = grid_h * grid_w
    x_t = x_t.astype(self.dtype)

    x = PatchEmbedding(self.hidden_dim, self.patch_size, self.bottleneck_dim, dtype=self.dtype,
                       name="patch_embed")(x_t)
    t_emb = TimeEmbedding(self.hidden_dim, self.time_embed_dim, dtype=self.dtype, name="time_embed")(t)
    text_projection = self._text_projection()

    if text is None:
      positions = jnp.broadcast_to(grid_positions(grid_h, grid_w), (batch, num_patches, 3))
      key_mask = None
    else:
      if text_mask is None:
        text_mask = jnp.ones(text.shape[:2], bool)
      text_mask = text_mask.astype(bool)
      x = jnp.concatenate([x, text_projection(text)], axis=1)
      key_mask = jnp.concatenate([jnp.ones((batch, num_patches), bool), text_mask], axis=1)
      valid_text = jnp.sum(text_mask, axis=-1).astype(jnp.int32)
      positions = jnp.concatenate([grid_positions(grid_h, grid_w, valid_text),
                                   text_positions(batch, text.shape[1])], axis=1)
    x = nn.with_logical_constraint(x, ACTIVATION_AXES)
    rope = rope_tables(positions, self.mrope_split, self.mrope_theta)

    features = jnp.zeros((batch, num_patches, self.hidden_dim), self.dtype)
    patch_blocks = _stack(PatchStep, self.patch_layers, self.scan_layers, self.remat_policy, 3, "patch_blocks",
                          num_heads=self.num_heads, num_kv_heads=self.num_kv_heads, mlp_ratio=self.mlp_ratio,
                          residual_scale=patch_residual_scale(self.patch_layers), kernel=self.attention,
                          dtype=self.dtype, tap_index=self.repa_align_layer - 1)
    x, features, _ = patch_blocks((x, features, jnp.zeros((), jnp.int32)), t_emb, rope, key_mask)

    s_cond = x[:, :num_patches] + t_emb[:, None, :]
    if self.use_pooled_text and pooled_text is not None:
      s_cond = s_cond + text_projection(pooled_text)[:, None, :]

    pixels = PixelEmbedding(self.pixel_dim, self.patch_size, dtype=self.dtype, name="pixel_embed")(x_t)
    pixel_rope = rope_tables(jnp.broadcast_to(grid_positions(grid_h, grid_w), (batch, num_patches, 3)),
                             self.mrope_split, self.mrope_theta)
    pixel_blocks = _stack(PixelStep, self.pixel_layers, self.scan_layers, self.remat_policy, 2, "pixel_blocks",
                          hidden_dim=self.hidden_dim, num_heads=self.num_heads, num_kv_heads=self.num_kv_heads,
                          mlp_ratio=self.mlp_ratio, residual_scale=pixel_residual_scale(self.pixel_layers),
                          pixel_adaln=self.pixel_adaln, kernel=self.attention, dtype=self.dtype)
    pixels, gamma_l2 = pixel_blocks((pixels, jnp.zeros((), jnp.float32)), s_cond, pixel_rope)

    pixels = RMSNorm(dtype=self.dtype, name="output_norm")(pixels)
    rgb = dense(3, ("pixel_dim", "rgb"), name="output_proj", dtype=self.dtype, use_bias=True)(pixels)
    velocity = unpatchify(rgb, self.patch_size, height, width).astype(jnp.float32)
    return PixelHDMOutput(velocity, features, gamma_l2)


def example_inputs(model: PixelHDM) -> tuple[jax.Array, ...]:
  """The smallest inputs that create every parameter: one patch, one text token."""
  size = model.patch_size
  return (jnp.zeros((1, size, size, 3)), jnp.zeros((1,)), jnp.zeros((1, 1, model.text_dim)), jnp.ones((1, 1), bool),
          jnp.zeros((1, model.text_dim)))


def abstract_params(model: PixelHDM):
  """The network's parameter shapes with their logical-axis boxes (nothing is allocated)."""
  return jax.eval_shape(lambda key: model.init(key, *example_inputs(model)), abstract_key())["params"]
