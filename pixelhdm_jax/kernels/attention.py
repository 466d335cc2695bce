"""Attention kernel registry: every kernel takes q (B,S,Hq,D), k and v (B,S,Hkv,D) and a key mask.

Contract shared by all kernels: attention is non-causal with scale 1/sqrt(D); Hkv divides Hq (GQA, query
head n uses KV head n // (Hq/Hkv)); `key_mask` (B, S) is True for keys that may be attended, and the valid
keys of a row form a prefix (the model puts image tokens first and right-pads the text), so kernels that
only understand lengths or segment ids can express it. Rows of padded queries are left to the kernel
(xla and splash attend the valid keys there, as the original; pallas_gpu attends the padding): the model
never reads them, and they get no gradient, since padded keys are masked for every valid query.

Kernels: `xla` (`jax.nn.dot_product_attention` in XLA ops, any backend; heads first on CPU), `cudnn`
(cuDNN flash attention through the same function, GPU, bf16/fp16), `pallas_gpu` (Pallas Triton flash
attention), `splash` (Pallas TPU splash attention); the Pallas kernels run inside `shard_map` and, off their
backend, in interpret mode (tests).
`auto` picks cudnn on GPU, splash on TPU, xla on CPU, and xla below `MIN_FUSED_LENGTH` tokens or for
inputs the fused kernel cannot take; the platform is the one compiled for (`target.backend()`), so an AOT
compile for a TPU on a CPU host gets splash. `KERNELS` is the registry (a new kernel is one entry here);
`pixelhdm_jax.config.check_backend` reads it to reject impossible choices early.
"""

from __future__ import annotations

import functools
import importlib
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from pixelhdm_jax.kernels.sharded import run_sharded
from pixelhdm_jax.perf import target

AttentionFn = Callable[[jax.Array, jax.Array, jax.Array, jax.Array | None], jax.Array]

# Below this many tokens `auto` uses xla: one 128-token tile, where a fused kernel gains nothing.
MIN_FUSED_LENGTH = 128
CUDNN_DTYPES = ("bfloat16", "float16")
CUDNN_MAX_HEAD_DIM = 128  # 256 from Hopper on; 128 holds on every cuDNN-capable GPU


def xla_attention(q: jax.Array, k: jax.Array, v: jax.Array, key_mask: jax.Array | None) -> jax.Array:
  """`jax.nn.dot_product_attention` in XLA ops; on CPU its own math heads first (`_heads_first_attention`)."""
  if target.backend() == "cpu":
    return _heads_first_attention(q, k, v, key_mask)
  mask = None if key_mask is None else key_mask[:, None, None, :]
  return jax.nn.dot_product_attention(q, k, v, mask=mask, implementation="xla")


# The dot algorithm JAX's attention uses for half-precision inputs with float32 logits (a consistent backward).
_HALF_PRECISION_ALGORITHMS = {jnp.dtype(jnp.bfloat16): jax.lax.DotAlgorithmPreset.BF16_BF16_F32,
                              jnp.dtype(jnp.float16): jax.lax.DotAlgorithmPreset.F16_F16_F32}


def _heads_first_attention(q: jax.Array, k: jax.Array, v: jax.Array, key_mask: jax.Array | None) -> jax.Array:
  """The query heads of each KV head stacked along the sequence, so both products are single batched matmuls
  (JAX's function maps them over the groups, slower on XLA:CPU: docs/performance.md, the leaner step). Logits
  and softmax in at least float32, masked keys at -0.7 x the float32 maximum, as JAX's."""
  batch, length, heads, head_dim = q.shape
  kv_heads = k.shape[2]
  groups = heads // kv_heads
  q = q.reshape(batch, length, kv_heads, groups, head_dim).transpose(0, 2, 3, 1, 4)
  q = q.reshape(batch, kv_heads, groups * length, head_dim)
  k, v = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)
  logits = jnp.einsum("bhqd,bhkd->bhqk", q, k, precision=_HALF_PRECISION_ALGORITHMS.get(q.dtype),
                      preferred_element_type=jnp.promote_types(q.dtype, jnp.float32))
  logits = logits * head_dim ** -0.5
  if key_mask is not None:
    logits = jnp.where(key_mask[:, None, None, :], logits, -0.7 * jnp.finfo(jnp.float32).max)
  probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(v.dtype)
  out = jnp.einsum("bhqk,bhkd->bhqd", probs, v).reshape(batch, kv_heads, groups, length, head_dim)
  return out.transpose(0, 3, 1, 2, 4).reshape(batch, length, heads, head_dim)


def cudnn_attention(q: jax.Array, k: jax.Array, v: jax.Array, key_mask: jax.Array | None) -> jax.Array:
  """cuDNN fused attention; the prefix mask becomes per-example key lengths (GQA native, GPU only)."""
  lengths = None if key_mask is None else jnp.sum(key_mask, axis=-1, dtype=jnp.int32)
  return jax.nn.dot_product_attention(q, k, v, key_value_seq_lengths=lengths, implementation="cudnn")


def cudnn_head_dim_ok(head_dim: int) -> bool:
  """cuDNN fused attention takes head sizes that are multiples of 8 up to 128 on every cuDNN-capable GPU."""
  return head_dim % 8 == 0 and head_dim <= CUDNN_MAX_HEAD_DIM


def cudnn_supports(head_dim: int, dtype) -> bool:
  return jnp.dtype(dtype).name in CUDNN_DTYPES and cudnn_head_dim_ok(head_dim)


@functools.cache
def _import_pallas(module: str, function: str) -> AttentionFn:
  """Imports a Pallas kernel on first use, so a JAX without it only fails when it is asked for."""
  try:
    return getattr(importlib.import_module(f"pixelhdm_jax.kernels.{module}"), function)
  except ImportError as error:
    raise RuntimeError(f"attention kernel {module!r} needs a Pallas op that JAX {jax.__version__} lacks "
                       f"({error}); use model.attention=auto or xla") from error


def _pallas(module: str, function: str) -> AttentionFn:
  """A Pallas kernel run per device under `shard_map` (`kernels/sharded.py`)."""
  def run(q, k, v, key_mask):
    return run_sharded(_import_pallas(module, function), q, k, v, key_mask)
  return run


class Kernel(NamedTuple):
  """An attention kernel under the contract above and the backends it runs on."""
  run: AttentionFn
  backends: tuple[str, ...]  # `jax.default_backend()` names it runs on
  interpreted_on_cpu: bool = False  # Pallas interpret mode: runs on CPU in tests, slowly


KERNELS: dict[str, Kernel] = {
    "xla": Kernel(xla_attention, ("cpu", "gpu", "tpu")),
    "cudnn": Kernel(cudnn_attention, ("gpu",)),
    "pallas_gpu": Kernel(_pallas("pallas_gpu", "flash_attention"), ("gpu",), interpreted_on_cpu=True),
    "splash": Kernel(_pallas("splash", "splash_attention"), ("tpu",), interpreted_on_cpu=True),
}
KERNEL_NAMES = ("auto", *KERNELS)  # what `model.attention` may be


def resolve(name: str, *, backend: str, length: int, head_dim: int, dtype) -> str:
  """The kernel that runs for `name` on `backend` and these inputs: `auto` is chosen here, others kept."""
  if name != "auto":
    return name
  if length < MIN_FUSED_LENGTH:
    return "xla"
  if backend == "gpu":
    return "cudnn" if cudnn_supports(head_dim, dtype) else "xla"
  if backend == "tpu":
    return "splash"
  return "xla"


def attention(q: jax.Array, k: jax.Array, v: jax.Array, key_mask: jax.Array | None, *,
              kernel: str = "xla") -> jax.Array:
  """Runs the named kernel (contract in the module docstring); returns (B, S, Hq, D) in q's dtype."""
  backend = target.backend()
  name = resolve(kernel, backend=backend, length=q.shape[1], head_dim=q.shape[-1], dtype=q.dtype)
  if name not in KERNELS:
    raise ValueError(f"attention kernel {name!r} is not available; known kernels: {sorted(KERNELS)} or auto")
  chosen = KERNELS[name]
  if backend not in chosen.backends and not (backend == "cpu" and chosen.interpreted_on_cpu):
    raise ValueError(f"attention kernel {name!r} runs on {'/'.join(chosen.backends)} only, not on "
                     f"{backend!r}: set model.attention=auto or xla")
  return chosen.run(q, k, v, key_mask)
