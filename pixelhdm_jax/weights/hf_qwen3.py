"""Qwen3 from a local Hugging Face checkpoint (`Qwen3Model` or `Qwen3ForCausalLM`) into `Qwen3Encoder`.

Names follow `field.md` §7.2 with the `model.` prefix of the causal-LM checkpoints stripped; the LM head
(tied to the embedding in the small Qwen3s) is not needed by an encoder and is skipped.
"""

from __future__ import annotations

import pathlib
from typing import Any

import jax
import jax.numpy as jnp

from pixelhdm_jax.encoders.qwen3 import Qwen3Arch, Qwen3Encoder
from pixelhdm_jax.models.layers import Dtype, abstract_key
from pixelhdm_jax.weights.hf import CheckpointError, TensorRule, load_params, open_safetensors, read_config

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
  """The `Qwen3Arch` of a `config.json`; raises `CheckpointError` for settings this port does not implement."""
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
    raise CheckpointError(f"unsupported Qwen3 config settings: {', '.join(bad)}")
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
