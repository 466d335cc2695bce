"""Translates the original's `PixelHDMConfig.to_dict()` onto our config, and back.

The original stores its config in every checkpoint under `config` (docs/original.md §1).
Fields with the same meaning map one to one (`_SAME_MEANING`); a few combine (on/off switches with their
lambda, the three mRoPE sizes); architecture fields that our network fixes must hold the value it implements
(`_FIXED`), otherwise the checkpoint is rejected. Every other field is reported as not mapped, never dropped
silently. `original_config` writes the inverse, for the PyTorch side.
"""

from __future__ import annotations

import copy
from typing import Any, Mapping

import ml_collections

# Original field -> our dotted field, where both mean the same thing.
_SAME_MEANING = {
    "hidden_dim": "model.hidden_dim",
    "pixel_dim": "model.pixel_dim",
    "patch_size": "model.patch_size",
    "patch_layers": "model.patch_layers",
    "pixel_layers": "model.pixel_layers",
    "num_heads": "model.num_heads",
    "num_kv_heads": "model.num_kv_heads",
    "mlp_ratio": "model.mlp_ratio",
    "bottleneck_dim": "model.bottleneck_dim",
    "time_embed_dim": "model.time_embed_dim",
    "mrope_theta": "model.mrope_theta",
    "mrope_text_max_len": "model.mrope_max_text_len",
    "mrope_img_max_height": "model.mrope_max_height",  # absent from the original's to_dict (then 128)
    "mrope_img_max_width": "model.mrope_max_width",
    "repa_align_layer": "model.repa_align_layer",
    "text_hidden_size": "model.text_dim",
    "text_max_length": "text.max_length",
    "text_encoder_name": "text.hub_id",
    "time_p_mean": "flow.p_mean",
    "time_p_std": "flow.p_std",
    "time_eps": "flow.t_eps",
    "repa_early_stop": "loss.repa_early_stop",
    "freq_loss_quality": "loss.freq_quality",
    "freq_loss_use_ycbcr": "loss.freq_ycbcr",
    "pixel_gamma_l2_lambda": "loss.gamma_l2_lambda",
    "default_num_steps": "sample.num_steps",
}
_MROPE = ("mrope_text_dim", "mrope_img_h_dim", "mrope_img_w_dim")  # -> model.mrope_split
_SWITCHED = {"repa_enabled": ("repa_lambda", "loss.repa_lambda"),  # off -> our lambda 0
             "freq_loss_enabled": ("freq_loss_lambda", "loss.freq_lambda")}
_SOLVERS = {"euler": "euler", "heun": "heun", "dpm_pp": "dpmpp_2m"}  # original -> ours (docs/deviations.md S2)
# Architecture choices our network implements; any other value cannot be imported.
_FIXED = {"in_channels": 3, "out_channels": 3, "gate_type": "headwise", "gate_activation": "sigmoid",
          "gate_bias": False, "adaln_num_params": 6}


class OriginalConfigError(ValueError):
  """The original config describes a network ours does not implement."""


def _get(config: ml_collections.ConfigDict, dotted: str) -> Any:
  section, field = dotted.split(".")
  value = config[section][field]
  return list(value) if isinstance(value, tuple) else value


def _set(config: ml_collections.ConfigDict, dotted: str, value: Any) -> None:
  section, field = dotted.split(".")
  config[section][field] = value  # ConfigDict rejects a value of the wrong type


def config_from_original(original: Mapping[str, Any], base: ml_collections.ConfigDict
                         ) -> tuple[ml_collections.ConfigDict, list[str]]:
  """(a copy of `base`, e.g. a preset, with the original's fields applied; notes naming the fields that do
  not map)."""
  original = dict(original)
  wrong = {k: (original[k], v) for k, v in _FIXED.items() if k in original and original[k] != v}
  if wrong:
    raise OriginalConfigError("the original config describes a network this port does not implement: " + ", ".join(
        f"{k}={got!r} (supported: {want!r})" for k, (got, want) in wrong.items()))
  config = copy.deepcopy(base)
  if original.get("bottleneck_dim") is None and "patch_size" in original:
    original["bottleneck_dim"] = original["patch_size"] ** 2 // 4  # the original's __post_init__
  used = set(_FIXED)
  for field, ours in _SAME_MEANING.items():
    if original.get(field) is not None:
      _set(config, ours, original[field])
      used.add(field)
  if all(k in original for k in _MROPE):
    config.model.mrope_split = tuple(int(original[k]) for k in _MROPE)
    used.update(_MROPE)
  for switch, (weight, ours) in _SWITCHED.items():
    if switch in original or weight in original:
      enabled = bool(original.get(switch, True))
      _set(config, ours, float(original.get(weight, _get(config, ours))) if enabled else 0.0)
      used.update((switch, weight))
  if original.get("default_sampler_method") in _SOLVERS:
    config.sample.solver = _SOLVERS[original["default_sampler_method"]]
    used.add("default_sampler_method")
  if "head_dim" in original:  # derived by the original's validator; ours derives it too
    used.add("head_dim")
    if original["head_dim"] != config.model.hidden_dim // config.model.num_heads:
      raise OriginalConfigError(f"head_dim={original['head_dim']} is not hidden_dim / num_heads = "
                                f"{config.model.hidden_dim // config.model.num_heads}")
  unmapped = [f"{k}={original[k]!r}" for k in original if k not in used]
  notes = [("original config fields not mapped (no counterpart here, or unused by the original): "
            f"{', '.join(unmapped)}")] if unmapped else []
  return config, notes


def original_config(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """Our config as the original's `PixelHDMConfig` fields (what `config_from_original` reads back)."""
  original = {field: _get(config, ours) for field, ours in _SAME_MEANING.items()}
  original.update(zip(_MROPE, config.model.mrope_split))
  for switch, (weight, ours) in _SWITCHED.items():
    original[switch], original[weight] = _get(config, ours) > 0, _get(config, ours)
  inverse = {ours: theirs for theirs, ours in _SOLVERS.items()}
  if config.sample.solver in inverse:
    original["default_sampler_method"] = inverse[config.sample.solver]
  original["head_dim"] = config.model.hidden_dim // config.model.num_heads
  original.update(_FIXED)
  return original
