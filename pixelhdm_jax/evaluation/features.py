"""The feature extractors of an evaluation: InceptionV3 pool features (FID) and DINOv3 CLS tokens (FD-DINOv3).

`Extractors(images)` takes uint8 images (N, H, W, 3), runs both networks in one compiled program per batch
shape with the batch split over the mesh's batch axes, and returns host float32 features by name. The
Inception weights come from `evaluation.inception_weights` (random, and labelled so, when empty); the DINOv3
teacher is the one the run already holds.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from pixelhdm_jax import parallel
from pixelhdm_jax.data.images import images_to_model_range
from pixelhdm_jax.encoders.teacher import DinoTeacher, build_dino_teacher
from pixelhdm_jax.encoders.transformer import place_frozen
from pixelhdm_jax.evaluation import inception

INCEPTION = "inception"
DINOV3 = "dinov3"
DINOV3_SIZE = 224  # DINOv3 reads the images at its pre-training resolution, as FD-DINOv2 does at 224


def dinov3_global_features(teacher: DinoTeacher, params: Any, images: jax.Array) -> jax.Array:
  """uint8 images (B, H, W, 3) -> the teacher's CLS tokens (B, C) at 224x224 (bicubic, antialiased), float32."""
  x = images_to_model_range(images.astype(jnp.float32))
  x = jax.image.resize(x, (x.shape[0], DINOV3_SIZE, DINOV3_SIZE, 3), "bicubic")
  return teacher.global_features(params, jnp.clip(x, -1.0, 1.0)).astype(jnp.float32)


@dataclasses.dataclass(frozen=True)
class ExtractorInfo:
  """What produced the features, for the reference key and the result file."""
  inception_weights: str  # the file or URL, or "random"
  inception_resize: str
  dinov3: str | None  # the teacher's source and path, None without a teacher

  @property
  def random_inception(self) -> bool:
    return self.inception_weights == "random"


class Extractors:
  """Both feature networks, jitted together; batches are padded to a multiple of the batch devices."""

  def __init__(self, config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh, teacher: DinoTeacher | None,
               dino_params: Any):
    e = config.evaluation
    self.info = ExtractorInfo(e.inception_weights or "random", e.inception_resize,
                              f"{config.dino.source}:{config.dino.path}" if teacher is not None else None)
    self.mesh = mesh
    self.rules = parallel.logical_rules(config.mesh)
    self.batch_size = e.batch_size
    replicated = NamedSharding(mesh, PartitionSpec())
    params = inception.load_inception(e.inception_weights or None)  # None: seeded random weights
    self.params = {INCEPTION: jax.device_put(params, replicated)}
    if teacher is not None:
      self.params[DINOV3] = dino_params
    self._features = jax.jit(functools.partial(_features, teacher=teacher, resize=e.inception_resize),
                             out_shardings=replicated)

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh) -> Extractors:
    """Extractors with the teacher of `config.dino` built and placed here (outside a training run)."""
    teacher, host_params = build_dino_teacher(config)
    return cls(config, mesh, teacher, place_frozen(teacher, host_params, mesh, parallel.logical_rules(config.mesh)))

  @property
  def names(self) -> tuple[str, ...]:
    return tuple(self.params)

  def __call__(self, images: np.ndarray) -> dict[str, np.ndarray]:
    """Features {name: (N, C) float32} of uint8 images (N, H, W, 3), `evaluation.batch_size` at a time; every
    batch is padded to that size (rounded up to the batch devices), so an image size compiles once."""
    sharding = parallel.batch_sharding(self.mesh, self.rules)
    multiple = parallel.batch_devices(self.mesh, self.rules)
    step = -(-self.batch_size // multiple) * multiple
    chunks = {name: [] for name in self.names}
    for start in range(0, len(images), step):
      batch = np.asarray(images[start:start + step], np.uint8)
      count = len(batch)
      padded = np.concatenate([batch, np.zeros((step - count, *batch.shape[1:]), np.uint8)])
      placed = jax.make_array_from_callback(padded.shape, sharding, lambda index, x=padded: x[index])
      with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
        out = self._features(self.params, placed)
      for name, value in jax.device_get(out).items():
        chunks[name].append(np.asarray(value)[:count])
    return {name: np.concatenate(parts) for name, parts in chunks.items()}


def _features(params: dict[str, Any], images: jax.Array, *, teacher: DinoTeacher | None,
              resize: str) -> dict[str, jax.Array]:
  out = {INCEPTION: inception.pool_features(params[INCEPTION], images, resize)}
  if teacher is not None:
    out[DINOV3] = dinov3_global_features(teacher, params[DINOV3], images)
  return out
