"""mRoPE: three-axis rotary positions (text index, patch row, patch column) with interleaved pairs.

Position ids are integers as in the original (docs/original.md §2.5): text token n is
(n, 0, 0); an image token at patch (h, w) is (T_valid, h, w) with T_valid the sample's number of valid
text tokens; pixel-path tokens and image-only sequences use (0, h, w).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def grid_positions(height: int, width: int, first: jax.Array | int = 0) -> jax.Array:
  """Ids (B or 1, h*w, 3) = (first, row, col) over a raster-ordered patch grid; `first` may be (B,)."""
  rows, cols = jnp.meshgrid(jnp.arange(height), jnp.arange(width), indexing="ij")
  grid = jnp.stack([rows.reshape(-1), cols.reshape(-1)], axis=-1).astype(jnp.int32)
  first = jnp.asarray(first, jnp.int32).reshape(-1, 1, 1)
  first = jnp.broadcast_to(first, (first.shape[0], grid.shape[0], 1))
  return jnp.concatenate([first, jnp.broadcast_to(grid, (first.shape[0],) + grid.shape)], axis=-1)


def text_positions(batch: int, length: int) -> jax.Array:
  """Ids (B, T, 3) = (n, 0, 0) for every text slot, padding included."""
  n = jnp.arange(length, dtype=jnp.int32)
  ids = jnp.stack([n, jnp.zeros_like(n), jnp.zeros_like(n)], axis=-1)
  return jnp.broadcast_to(ids, (batch, length, 3))


def rope_angles(positions: jax.Array, split: tuple[int, int, int], theta: float) -> jax.Array:
  """Rotation angles (..., head_dim / 2): axis a uses inv_freq_j = theta^(-2j / d_a) on its id."""
  parts = []
  for axis, dim in enumerate(split):
    inv_freq = 1.0 / (theta ** (jnp.arange(0, dim, 2, dtype=jnp.float32) / dim))
    parts.append(positions[..., axis:axis + 1].astype(jnp.float32) * inv_freq)
  return jnp.concatenate(parts, axis=-1)


def rope_tables(positions: jax.Array, split: tuple[int, int, int], theta: float) -> tuple[jax.Array, jax.Array]:
  """(cos, sin) of the rotation angles, each (B, S, head_dim / 2) in float32; computed once per forward."""
  angles = rope_angles(positions, split, theta)
  return jnp.cos(angles), jnp.sin(angles)


def apply_rope(x: jax.Array, rope: tuple[jax.Array, jax.Array]) -> jax.Array:
  """Rotates interleaved pairs (2j, 2j+1) of x (B, S, heads, head_dim) by the tables of `rope_tables`.

  out = x * cos + swap(x) * sin with swap(x)_(2j, 2j+1) = (-x_(2j+1), x_(2j)) and cos/sin repeated per pair.
  """
  cos = jnp.repeat(rope[0], 2, axis=-1)[:, :, None, :]
  sin = jnp.repeat(rope[1], 2, axis=-1)[:, :, None, :]
  xf = x.astype(jnp.float32)
  pairs = xf.reshape(x.shape[:-1] + (x.shape[-1] // 2, 2))
  swapped = (pairs[..., ::-1] * jnp.array([-1.0, 1.0], jnp.float32)).reshape(x.shape)
  return (xf * cos + swapped * sin).astype(x.dtype)
