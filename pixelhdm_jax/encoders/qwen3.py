"""Qwen3 text encoder (the `Qwen3Model` backbone of any Qwen3 size) in Flax Linen.

Token embedding -> N x [RMSNorm -> GQA attention (per-head q/k RMSNorm before rotate-half RoPE, causal
plus padding mask) -> residual; RMSNorm -> SwiGLU -> residual] -> final RMSNorm, as transformers' `Qwen3Model`.
Params are float32 (placed for a run in the compute dtype: `transformer.place_frozen`) and named like Hugging
Face's (`layers` stacked by `nn.scan`); compute runs in `dtype`.
`load_qwen3` reads a local `Qwen3Model` or `Qwen3ForCausalLM` checkpoint into them (the `model.` prefix of the
causal-LM checkpoints stripped; the LM head, tied to the embedding in the small Qwen3s, skipped).

`hidden_layer` follows Hugging Face's `hidden_states[hidden_layer]`: -1 is `last_hidden_state` (after the
final norm, the original PixelHDM's choice); -k for k >= 2 is the raw output of layer N-k+1 (Z-Image and
Lumina use -2), and then only those layers are built. Query rows with no valid key (the empty prompt)
give a zero attention output, as Hugging Face's default SDPA path does with torch >= 2.5.
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from pixelhdm_jax.encoders.hf_checkpoint import (
  EncoderCheckpointError,
  TensorRule,
  load_params,
  open_safetensors,
  read_config,
)
from pixelhdm_jax.encoders.transformer import apply_rotate_half, layer_stack
from pixelhdm_jax.models.layers import ACTIVATION_AXES, Dtype, RMSNorm, SwiGLU, abstract_key, dense


@dataclasses.dataclass(frozen=True)
class Qwen3Arch:
  """The architecture numbers of a Qwen3 checkpoint (its `config.json`); defaults are Qwen3-0.6B."""
  vocab_size: int = 151936
  hidden_size: int = 1024
  num_layers: int = 28
  num_heads: int = 16
  num_kv_heads: int = 8
  head_dim: int = 128
  intermediate_size: int = 3072
  rms_norm_eps: float = 1e-6
  rope_theta: float = 1_000_000.0

  def layers_run(self, hidden_layer: int) -> int:
    """How many layers produce `hidden_states[hidden_layer]` (-1: all, followed by the final norm)."""
    if not -self.num_layers <= hidden_layer <= -1:
      raise ValueError(f"hidden_layer={hidden_layer} must be in [-{self.num_layers}, -1] for {self.num_layers} layers")
    return self.num_layers if hidden_layer == -1 else self.num_layers + 1 + hidden_layer


QWEN3_0_6B = Qwen3Arch()  # PixelHDM's text encoder


class TextEncoding(NamedTuple):
  hidden: jax.Array  # (B, T, D) hidden states in the compute dtype, pads included
  mask: jax.Array  # (B, T) bool, True = valid token
  pooled: jax.Array  # (B, D) hidden state of the last valid token (the last slot for an empty prompt)


def rope_tables(length: int, head_dim: int, theta: float) -> tuple[jax.Array, jax.Array]:
  """(cos, sin) (T, head_dim) for positions 0..T-1; frequencies theta^(-2j/head_dim), halves duplicated."""
  inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
  angles = jnp.arange(length, dtype=jnp.float32)[:, None] * inv_freq
  angles = jnp.concatenate([angles, angles], axis=-1)
  return jnp.cos(angles), jnp.sin(angles)


class Qwen3Attention(nn.Module):
  arch: Qwen3Arch
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, rope: tuple[jax.Array, jax.Array], mask: jax.Array) -> jax.Array:
    """x (B, T, D); mask (B, 1, T, T) True where a query may attend a key."""
    a = self.arch
    batch, length, _ = x.shape
    q = dense(a.num_heads * a.head_dim, ("embed", "q_heads"), name="q_proj", dtype=self.dtype)(x)
    k = dense(a.num_kv_heads * a.head_dim, ("embed", "kv_heads"), name="k_proj", dtype=self.dtype)(x)
    v = dense(a.num_kv_heads * a.head_dim, ("embed", "kv_heads"), name="v_proj", dtype=self.dtype)(x)
    q = RMSNorm(a.rms_norm_eps, self.dtype, name="q_norm")(q.reshape(batch, length, a.num_heads, a.head_dim))
    k = RMSNorm(a.rms_norm_eps, self.dtype, name="k_norm")(k.reshape(batch, length, a.num_kv_heads, a.head_dim))
    q, k = apply_rotate_half(q, *rope), apply_rotate_half(k, *rope)
    v = v.reshape(batch, length, a.num_kv_heads, a.head_dim)
    q = nn.with_logical_constraint(q, ("activation_batch", "activation_length", "activation_heads", "head_dim"))
    k = nn.with_logical_constraint(k, ("activation_batch", "activation_length", "activation_kv_heads", "head_dim"))
    out = jax.nn.dot_product_attention(q, k, v, mask=mask, implementation="xla")
    out = jnp.where(jnp.any(mask, axis=-1)[:, 0, :, None, None], out, 0)
    out = out.reshape(batch, length, a.num_heads * a.head_dim)
    return dense(x.shape[-1], ("q_heads", "embed"), name="o_proj", dtype=self.dtype)(out)


class Qwen3Layer(nn.Module):
  """One decoder layer as a scan step: x -> (x, None)."""
  arch: Qwen3Arch
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, rope: tuple[jax.Array, jax.Array], mask: jax.Array):
    a = self.arch
    h = RMSNorm(a.rms_norm_eps, self.dtype, name="input_layernorm")(x)
    x = x + Qwen3Attention(a, self.dtype, name="self_attn")(h, rope, mask)
    h = RMSNorm(a.rms_norm_eps, self.dtype, name="post_attention_layernorm")(x)
    x = x + SwiGLU(a.intermediate_size, dtype=self.dtype, name="mlp")(h)
    return nn.with_logical_constraint(x, ACTIVATION_AXES), None


class Qwen3Encoder(nn.Module):
  """Token ids (B, T) and validity mask (B, T) -> `TextEncoding` (outputs carry no gradient)."""
  arch: Qwen3Arch = QWEN3_0_6B
  hidden_layer: int = -1
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, ids: jax.Array, mask: jax.Array) -> TextEncoding:
    a = self.arch
    mask = mask.astype(bool)
    length = ids.shape[1]
    embed = nn.Embed(a.vocab_size, a.hidden_size, dtype=self.dtype, param_dtype=jnp.float32,
                     embedding_init=nn.with_logical_partitioning(nn.initializers.normal(0.02), ("vocab", "embed")),
                     name="embed_tokens")
    x = nn.with_logical_constraint(embed(ids), ACTIVATION_AXES)
    causal = jnp.tril(jnp.ones((length, length), bool))
    attend = causal[None, None] & mask[:, None, None, :]
    rope = rope_tables(length, a.head_dim, a.rope_theta)
    layers = layer_stack(Qwen3Layer, a.layers_run(self.hidden_layer), 2, "layers", arch=a, dtype=self.dtype)
    x, _ = layers(x, rope, attend)
    if self.hidden_layer == -1:
      x = RMSNorm(a.rms_norm_eps, self.dtype, name="norm")(x)
    hidden = nn.with_logical_constraint(jax.lax.stop_gradient(x), ACTIVATION_AXES)
    pooled = nn.with_logical_constraint(last_valid_token(hidden, mask), ("activation_batch", "activation_embed"))
    # Pinning every output to batch sharding also avoids an XLA SPMD miscompile seen with one image per batch
    # shard when this encoder and the network share a jit (wrong hidden states on a 2x2x2 mesh, batch 4).
    return TextEncoding(hidden, nn.with_logical_constraint(mask, ("activation_batch", "activation_length")), pooled)


def last_valid_token(hidden: jax.Array, mask: jax.Array) -> jax.Array:
  """hidden[b, mask[b].sum() - 1]; an all-pad row takes the last slot (index -1, as the original)."""
  index = jnp.sum(mask, axis=-1).astype(jnp.int32) - 1
  index = jnp.where(index < 0, hidden.shape[1] - 1, index)
  return jnp.take_along_axis(hidden, index[:, None, None], axis=1)[:, 0]


MODEL_TYPE = "qwen3"
ARCHITECTURES = ("Qwen3Model", "Qwen3ForCausalLM")
_LAYER = "layers.{i}."
_LAYER_RULES = (
    TensorRule(("layers", "input_layernorm", "scale"), _LAYER + "input_layernorm.weight"),
    *(TensorRule(("layers", "self_attn", p, "kernel"), _LAYER + f"self_attn.{p}.weight", "linear")
      for p in ("q_proj", "k_proj", "v_proj", "o_proj")),
    *(TensorRule(("layers", "self_attn", n, "scale"), _LAYER + f"self_attn.{n}.weight") for n in ("q_norm", "k_norm")),
    TensorRule(("layers", "post_attention_layernorm", "scale"), _LAYER + "post_attention_layernorm.weight"),
    *(TensorRule(("layers", "mlp", p, "kernel"), _LAYER + f"mlp.{p}.weight", "linear")
      for p in ("gate_proj", "up_proj", "down_proj")),
)
_EMBED = TensorRule(("embed_tokens", "embedding"), "embed_tokens.weight")
_NORM = TensorRule(("norm", "scale"), "norm.weight")


def arch_from_config(config: dict[str, Any]) -> Qwen3Arch:
  """The `Qwen3Arch` of a `config.json`; `EncoderCheckpointError` for settings this port does not implement."""
  rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
  unsupported = {
      "rope type": rope.get("rope_type", rope.get("type", "default")),
      "attention_bias": config.get("attention_bias", False),
      "use_sliding_window": config.get("use_sliding_window", False),
      "hidden_act": config.get("hidden_act", "silu"),
  }
  supported = {"rope type": "default", "attention_bias": False, "use_sliding_window": False, "hidden_act": "silu"}
  bad = [f"{key}={value!r} (supported: {supported[key]!r})" for key, value in unsupported.items()
         if value != supported[key]]
  if bad:
    raise EncoderCheckpointError(f"unsupported Qwen3 config settings: {', '.join(bad)}")
  heads = config["num_attention_heads"]
  return Qwen3Arch(vocab_size=config["vocab_size"], hidden_size=config["hidden_size"],
                   num_layers=config["num_hidden_layers"], num_heads=heads,
                   num_kv_heads=config.get("num_key_value_heads") or heads,
                   head_dim=config.get("head_dim") or config["hidden_size"] // heads,
                   intermediate_size=config["intermediate_size"], rms_norm_eps=config.get("rms_norm_eps", 1e-6),
                   rope_theta=float(rope.get("rope_theta", config.get("rope_theta", 10000.0))))


def tensor_rules(hidden_layer: int) -> list[TensorRule]:
  """The rules of an encoder cut at `hidden_layer` (the final norm only for -1)."""
  return [_EMBED, *_LAYER_RULES] + ([_NORM] if hidden_layer == -1 else [])


def _rename(name: str) -> str | None:
  if name == "lm_head.weight":
    return None
  return name.removeprefix("model.")


def abstract_params(module: Qwen3Encoder) -> Any:
  """Parameter shapes of `module` (no memory), with their logical-axis boxes."""
  ids = jax.ShapeDtypeStruct((1, 1), jnp.int32)
  return jax.eval_shape(module.init, abstract_key(), ids, ids)["params"]


def load_qwen3(directory: pathlib.Path | str, hidden_layer: int = -1,
               dtype: Dtype = jnp.float32) -> tuple[Qwen3Encoder, dict[str, Any]]:
  """The encoder described by `directory/config.json` and its float32 params (host numpy arrays)."""
  arch = arch_from_config(read_config(directory, MODEL_TYPE, ARCHITECTURES))
  module = Qwen3Encoder(arch, hidden_layer, dtype)
  full = tensor_rules(-1)
  known = {n for rule in full for n in rule.names(arch.num_layers)}
  params = load_params(abstract_params(module), tensor_rules(hidden_layer), open_safetensors(directory),
                       num_layers=arch.layers_run(hidden_layer), known=known, where=repr(str(directory)),
                       rename=_rename)
  return module, params
