"""DINOv3 ViT (the REPA teacher; ViT-B/16 by default, any size by its config) in Flax Linen.

[-1, 1] images -> ImageNet normalisation -> patch conv -> [CLS, registers, patches] -> N x [LayerNorm ->
attention (2-D rotate-half RoPE on patch tokens only) -> LayerScale -> residual; LayerNorm -> MLP ->
LayerScale -> residual] -> final LayerNorm -> patch tokens, as transformers' `DINOv3ViTModel`. RoPE uses patch-centre
coordinates normalised to [-1, 1] per axis, without the training-time jitter, so any H, W that are
multiples of the patch size work. Params are float32 (placed for a run in the compute dtype:
`transformer.place_frozen`) and named like Hugging Face's `DINOv3ViTModel`;
`load_dinov3` reads a local Hugging Face directory, or Meta's official `.pth` renamed to those names first
(`dinov3_meta.py`). The mask token (masked pre-training only) is never needed.
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
import re
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from pixelhdm_jax.encoders import dinov3_meta
from pixelhdm_jax.encoders.hf_checkpoint import (
  EncoderCheckpointError,
  TensorRule,
  load_params,
  open_safetensors,
  read_config,
)
from pixelhdm_jax.encoders.transformer import apply_rotate_half, layer_stack
from pixelhdm_jax.kernels.attention import attention
from pixelhdm_jax.models.layers import ACTIVATION_AXES, Dtype, abstract_key, dense

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
ACTIVATIONS = {"gelu": lambda x: nn.gelu(x, approximate=False), "silu": nn.silu}


@dataclasses.dataclass(frozen=True)
class DINOv3Arch:
  """The architecture numbers of a DINOv3 ViT checkpoint; defaults are ViT-B/16 (LVD-1689M)."""
  hidden_size: int = 768
  num_layers: int = 12
  num_heads: int = 12
  intermediate_size: int = 3072
  patch_size: int = 16
  num_register_tokens: int = 4
  layer_norm_eps: float = 1e-5
  rope_theta: float = 100.0
  query_bias: bool = True
  key_bias: bool = False
  value_bias: bool = True
  proj_bias: bool = True
  mlp_bias: bool = True
  gated_mlp: bool = False
  hidden_act: str = "gelu"

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_heads


DINOV3_VITB16 = DINOv3Arch()  # PixelHDM's REPA teacher


def rope_tables(grid_h: int, grid_w: int, head_dim: int, theta: float) -> tuple[jax.Array, jax.Array]:
  """(cos, sin) (h*w, head_dim): angles 2*pi*coord*theta^(-4k/head_dim) for y then x, tiled twice."""
  inv_freq = 1.0 / theta ** (jnp.arange(head_dim // 4, dtype=jnp.float32) * 4 / head_dim)
  ys = (jnp.arange(grid_h, dtype=jnp.float32) + 0.5) / grid_h * 2 - 1
  xs = (jnp.arange(grid_w, dtype=jnp.float32) + 0.5) / grid_w * 2 - 1
  coords = jnp.stack(jnp.meshgrid(ys, xs, indexing="ij"), axis=-1).reshape(-1, 2)
  angles = (2 * math.pi * coords[:, :, None] * inv_freq).reshape(coords.shape[0], -1)
  angles = jnp.tile(angles, (1, 2))
  return jnp.cos(angles), jnp.sin(angles)


def _layer_norm(arch: DINOv3Arch, dtype: Dtype, name: str) -> nn.LayerNorm:
  return nn.LayerNorm(arch.layer_norm_eps, dtype=dtype, param_dtype=jnp.float32, name=name,
                      scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("norm",)),
                      bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("norm",)))


class LayerScale(nn.Module):
  """x * lambda1, one learned scale per channel."""
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    scale = self.param("lambda1", nn.with_logical_partitioning(nn.initializers.ones, ("embed",)),
                       (x.shape[-1],), jnp.float32)
    return x * scale.astype(self.dtype)


class DINOv3Attention(nn.Module):
  arch: DINOv3Arch
  kernel: str = "xla"
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, rope: tuple[jax.Array, jax.Array]) -> jax.Array:
    a = self.arch
    batch, length, width = x.shape
    heads = {}
    for proj, bias in (("q_proj", a.query_bias), ("k_proj", a.key_bias), ("v_proj", a.value_bias)):
      y = dense(width, ("embed", "q_heads"), name=proj, dtype=self.dtype, use_bias=bias)(x)
      heads[proj] = y.reshape(batch, length, a.num_heads, a.head_dim)
    q, k, v = heads["q_proj"], heads["k_proj"], heads["v_proj"]
    prefix = length - rope[0].shape[0]
    q = jnp.concatenate([q[:, :prefix], apply_rotate_half(q[:, prefix:], *rope)], axis=1)
    k = jnp.concatenate([k[:, :prefix], apply_rotate_half(k[:, prefix:], *rope)], axis=1)
    out = attention(q, k, v, None, kernel=self.kernel).reshape(batch, length, width)
    return dense(width, ("q_heads", "embed"), name="o_proj", dtype=self.dtype, use_bias=a.proj_bias)(out)


class DINOv3MLP(nn.Module):
  """up -> act -> down, or the gated `down(act(gate(x)) * up(x))` of the largest DINOv3 models."""
  arch: DINOv3Arch
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    a = self.arch
    act = ACTIVATIONS[a.hidden_act]
    up = dense(a.intermediate_size, ("embed", "mlp"), name="up_proj", dtype=self.dtype, use_bias=a.mlp_bias)(x)
    if a.gated_mlp:
      gate = dense(a.intermediate_size, ("embed", "mlp"), name="gate_proj", dtype=self.dtype,
                   use_bias=a.mlp_bias)(x)
      hidden = act(gate) * up
    else:
      hidden = act(up)
    return dense(x.shape[-1], ("mlp", "embed"), name="down_proj", dtype=self.dtype, use_bias=a.mlp_bias)(hidden)


class DINOv3Layer(nn.Module):
  """One ViT block as a scan step: x -> (x, None)."""
  arch: DINOv3Arch
  kernel: str = "xla"
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, rope: tuple[jax.Array, jax.Array]):
    h = _layer_norm(self.arch, self.dtype, "norm1")(x)
    h = DINOv3Attention(self.arch, self.kernel, self.dtype, name="attention")(h, rope)
    x = x + LayerScale(self.dtype, name="layer_scale1")(h)
    h = DINOv3MLP(self.arch, self.dtype, name="mlp")(_layer_norm(self.arch, self.dtype, "norm2")(x))
    x = x + LayerScale(self.dtype, name="layer_scale2")(h)
    return nn.with_logical_constraint(x, ACTIVATION_AXES), None


class DINOv3ViT(nn.Module):
  """Images (B, H, W, 3) in [-1, 1] -> normed patch tokens (B, H/p * W/p, C), raster order, no gradient; with
  `cls_only=True` the normed CLS token (B, C) instead (transformers' `pooler_output`), the image's global feature."""
  arch: DINOv3Arch = DINOV3_VITB16
  kernel: str = "xla"
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array, cls_only: bool = False) -> jax.Array:
    a = self.arch
    batch, height, width, _ = images.shape
    if height % a.patch_size or width % a.patch_size:
      raise ValueError(f"image size {height}x{width} is not a multiple of the patch size {a.patch_size}")
    grid_h, grid_w = height // a.patch_size, width // a.patch_size
    x = ((images.astype(jnp.float32) + 1) / 2 - jnp.array(IMAGENET_MEAN)) / jnp.array(IMAGENET_STD)
    x = nn.Conv(a.hidden_size, (a.patch_size, a.patch_size), strides=a.patch_size, padding="VALID",
                dtype=self.dtype, param_dtype=jnp.float32, name="patch_embeddings",
                kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(),
                                                         (None, None, "rgb", "embed")),
                bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)))(x.astype(self.dtype))
    x = x.reshape(batch, grid_h * grid_w, a.hidden_size)
    token_init = nn.with_logical_partitioning(nn.initializers.normal(0.02), (None, None, "embed"))
    cls = self.param("cls_token", token_init, (1, 1, a.hidden_size), jnp.float32)
    registers = self.param("register_tokens", token_init, (1, a.num_register_tokens, a.hidden_size), jnp.float32)
    prefix = jnp.concatenate([cls, registers], axis=1).astype(self.dtype)
    x = jnp.concatenate([jnp.broadcast_to(prefix, (batch,) + prefix.shape[1:]), x], axis=1)
    x = nn.with_logical_constraint(x, ACTIVATION_AXES)
    rope = rope_tables(grid_h, grid_w, a.head_dim, a.rope_theta)
    layers = layer_stack(DINOv3Layer, a.num_layers, 1, "layer", arch=a, kernel=self.kernel, dtype=self.dtype)
    x, _ = layers(x, rope)
    x = _layer_norm(a, self.dtype, "norm")(x)
    return jax.lax.stop_gradient(x[:, 0] if cls_only else x[:, 1 + a.num_register_tokens:])


MODEL_TYPE = "dinov3_vit"
ARCHITECTURES = ("DINOv3ViTModel", "DINOv3ViTBackbone")


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
    raise EncoderCheckpointError(f"unsupported DINOv3 config: patch_size={patch}, num_channels="
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


def abstract_params(module: DINOv3ViT) -> Any:
  """Parameter shapes of `module` (no memory), with their logical-axis boxes."""
  p = module.arch.patch_size
  return jax.eval_shape(module.init, abstract_key(), jax.ShapeDtypeStruct((1, p, p, 3), jnp.float32))["params"]


def load_dinov3(path: pathlib.Path | str, kernel: str = "xla",
                dtype: Dtype = jnp.float32) -> tuple[DINOv3ViT, dict[str, Any]]:
  """The ViT of a Hugging Face directory or a Meta `.pth` file, and its float32 params (host arrays)."""
  path = pathlib.Path(path)
  if path.suffix == ".pth":
    meta = dinov3_meta.read_meta_checkpoint(path)
    arch = DINOv3Arch(**dinov3_meta.arch_fields(meta, repr(str(path)), DINOv3Arch.rope_theta))
    source = dinov3_meta.meta_to_hf(meta)
  else:
    arch = arch_from_config(read_config(path, MODEL_TYPE, ARCHITECTURES))
    source = open_safetensors(path)
  module = DINOv3ViT(arch, kernel, dtype)
  rules = tensor_rules(arch)
  known = {n for rule in rules for n in rule.names(arch.num_layers)}
  params = load_params(abstract_params(module), rules, source, num_layers=arch.num_layers, known=known,
                       where=repr(str(path)), rename=_rename)
  return module, params


def _rename(name: str) -> str | None:
  """Hugging Face names of a backbone checkpoint (`model.layer.*`) as the model's; the mask token skipped."""
  return None if name == dinov3_meta.MASK_TOKEN else re.sub(r"^model\.layer\.", "layer.", name)
