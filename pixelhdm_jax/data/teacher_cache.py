"""DINOv3 patch features of the training images stored beside a prepared folder: the REPA targets without DINOv3.

A `feature_cache` of kind `teacher_cache`: per record the teacher's patch tokens (rows, raster order) of the image
as the loader gives it with a centre crop and no flip (`data.random_crop`, `data.random_flip` False, the default) at
its training bucket; an image in no bucket has none. The settings (`encoders/teacher_features.py`) are the
teacher's weights fingerprint, its compute dtype, the dataset's fingerprint and what decides each image's pixels:
the buckets, `data.allow_upscale` and `data.jpeg_draft`.
"""

from __future__ import annotations

import os

import numpy as np

from pixelhdm_jax.data.feature_cache import CacheReader

KIND = "teacher_cache"
REBUILD = "python launch/encode_teacher.py with this run's --config"
SETTING_FIELDS = {"encoder": "the teacher's weights (dino.source, dino.path)", "dtype": "dino.compute_dtype",
                  "dataset": "the prepared dataset (launch/prepare_data.py ran again)",
                  "buckets": "buckets (data.min_resolution, data.max_resolution, data.max_aspect_ratio, patch size)",
                  "allow_upscale": "data.allow_upscale", "jpeg_draft": "data.jpeg_draft"}
FEATURES = "teacher_features"  # the batch key (`train/step.py` TEACHER_FEATURES)


class TeacherCache:
  """Reads a complete split of a teacher cache; `batch(indices)` stacks the features of one bucket's records."""

  def __init__(self, dataset: os.PathLike | str, split: str, settings: dict):
    self.reader = CacheReader(dataset, KIND, (split,), settings, SETTING_FIELDS, REBUILD)
    self.directory, self.split = self.reader.directory, split

  def __len__(self) -> int:
    return self.reader.records(self.split)

  def batch(self, indices: np.ndarray) -> dict[str, np.ndarray]:
    return {FEATURES: np.stack([self.reader.rows(self.split, int(index)) for index in indices])}
