"""Pallas (Triton) flash attention for GPUs: `jax.experimental.pallas.ops.gpu.attention.mha`.

The kernel takes equal Q and KV head counts (with fewer KV heads it silently returns wrong results), so
K and V are repeated per query head first; the repeat's gradient sums the groups back. Padding is
expressed by segment ids (valid 1, padding 0), one array for queries and keys, so a padded query attends
the padded keys (the model never reads that row). Sequences are padded to a power-of-two block (16..128,
Triton tiles) and cut back. Off GPU the kernel runs in Pallas interpret mode (tests only: slow).
JAX 0.11 deprecates this op in favour of tokamax (it still works in 0.12.0.1); a JAX without it makes
`model.attention=pallas_gpu` fail on first use with a message naming the alternatives (`attention.py`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.experimental.pallas.ops.gpu import attention as gpu_attention

from pixelhdm_jax.kernels.padding import pad_sequence, round_up, segment_ids
from pixelhdm_jax.perf import target

MAX_BLOCK = 128  # forward tile along both sequences (the kernel's default)
MAX_BACKWARD_BLOCK = 32  # dq and dk/dv tiles (the kernel's defaults)
MIN_BLOCK = 16  # smallest tile Triton's dot takes


def block_size(length: int) -> int:
  """The forward tile for a sequence of `length`: the next power of two, clipped to [16, 128]."""
  return min(MAX_BLOCK, max(MIN_BLOCK, 1 << (length - 1).bit_length()))


def flash_attention(q: jax.Array, k: jax.Array, v: jax.Array, key_mask: jax.Array | None) -> jax.Array:
  """Per-device kernel under the registry contract; a padded query attends the padded keys (one id array)."""
  batch, length, heads, head_dim = q.shape
  groups = heads // k.shape[2]
  k, v = jnp.repeat(k, groups, axis=2), jnp.repeat(v, groups, axis=2)
  block = block_size(length)
  padded = round_up(length, block)
  backward = min(MAX_BACKWARD_BLOCK, block)
  sizes = gpu_attention.BlockSizes(block_q=block, block_k=block, block_q_dkv=backward, block_kv_dkv=backward,
                                   block_q_dq=backward, block_kv_dq=backward)
  out = gpu_attention.mha(pad_sequence(q, padded), pad_sequence(k, padded), pad_sequence(v, padded),
                          segment_ids(key_mask, batch, length, padded), sm_scale=head_dim ** -0.5,
                          block_sizes=sizes, interpret=target.backend() != "gpu")
  return out[:, :length]
