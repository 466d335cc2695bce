"""The frozen REPA teacher: DINOv3 patch features of the clean training images, built from `config.dino`.

`build_dino_teacher(config)` returns the teacher and its float32 params (host arrays; on the default device for
the random sources), which the caller places once
(`place_frozen`) and drops; `features(params, images)` is pure and jittable: the train step calls it inside
its own `jax.jit` with the placed params as an argument. Images (B, H, W, 3) in [-1, 1], H and W multiples of the
patch size (16), give (B, H/16 * W/16, C) tokens in raster order, the grid of the PixelHDM patch tokens.
"""

from __future__ import annotations

from typing import Any

import jax
import ml_collections
import numpy as np

from pixelhdm_jax.encoders.dinov3 import DINOV3_VITB16, DINOv3Arch, DINOv3ViT, abstract_params, load_dinov3
from pixelhdm_jax.encoders.hf_checkpoint import resolve_checkpoint
from pixelhdm_jax.encoders.transformer import RANDOM_SOURCES, random_params
from pixelhdm_jax.errors import ConfigError
from pixelhdm_jax.models.layers import compute_dtype

DINOV3_FILES = "DINOv3 ViT-B/16 (a Hugging Face directory with config.json and *.safetensors, or Meta's .pth)"
RANDOM_DINOV3_SEED = 1
TINY_DINOV3 = DINOv3Arch(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=128, patch_size=16,
                         num_register_tokens=4)


class DinoTeacher:
  """Frozen DINOv3 ViT; its params are an argument of `features`."""

  def __init__(self, module: DINOv3ViT):
    self.module = module

  @property
  def feature_dim(self) -> int:
    return self.module.arch.hidden_size

  def features(self, params: Any, images: jax.Array) -> jax.Array:
    """Pure and jittable: images (B, H, W, 3) in [-1, 1] -> normed patch tokens (B, L, C), no gradient."""
    return self.module.apply({"params": params}, images)

  def global_features(self, params: Any, images: jax.Array) -> jax.Array:
    """Pure and jittable: images (B, H, W, 3) in [-1, 1] -> the normed CLS token (B, C), for FD-DINOv3."""
    return self.module.apply({"params": params}, images, cls_only=True)

  def abstract_params(self) -> Any:
    """Param shapes with their logical axes, for `parallel.place_params`."""
    return abstract_params(self.module)

  def check_repa_grid(self, patch_size: int) -> None:
    """iREPA aligns each patch token with the teacher's token of the same pixels: ConfigError unless the network's
    `model.patch_size` is the teacher's patch (inference and conversions do not need this)."""
    teacher_patch = self.module.arch.patch_size
    if patch_size != teacher_patch:
      raise ConfigError(f"model.patch_size={patch_size} with iREPA on: the DINOv3 teacher's patch tokens are "
                        f"{teacher_patch} px, so iREPA aligns {teacher_patch}-px patch tokens only: set "
                        f"model.patch_size={teacher_patch}, or loss.repa_lambda=0")


def build_dino_teacher(config: ml_collections.ConfigDict, *,
                       with_params: bool = True) -> tuple[DinoTeacher, Any | None]:
  """The teacher of `config.dino` and its float32 params; attention runs with `config.model.attention`.

  `dino.source`: pretrained (loaded from `dino.path`), random (a tiny ViT) or random_full (ViT-B/16's shapes,
  for benchmarks and AOT compiles), both from a fixed seed; `with_params=False` (random sources only) skips
  creating the params (None).
  """
  d = config.dino
  dtype = compute_dtype(d.compute_dtype)
  kernel = config.model.attention
  if d.source in RANDOM_SOURCES:
    arch = TINY_DINOV3 if d.source == "random" else DINOV3_VITB16
    module = DINOv3ViT(arch, kernel, dtype)
    images = np.zeros((1, arch.patch_size, arch.patch_size, 3), np.float32)
    params = random_params(module, RANDOM_DINOV3_SEED, images) if with_params else None
    return DinoTeacher(module), params
  if not with_params:
    raise ConfigError("a teacher without params (AOT compiles) needs dino.source=random or random_full")
  module, params = load_dinov3(resolve_checkpoint(d, "dino", DINOV3_FILES), kernel, dtype)
  return DinoTeacher(module), params
