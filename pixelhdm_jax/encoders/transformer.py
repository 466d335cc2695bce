"""Pieces shared by the Qwen3 and DINOv3 ports: where weights come from, random params, frozen params on the
devices, rotate-half RoPE, the scanned layer stack.

Both Hugging Face models rotate the two halves of each head (`rotate_half`), unlike the interleaved pairs
of the PixelHDM network's mRoPE (`models/rope.py`), so the encoders keep their own rotation.
"""

from __future__ import annotations

from typing import Any, Protocol

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from pixelhdm_jax import parallel

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


class Frozen(Protocol):
  """A frozen encoder: its Flax module (whose `dtype` is the compute dtype) and its parameter shapes."""
  module: nn.Module

  def abstract_params(self) -> Any:
    ...


def _stored_dtype(encoder: Frozen, leaf: Any) -> Any:
  """The dtype a frozen weight is kept in: the compute dtype for floating matrices, embeddings, kernels and
  tokens (the modules cast them to it at every use anyway), its own for vectors (norm scales, biases: computed
  in float32 by the norms). So the numbers are those of the float32 weights, in about half the memory."""
  floating = jnp.issubdtype(leaf.dtype, jnp.floating)
  return encoder.module.dtype if floating and len(leaf.shape) >= 2 else leaf.dtype


def place_frozen(encoder: Frozen, params: Any | None, mesh: Mesh | None = None, rules: parallel.Rules = ()) -> Any:
  """`params` (host arrays, or arrays on one device) on the devices, stored in the compute dtype (`_stored_dtype`),
  ready to be an argument of every step: split over `mesh` by their logical axes (each device receiving only its
  slice), or on the default device without a mesh. The caller drops its host copy afterwards. On accelerators
  the compute dtype is bfloat16; on CPU float32, and nothing changes. `params` None (an encoder built for shapes
  only) gives the `jax.ShapeDtypeStruct`s, with their shardings, of what would be placed: for AOT compiles."""
  if params is None:
    abstract = encoder.abstract_params()
    shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, _stored_dtype(encoder, x)),
                          parallel.strip_boxes(abstract))
    return parallel.abstract_arrays(shapes, parallel.param_shardings(abstract, mesh, rules))
  cast = lambda x: x.astype(_stored_dtype(encoder, x))
  if mesh is None:
    return jax.device_put(jax.tree.map(lambda x: cast(np.asarray(x)), params))
  placed, _ = parallel.place_params(params, encoder.abstract_params(), mesh, rules, cast=cast)
  return placed


def random_params(module: nn.Module, seed: int, *example_inputs: Any) -> Any:
  """`module`'s params initialised from the fixed `seed`, unboxed: the random encoder sources. Callers pass
  host (numpy) example inputs, so building an encoder without params (an AOT compile) runs nothing on a
  device."""
  return nn.unbox(jax.jit(module.init)(jax.random.PRNGKey(seed), *example_inputs)["params"])
