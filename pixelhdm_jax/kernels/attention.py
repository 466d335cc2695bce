"""Attention kernel registry: every kernel takes q (B,S,Hq,D), k and v (B,S,Hkv,D) and a key mask.

Contract shared by all kernels: attention is non-causal; `key_mask` (B, S) is True for keys that may be
attended, and the valid keys of a row form a prefix (the model puts image tokens first and right-pads the
text), so kernels that only understand sequence lengths can use `key_mask.sum(-1)`. Hkv divides Hq (GQA).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

AttentionFn = Callable[[jax.Array, jax.Array, jax.Array, jax.Array | None], jax.Array]


def xla_attention(q: jax.Array, k: jax.Array, v: jax.Array, key_mask: jax.Array | None) -> jax.Array:
  """`jax.nn.dot_product_attention` with XLA ops; GQA is handled natively, scale 1/sqrt(head_dim)."""
  mask = None if key_mask is None else key_mask[:, None, None, :]
  return jax.nn.dot_product_attention(q, k, v, mask=mask, implementation="xla")


KERNELS: dict[str, AttentionFn] = {"xla": xla_attention}


def resolve(name: str) -> str:
  """Maps `auto` to the kernel used on this backend."""
  return "xla" if name == "auto" else name


def attention(q: jax.Array, k: jax.Array, v: jax.Array, key_mask: jax.Array | None, *,
              kernel: str = "xla") -> jax.Array:
  """Runs the named kernel (see module docstring for the contract); returns (B, S, Hq, D)."""
  name = resolve(kernel)
  if name not in KERNELS:
    raise ValueError(f"attention kernel {name!r} is not available; known kernels: {sorted(KERNELS)}")
  return KERNELS[name](q, k, v, key_mask)
