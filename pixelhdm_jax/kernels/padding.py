"""Sequence padding shared by the Pallas kernels: pad to the kernel's block, mark padding by segment id."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def round_up(value: int, multiple: int) -> int:
  return -(-value // multiple) * multiple


def pad_sequence(x: jax.Array, length: int) -> jax.Array:
  """Right-pads axis 1 of `x` with zeros to `length`."""
  pad = length - x.shape[1]
  if pad == 0:
    return x
  return jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2))


def segment_ids(key_mask: jax.Array | None, batch: int, length: int, padded: int) -> jax.Array | None:
  """(B, padded) int32 key segment ids: 1 for valid keys, 0 for text and block padding; None if all valid."""
  if key_mask is None and padded == length:
    return None
  valid = jnp.ones((batch, length), bool) if key_mask is None else key_mask.astype(bool)
  return pad_sequence(valid, padded).astype(jnp.int32)
