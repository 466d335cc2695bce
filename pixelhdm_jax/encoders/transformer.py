"""Pieces shared by the Qwen3 and DINOv3 ports: where weights come from, rotate-half RoPE, the scanned layer
stack, random params.

Both Hugging Face models rotate the two halves of each head (`rotate_half`), unlike the interleaved pairs
of the PixelHDM network's mRoPE (`models/rope.py`), so the encoders keep their own rotation.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

# `text.source` and `dino.source`: random = a tiny encoder, random_full = random weights at the real size
# (Qwen3-0.6B, DINOv3 ViT-B/16; benchmarks and AOT compiles), both from a fixed seed with no download;
# pretrained = loaded from `path`.
RANDOM_SOURCES = ("random", "random_full")
SOURCES = RANDOM_SOURCES + ("pretrained",)


def apply_rotate_half(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
  """`x * cos + rotate_half(x) * sin` in float32; x (B, S, heads, head_dim), cos/sin (S, head_dim)."""
  xf = x.astype(jnp.float32)
  first, second = jnp.split(xf, 2, axis=-1)
  rotated = jnp.concatenate([-second, first], axis=-1)
  cos, sin = cos[:, None, :], sin[:, None, :]
  return (xf * cos + rotated * sin).astype(x.dtype)


def layer_stack(layer_cls: type[nn.Module], count: int, num_broadcast: int, name: str, **attrs) -> nn.Module:
  """`count` layers scanned over one stacked param tree (leading logical axis `layers`).

  The layer maps `(x, *broadcast_args) -> (x, None)`; frozen encoders need no remat.
  """
  scanned = nn.scan(layer_cls, variable_axes={"params": 0}, split_rngs={"params": True},
                    in_axes=(nn.broadcast,) * num_broadcast, length=count,
                    metadata_params={nn.PARTITION_NAME: "layers"})
  return scanned(name=name, **attrs)


def random_params(module: nn.Module, seed: int, *example_inputs: Any) -> Any:
  """`module`'s params initialised from the fixed `seed`, unboxed: the random encoder sources. Callers pass
  host (numpy) example inputs, so building an encoder without params (an AOT compile) runs nothing on a
  device."""
  return nn.unbox(jax.jit(module.init)(jax.random.PRNGKey(seed), *example_inputs)["params"])
