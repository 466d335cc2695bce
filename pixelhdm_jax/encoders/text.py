"""The text-conditioning API of training and sampling: prompts -> (hidden, mask, pooled).

`build_text_encoder(config)` returns a `TextEncoder` (the tokenizer and the frozen Qwen3 module) and its
float32 params (host arrays; on the default device for the random sources): loaded (`text.source=pretrained`)
or random from a fixed seed (`random`: a tiny Qwen3; `random_full`: Qwen3-0.6B's shapes, for benchmarks and AOT
compiles on synthetic data). The caller places the params once (`place_frozen`: on the devices, in the compute
dtype) and drops the host copy; the encoder never holds them. `encode(params, ids, mask)` is pure and jittable:
the train step and the sampling loop call it inside their own `jax.jit` with the placed params as an argument.
"""

from __future__ import annotations

from typing import Any

import jax
import ml_collections
import numpy as np

from pixelhdm_jax.encoders.hf_checkpoint import EncoderCheckpointError, read_config, resolve_checkpoint
from pixelhdm_jax.encoders.qwen3 import (
  ARCHITECTURES,
  MODEL_TYPE,
  QWEN3_0_6B,
  Qwen3Arch,
  Qwen3Encoder,
  TextEncoding,
  abstract_params,
  arch_from_config,
  load_qwen3,
)
from pixelhdm_jax.encoders.tokenizers import QWEN3_FILES, ByteTokenizer, Tokenizer, build_tokenizer
from pixelhdm_jax.encoders.transformer import RANDOM_SOURCES, random_params
from pixelhdm_jax.errors import ConfigError
from pixelhdm_jax.models.layers import compute_dtype

RANDOM_QWEN3_SEED = 0


def tiny_qwen3_arch(text_dim: int) -> Qwen3Arch:
  """The random encoder of the `tiny` preset: 2 layers, 4/2 heads of 16.

  The vocabulary covers `ByteTokenizer`'s 257 ids, rounded up to 264 so that the `vocab` axis splits
  evenly over a tensor-parallel mesh axis of up to 8 devices.
  """
  vocab = -(-ByteTokenizer.vocab_size // 8) * 8
  return Qwen3Arch(vocab_size=vocab, hidden_size=text_dim, num_layers=2, num_heads=4,
                   num_kv_heads=2, head_dim=16, intermediate_size=2 * text_dim, rope_theta=10000.0)


class TextEncoder:
  """Tokenizer + frozen Qwen3 encoder; its params are an argument of `encode`."""

  def __init__(self, tokenizer: Tokenizer, module: Qwen3Encoder):
    self.tokenizer = tokenizer
    self.module = module

  def encode(self, params: Any, ids: jax.Array, mask: jax.Array) -> TextEncoding:
    """Pure and jittable: ids/mask (B, T) -> hidden (B, T, D), mask (B, T) bool, pooled (B, D)."""
    return self.module.apply({"params": params}, ids, mask)

  def abstract_params(self) -> Any:
    """Param shapes with their logical axes, for `parallel.place_params`."""
    return abstract_params(self.module)


def build_text_encoder(config: ml_collections.ConfigDict, *,
                       with_params: bool = True) -> tuple[TextEncoder, Any | None]:
  """The encoder of `config.text`, checked against `config.model.text_dim`, and its float32 params.

  `with_params=False` (random sources only) skips creating the params (None): an AOT compile needs shapes only.
  Raises `EncoderCheckpointError` for an unusable checkpoint (naming the field to set) and `ConfigError` when
  the checkpoint does not fit the config.
  """
  t = config.text
  if not with_params and t.source == "pretrained":
    raise ConfigError("a text encoder without params (AOT compiles) needs text.source=random or random_full")
  dtype = compute_dtype(t.compute_dtype)
  tokenizer = build_tokenizer(t)
  if t.source == "random":
    arch = tiny_qwen3_arch(config.model.text_dim)
  elif t.source == "random_full":
    arch = QWEN3_0_6B
  else:
    path = resolve_checkpoint(t, "text", QWEN3_FILES)
    arch = arch_from_config(read_config(path, MODEL_TYPE, ARCHITECTURES))
  if not -arch.num_layers <= t.hidden_layer <= -1:
    raise ConfigError(f"text.hidden_layer={t.hidden_layer} is out of range for a {arch.num_layers}-layer Qwen3: "
                      f"use -1 .. -{arch.num_layers}")
  if arch.hidden_size != config.model.text_dim:
    raise ConfigError(f"the text encoder is {arch.hidden_size} wide but model.text_dim={config.model.text_dim}: "
                      f"set --config.model.text_dim={arch.hidden_size}")
  if tokenizer.vocab_size > arch.vocab_size:
    raise EncoderCheckpointError(f"the tokenizer has {tokenizer.vocab_size} tokens but the encoder's embedding only "
                                 f"{arch.vocab_size}: text.path must hold a matching tokenizer")
  if t.source in RANDOM_SOURCES:
    module = Qwen3Encoder(arch, t.hidden_layer, dtype)
    ids = np.zeros((1, 1), np.int32)
    params = random_params(module, RANDOM_QWEN3_SEED, ids, ids) if with_params else None
    return TextEncoder(tokenizer, module), params
  module, params = load_qwen3(path, t.hidden_layer, dtype)
  return TextEncoder(tokenizer, module), params
