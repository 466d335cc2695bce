"""Runs a per-device attention kernel (a Pallas call) under `jax.shard_map` over the context mesh.

Pallas calls have no sharding rule, so under GSPMD they would be replicated (every device gathering the
whole batch). Here batch and heads are split by the logical axis rules in effect (`nn.logical_axis_rules`:
`activation_batch`, `activation_heads`, `activation_kv_heads`, as in maxtext/maxdiffusion) and every device
runs the kernel on its shard. The sequence is never split: each query needs every key.
"""

from __future__ import annotations

from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

KernelFn = Callable[[jax.Array, jax.Array, jax.Array, jax.Array | None], jax.Array]


def _mesh_axes(logical_name: str, dim: int, mesh) -> tuple[str, ...] | None:
  """Mesh axes the rules give `logical_name`, keeping the leading ones whose sizes divide `dim`."""
  spec = nn.logical_to_mesh_axes((logical_name,))
  axes = spec[0] if spec is not None else None
  if axes is None:
    return None
  kept, size = [], 1
  for axis in (axes,) if isinstance(axes, str) else tuple(axes):
    if axis not in mesh.shape or dim % (size * mesh.shape[axis]):
      break
    kept.append(axis)
    size *= mesh.shape[axis]
  return tuple(kept) or None


def run_sharded(kernel: KernelFn, q: jax.Array, k: jax.Array, v: jax.Array,
                key_mask: jax.Array | None) -> jax.Array:
  """`kernel(q, k, v, key_mask)` on each device's batch and head shard; runs it directly without a mesh.

  Axes that do not divide a dimension are left out (that dimension is then replicated). When the KV heads
  cannot be split like the query heads (e.g. 4 KV heads on 8 tensor shards), K and V are repeated to one
  head per query head first, which keeps the GQA grouping of every shard.
  """
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or mesh.size == 1:
    return kernel(q, k, v, key_mask)
  batch = _mesh_axes("activation_batch", q.shape[0], mesh)
  heads = _mesh_axes("activation_heads", q.shape[2], mesh)
  kv_heads = _mesh_axes("activation_kv_heads", k.shape[2], mesh)
  if kv_heads != heads:
    groups = q.shape[2] // k.shape[2]
    k, v = jnp.repeat(k, groups, axis=2), jnp.repeat(v, groups, axis=2)
  qkv_spec = P(batch, None, heads, None)
  if key_mask is None:
    return jax.shard_map(lambda q, k, v: kernel(q, k, v, None), in_specs=(qkv_spec,) * 3, out_specs=qkv_spec,
                         check_vma=False)(q, k, v)
  return jax.shard_map(kernel, in_specs=(qkv_spec,) * 3 + (P(batch, None),), out_specs=qkv_spec,
                       check_vma=False)(q, k, v, key_mask)
