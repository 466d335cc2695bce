"""The original's network fields read off a bare state dict's tensor shapes, for a checkpoint that holds no config.

Every width, depth and head count of the network shows in some tensor's shape (Linear weights are (out, in),
docs/original.md); mRoPE's split of head_dim and theta have no tensor and come from the base config, which must
fit. The result uses the original's field names, so `config_from_original` applies it like a stored config.
"""

from __future__ import annotations

import math
import re
from typing import Any, Mapping

import ml_collections

from pixelhdm_jax.weights.original_config import OriginalConfigError

_BLOCK = re.compile(r"^(patch_blocks|pixel_blocks)\.(\d+)\.")
_FLAGS = ("--config=configs/base.py:PRESET --config.model.hidden_dim=... (and the other model fields of the "
          "checkpoint's network)")


def _shape(state_dict: Mapping[str, Any], *names: str) -> tuple[int, ...]:
  for name in names:  # canonical names first, then the original's aliases
    if name in state_dict:
      return tuple(state_dict[name].shape)
  raise OriginalConfigError(f"the state dict holds no {names[0]}, so its network cannot be read off its shapes: "
                            f"describe it with {_FLAGS}")


def original_fields_from_shapes(state_dict: Mapping[str, Any], base: ml_collections.ConfigDict) -> dict[str, Any]:
  """The original's config fields of the network in `state_dict`; mRoPE's split and theta from `base`."""
  bottleneck, patch_in = _shape(state_dict, "patch_embed.proj_down.weight")
  hidden = _shape(state_dict, "patch_embed.proj_up.weight")[0]
  pixel_dim = _shape(state_dict, "pixel_embed.proj.weight")[0]
  time_embed_dim = _shape(state_dict, "time_embed.mlp.0.weight")[1]
  attention = "patch_blocks.0.attention."
  num_heads = _shape(state_dict, attention + "gate.proj.weight", attention + "gate_proj.weight")[0]
  head_dim = _shape(state_dict, attention + "q_norm.weight")[0]
  kv_rows = _shape(state_dict, attention + "qkv_proj.k_proj.weight", attention + "k_proj.weight")[0]
  mlp_rows = _shape(state_dict, "patch_blocks.0.mlp.gate_proj.weight")[0]
  layers = {"patch_blocks": set(), "pixel_blocks": set()}
  for name in state_dict:
    match = _BLOCK.match(name)
    if match:
      layers[match.group(1)].add(int(match.group(2)))
  split = tuple(base.model.mrope_split)
  if sum(split) != head_dim:
    raise OriginalConfigError(
        f"the checkpoint's attention heads have head_dim={head_dim} but the base config's model.mrope_split={split} "
        f"sums to {sum(split)}, and the split has no tensor to read it from: add --config.model.mrope_split="
        f"'({head_dim // 4}, {head_dim * 3 // 8}, {head_dim * 3 // 8})' (the original's proportions; use the "
        "training run's if it set others)")
  return {
      "hidden_dim": hidden, "pixel_dim": pixel_dim, "patch_size": math.isqrt(patch_in // 3),
      "bottleneck_dim": bottleneck, "patch_layers": len(layers["patch_blocks"]),
      "pixel_layers": len(layers["pixel_blocks"]), "num_heads": num_heads, "num_kv_heads": kv_rows // head_dim,
      "head_dim": head_dim, "mlp_ratio": mlp_rows / hidden, "time_embed_dim": time_embed_dim,
      "text_hidden_size": hidden,  # the original feeds the text states unprojected
      "repa_align_layer": min(base.model.repa_align_layer, len(layers["patch_blocks"])),
      **dict(zip(("mrope_text_dim", "mrope_img_h_dim", "mrope_img_w_dim"), split)),
  }
