"""Meta's official DINOv3 `.pth` state dicts, renamed to the Hugging Face names that `dinov3.py` loads.

The fused qkv is split into q, k, v; the masked k bias, `bias_mask` and the recomputable RoPE periods are
dropped; the architecture is read from the tensor shapes. torch is imported only to read a `.pth`, with
`weights_only=True`.
"""

from __future__ import annotations

import pathlib
import re
from typing import Any, Mapping

import numpy as np

from pixelhdm_jax.encoders.hf_checkpoint import EncoderCheckpointError

MASK_TOKEN = "embeddings.mask_token"
_META_RENAMES = (
    (r"cls_token", "embeddings.cls_token"),
    (r"mask_token", MASK_TOKEN),
    (r"storage_tokens", "embeddings.register_tokens"),
    (r"patch_embed\.proj\.", "embeddings.patch_embeddings."),
    (r"blocks\.(\d+)\.attn\.proj\.", r"layer.\1.attention.o_proj."),
    (r"blocks\.(\d+)\.ls(\d)\.gamma", r"layer.\1.layer_scale\2.lambda1"),
    (r"blocks\.(\d+)\.mlp\.fc1\.", r"layer.\1.mlp.up_proj."),
    (r"blocks\.(\d+)\.mlp\.fc2\.", r"layer.\1.mlp.down_proj."),
    (r"blocks\.(\d+)\.mlp\.w1\.", r"layer.\1.mlp.gate_proj."),
    (r"blocks\.(\d+)\.mlp\.w2\.", r"layer.\1.mlp.up_proj."),
    (r"blocks\.(\d+)\.mlp\.w3\.", r"layer.\1.mlp.down_proj."),
    (r"blocks\.(\d+)\.norm(\d)\.", r"layer.\1.norm\2."),
)
_META_DROPPED = re.compile(r"rope_embed\.periods|blocks\.\d+\.attn\.qkv\.bias_mask")


def meta_to_hf(state: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Renames a Meta DINOv3 state dict to Hugging Face names; unknown names pass through unchanged."""
  out = {}
  for name, value in state.items():
    qkv = re.fullmatch(r"blocks\.(\d+)\.attn\.qkv\.(weight|bias)", name)
    if qkv:
      layer, kind = qkv.groups()
      for proj, part in zip(("q_proj", "k_proj", "v_proj"), np.split(value, 3, axis=0)):
        if not (kind == "bias" and proj == "k_proj"):
          out[f"layer.{layer}.attention.{proj}.{kind}"] = part
      continue
    if _META_DROPPED.fullmatch(name):
      continue
    for pattern, replacement in _META_RENAMES:
      if re.match(pattern, name):
        name = re.sub(pattern, replacement, name, count=1)
        break
    out[name] = value
  return out


def arch_fields(state: Mapping[str, np.ndarray], where: str, rope_theta: float) -> dict[str, Any]:
  """The `DINOv3Arch` fields of a Meta state dict, from its tensor shapes (heads from the RoPE periods, which
  must be those of `rope_theta`)."""
  required = ("cls_token", "patch_embed.proj.weight", "rope_embed.periods", "blocks.0.attn.qkv.weight")
  absent = [name for name in required if name not in state]
  if absent:
    raise EncoderCheckpointError(f"wrong architecture in {where}: not a DINOv3 ViT state dict (missing {absent})")
  hidden = state["cls_token"].shape[-1]
  head_dim = 4 * state["rope_embed.periods"].shape[0]
  periods = rope_theta ** (np.arange(head_dim // 4) * 4 / head_dim)
  if not np.allclose(state["rope_embed.periods"], periods, rtol=1e-4):
    raise EncoderCheckpointError(f"rope_embed.periods in {where} are not those of RoPE base {rope_theta}")
  gated = "blocks.0.mlp.w1.weight" in state
  up = "blocks.0.mlp.w1" if gated else "blocks.0.mlp.fc1"
  blocks = {int(m.group(1)) for m in (re.match(r"blocks\.(\d+)\.", name) for name in state) if m}
  return dict(hidden_size=hidden, num_layers=max(blocks) + 1, num_heads=hidden // head_dim,
              intermediate_size=state[up + ".weight"].shape[0], patch_size=state["patch_embed.proj.weight"].shape[-1],
              num_register_tokens=state["storage_tokens"].shape[1] if "storage_tokens" in state else 0,
              rope_theta=rope_theta, query_bias="blocks.0.attn.qkv.bias" in state,
              value_bias="blocks.0.attn.qkv.bias" in state, proj_bias="blocks.0.attn.proj.bias" in state,
              mlp_bias=up + ".bias" in state, gated_mlp=gated, hidden_act="silu" if gated else "gelu")


def read_meta_checkpoint(path: pathlib.Path) -> dict[str, np.ndarray]:
  """A Meta `.pth` state dict as float32 numpy arrays (torch needed, loaded with `weights_only=True`)."""
  if not path.is_file():
    raise EncoderCheckpointError(f"DINOv3 checkpoint file {str(path)!r} does not exist")
  try:
    import torch
  except ImportError as error:
    raise EncoderCheckpointError(f"reading {str(path)!r} needs torch (pip install 'pixelhdm_jax[torch]'), or use "
                                 "a Hugging Face directory with safetensors") from error
  state = torch.load(path, map_location="cpu", weights_only=True)
  return {name: tensor.float().numpy() for name, tensor in state.items()}
