"""DINOv3 ViT weights into `DINOv3ViT`: a Hugging Face directory or Meta's official `.pth`.

Hugging Face names (`DINOv3ViTModel`, `field.md` §4.3) are canonical; a Meta state dict is renamed to them
first (the fused qkv split into q, k, v; the masked k bias, `bias_mask` and the recomputable RoPE periods
dropped) and its architecture is read from the tensor shapes. The mask token (masked pre-training only)
is never needed. torch is imported only to read a `.pth`, with `weights_only=True`.
"""

from __future__ import annotations

import pathlib
import re
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from pixelhdm_jax.encoders.dinov3 import ACTIVATIONS, DINOv3Arch, DINOv3ViT
from pixelhdm_jax.models.layers import Dtype, abstract_key
from pixelhdm_jax.weights.hf import CheckpointError, TensorRule, load_params, open_safetensors, read_config

MODEL_TYPE = "dinov3_vit"
ARCHITECTURES = ("DINOv3ViTModel", "DINOv3ViTBackbone")
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


def tensor_rules(arch: DINOv3Arch) -> list[TensorRule]:
  """Flax path <- Hugging Face name for every parameter of `DINOv3ViT(arch)`."""
  rules = [TensorRule(("patch_embeddings", "kernel"), "embeddings.patch_embeddings.weight", "conv"),
           TensorRule(("patch_embeddings", "bias"), "embeddings.patch_embeddings.bias"),
           TensorRule(("cls_token",), "embeddings.cls_token"),
           TensorRule(("register_tokens",), "embeddings.register_tokens"),
           TensorRule(("norm", "scale"), "norm.weight"), TensorRule(("norm", "bias"), "norm.bias")]
  layer = "layer.{i}."

  def linear(path: tuple[str, ...], name: str, bias: bool) -> list[TensorRule]:
    found = [TensorRule(("layer",) + path + ("kernel",), layer + name + ".weight", "linear")]
    return found + ([TensorRule(("layer",) + path + ("bias",), layer + name + ".bias")] if bias else [])

  for norm in ("norm1", "norm2"):
    rules += [TensorRule(("layer", norm, "scale"), layer + norm + ".weight"),
              TensorRule(("layer", norm, "bias"), layer + norm + ".bias")]
  for scale in ("layer_scale1", "layer_scale2"):
    rules.append(TensorRule(("layer", scale, "lambda1"), layer + scale + ".lambda1"))
  for proj, bias in (("q_proj", arch.query_bias), ("k_proj", arch.key_bias), ("v_proj", arch.value_bias),
                     ("o_proj", arch.proj_bias)):
    rules += linear(("attention", proj), f"attention.{proj}", bias)
  for proj in ("gate_proj", "up_proj", "down_proj") if arch.gated_mlp else ("up_proj", "down_proj"):
    rules += linear(("mlp", proj), f"mlp.{proj}", arch.mlp_bias)
  return rules


def arch_from_config(config: dict[str, Any]) -> DINOv3Arch:
  """The `DINOv3Arch` of a Hugging Face `config.json`."""
  patch = config.get("patch_size", 16)
  patch_h, patch_w = (patch, patch) if isinstance(patch, int) else patch
  act = config.get("hidden_act", "gelu")
  if patch_h != patch_w or config.get("num_channels", 3) != 3 or act not in ACTIVATIONS:
    raise CheckpointError(f"unsupported DINOv3 config: patch_size={patch}, num_channels="
                          f"{config.get('num_channels')}, hidden_act={act!r} (supported: square patches, "
                          f"3 channels, hidden_act in {sorted(ACTIVATIONS)})")
  return DINOv3Arch(hidden_size=config["hidden_size"], num_layers=config["num_hidden_layers"],
                    num_heads=config["num_attention_heads"], intermediate_size=config["intermediate_size"],
                    patch_size=patch_h, num_register_tokens=config.get("num_register_tokens", 0),
                    layer_norm_eps=config.get("layer_norm_eps", 1e-5), rope_theta=config.get("rope_theta", 100.0),
                    query_bias=config.get("query_bias", True), key_bias=config.get("key_bias", False),
                    value_bias=config.get("value_bias", True), proj_bias=config.get("proj_bias", True),
                    mlp_bias=config.get("mlp_bias", True), gated_mlp=config.get("use_gated_mlp", False),
                    hidden_act=act)


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


def arch_from_meta(state: Mapping[str, np.ndarray], where: str) -> DINOv3Arch:
  """The architecture of a Meta state dict, from its tensor shapes (heads from the RoPE periods)."""
  required = ("cls_token", "patch_embed.proj.weight", "rope_embed.periods", "blocks.0.attn.qkv.weight")
  absent = [name for name in required if name not in state]
  if absent:
    raise CheckpointError(f"wrong architecture in {where}: not a DINOv3 ViT state dict (missing {absent})")
  hidden = state["cls_token"].shape[-1]
  head_dim = 4 * state["rope_embed.periods"].shape[0]
  gated = "blocks.0.mlp.w1.weight" in state
  up = "blocks.0.mlp.w1" if gated else "blocks.0.mlp.fc1"
  blocks = {int(m.group(1)) for m in (re.match(r"blocks\.(\d+)\.", name) for name in state) if m}
  arch = DINOv3Arch(
      hidden_size=hidden, num_layers=max(blocks) + 1, num_heads=hidden // head_dim,
      intermediate_size=state[up + ".weight"].shape[0],
      patch_size=state["patch_embed.proj.weight"].shape[-1],
      num_register_tokens=state["storage_tokens"].shape[1] if "storage_tokens" in state else 0,
      query_bias="blocks.0.attn.qkv.bias" in state, value_bias="blocks.0.attn.qkv.bias" in state,
      proj_bias="blocks.0.attn.proj.bias" in state, mlp_bias=up + ".bias" in state, gated_mlp=gated,
      hidden_act="silu" if gated else "gelu")
  periods = arch.rope_theta ** (np.arange(head_dim // 4) * 4 / head_dim)
  if not np.allclose(state["rope_embed.periods"], periods, rtol=1e-4):
    raise CheckpointError(f"rope_embed.periods in {where} are not those of RoPE base {arch.rope_theta}")
  return arch


def read_meta_checkpoint(path: pathlib.Path) -> dict[str, np.ndarray]:
  """A Meta `.pth` state dict as float32 numpy arrays (torch needed, loaded with `weights_only=True`)."""
  if not path.is_file():
    raise CheckpointError(f"DINOv3 checkpoint file {str(path)!r} does not exist")
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError as error:
    raise CheckpointError(f"reading {str(path)!r} needs torch (pip install 'pixelhdm_jax[torch]'), or use a "
                          "Hugging Face directory with safetensors") from error
  state = torch.load(path, map_location="cpu", weights_only=True)
  return {name: tensor.float().numpy() for name, tensor in state.items()}


def abstract_params(module: DINOv3ViT) -> Any:
  """Parameter shapes of `module` (no memory), with their logical-axis boxes."""
  p = module.arch.patch_size
  return jax.eval_shape(module.init, abstract_key(), jax.ShapeDtypeStruct((1, p, p, 3), jnp.float32))["params"]


def load_dinov3(path: pathlib.Path | str, kernel: str = "xla",
                dtype: Dtype = jnp.float32) -> tuple[DINOv3ViT, dict[str, Any]]:
  """The ViT of a Hugging Face directory or a Meta `.pth` file, and its float32 params (host arrays)."""
  path = pathlib.Path(path)
  if path.suffix == ".pth":
    meta = read_meta_checkpoint(path)
    arch, source = arch_from_meta(meta, repr(str(path))), meta_to_hf(meta)
  else:
    arch = arch_from_config(read_config(path, MODEL_TYPE, ARCHITECTURES))
    source = open_safetensors(path)
  module = DINOv3ViT(arch, kernel, dtype)
  rules = tensor_rules(arch)
  known = {n for rule in rules for n in rule.names(arch.num_layers)}
  params = load_params(abstract_params(module), rules, source, num_layers=arch.num_layers, known=known,
                       where=repr(str(path)),
                       rename=lambda name: None if name == MASK_TOKEN else re.sub(r"^model\.layer\.", "layer.", name))
  return module, params
