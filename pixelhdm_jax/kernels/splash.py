"""Pallas TPU splash attention (`jax.experimental.pallas.ops.tpu.splash_attention`).

Splash works on one example with layout (heads, seq, head_dim), handles GQA natively (KV heads dividing
query heads) and applies no softmax scale, so q is scaled by 1/sqrt(head_dim) first. A full mask plus
segment ids expresses the text padding: keys valid 1 / padding 0, queries all 1 (as xla: a padded query
attends the valid keys). Sequences are padded to a multiple of 128 and
tiled with the largest of 512/256/128 that divides the padded length. Off TPU it runs in interpret mode.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as splash_kernel
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as splash_mask

from pixelhdm_jax.kernels.padding import pad_sequence, round_up, segment_ids
from pixelhdm_jax.perf import target

LANES = 128  # TPU tiles are multiples of 128 along the sequence
BLOCKS = (512, 256, 128)  # tried in order; the first that divides the padded length is used


def block_size(padded_length: int) -> int:
  return next(block for block in BLOCKS if padded_length % block == 0)


def _make_kernel(heads: int, length: int) -> splash_kernel.SplashAttentionKernel:
  block = block_size(length)
  sizes = splash_kernel.BlockSizes(block_q=block, block_kv=block, block_kv_compute=block, block_q_dkv=block,
                                   block_kv_dkv=block, block_kv_dkv_compute=block, block_q_dq=block,
                                   block_kv_dq=block)
  mask = splash_mask.MultiHeadMask([splash_mask.FullMask((length, length))] * heads)
  return splash_kernel.make_splash_mha(mask, block_sizes=sizes, head_shards=1, q_seq_shards=1,
                                       interpret=target.backend() != "tpu")


def splash_attention(q: jax.Array, k: jax.Array, v: jax.Array, key_mask: jax.Array | None) -> jax.Array:
  """Per-device kernel under the registry contract; every query (padded ones too) attends the valid keys."""
  batch, length, heads, head_dim = q.shape
  padded = round_up(length, LANES)
  kernel = _make_kernel(heads, padded)
  ids = segment_ids(key_mask, batch, length, padded)
  to_heads_major = lambda x: pad_sequence(x, padded).transpose(0, 2, 1, 3)
  q, k, v = to_heads_major(q * jnp.asarray(head_dim ** -0.5, q.dtype)), to_heads_major(k), to_heads_major(v)
  if ids is None:
    out = jax.vmap(kernel)(q, k, v)
  else:
    query_ids = jnp.ones_like(ids[0])
    out = jax.vmap(lambda q, k, v, ids: kernel(q, k, v, segment_ids=splash_kernel.SegmentIds(query_ids, ids)))(
        q, k, v, ids)
  return out.transpose(0, 2, 1, 3)[:, :length]
