"""Encodes a prepared folder's training images with the frozen DINOv3 into its teacher cache (`data/teacher_cache.py`).

`cache_settings(config, source)` names the cache a run reads. `encode_teacher_features(config)` fills it
(`launch/encode_teacher.py`): each image of `data.split` decoded, cover-resized and centre-cropped to its training
bucket exactly as the loader does without `data.random_crop`/`random_flip`, then encoded in batches of one bucket
split over all devices of this host (the last one of a bucket padded), committed batch by batch so that an
interrupted job resumes. An unreadable image gets zeros (the loader replaces it by another record of its batch).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import ml_collections
import numpy as np
import tqdm
from absl import logging
from etils import epath

from pixelhdm_jax import parallel
from pixelhdm_jax.data import feature_cache, teacher_cache
from pixelhdm_jax.data import images as image_ops
from pixelhdm_jax.data.buckets import NO_BUCKET, buckets_from_config
from pixelhdm_jax.data.pipeline import training_bucket_ids
from pixelhdm_jax.data.sources import FolderSource
from pixelhdm_jax.encoders.fingerprint import checkpoint_fingerprint, random_fingerprint
from pixelhdm_jax.encoders.hf_checkpoint import resolve_checkpoint
from pixelhdm_jax.encoders.teacher import DINOV3_FILES, RANDOM_DINOV3_SEED, build_dino_teacher
from pixelhdm_jax.encoders.transformer import RANDOM_SOURCES, place_frozen
from pixelhdm_jax.errors import ConfigError
from pixelhdm_jax.models.layers import compute_dtype


def weights_fingerprint(config: ml_collections.ConfigDict) -> str:
  """The fingerprint (`fingerprint.py`) of `config.dino`'s teacher, without loading its weights."""
  d = config.dino
  if d.source in RANDOM_SOURCES:
    teacher, _ = build_dino_teacher(config, with_params=False)
    return random_fingerprint({"source": d.source, "seed": RANDOM_DINOV3_SEED, "arch": teacher.module.arch.__dict__})
  return checkpoint_fingerprint(resolve_checkpoint(d, "dino", DINOV3_FILES))


def cache_settings(config: ml_collections.ConfigDict, source: FolderSource) -> dict:
  """The settings that name the teacher cache of `config` over the prepared folder `source`."""
  d = config.data
  return {"encoder": weights_fingerprint(config), "dtype": compute_dtype(config.dino.compute_dtype).name,
          "dataset": source.fingerprint(), "buckets": buckets_from_config(config).spec(),
          "allow_upscale": d.allow_upscale, "jpeg_draft": d.jpeg_draft}


def training_image(source: FolderSource, index: int, size: tuple[int, int]) -> np.ndarray | None:
  """Record `index` as the loader gives it at bucket `size` with a centre crop and no flip; None if unreadable."""
  try:
    image, _ = image_ops.decoded_rgb(source.example(index, size)[0])
  except Exception as failure:  # noqa: BLE001  (a broken record must not stop the job)
    logging.warning("record %d is unreadable (%s: %s): zeros in the teacher cache", index, type(failure).__name__,
                    failure)
    return None
  return image_ops.cover_crop(image, size)


def _next_chunk(order: np.ndarray, bucket_ids: np.ndarray, start: int, size: int) -> np.ndarray:
  """Up to `size` records of `order` from `start`, all of one bucket."""
  chunk = order[start:start + size]
  return chunk[bucket_ids[chunk] == bucket_ids[chunk[0]]]


def encode_teacher_features(config: ml_collections.ConfigDict, *, batch_size: int = 16,
                            progress: bool = True) -> epath.Path:
  """Fills (or finishes) the teacher cache of `config` for the prepared folder `data.path`, split `data.split`;
  returns its folder. `batch_size` images per device and step."""
  d = config.data
  if d.source != "folder" or not d.path:
    raise ConfigError("the teacher cache is stored beside a prepared folder: set --config.data.path to the --output "
                      "of launch/prepare_data.py")
  if jax.process_count() > 1:
    raise ConfigError("launch/encode_teacher.py runs on one host (over all its devices): start it as one process")
  source = FolderSource(d.path, d.split, d.jpeg_draft)
  buckets = buckets_from_config(config)
  bucket_ids, _ = training_bucket_ids(source, buckets, d.allow_upscale)
  settings = cache_settings(config, source)
  directory = feature_cache.cache_dir(source.path, teacher_cache.KIND, settings)
  teacher, host_params = build_dino_teacher(config)
  patch, dim = teacher.module.arch.patch_size, teacher.feature_dim
  sizes = [buckets[b] if b != NO_BUCKET else (0, 0) for b in bucket_ids]
  lengths = np.asarray([(w // patch) * (h // patch) for w, h in sizes], np.int64)
  feature_cache.write_meta(directory, settings, dim)
  writer = feature_cache.SplitWriter(directory, d.split, lengths, dim, compute_dtype(config.dino.compute_dtype))
  order = np.argsort(bucket_ids, kind="stable")  # NO_BUCKET (-1, no rows) first, then bucket by bucket
  mesh, rules = parallel.data_parallel_mesh(), parallel.logical_rules(config.mesh)
  global_size = batch_size * jax.device_count()
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules), tqdm.tqdm(
      total=len(order), initial=writer.done, desc="encoding images", unit="img", disable=not progress) as bar:
    params = place_frozen(teacher, host_params, mesh, rules)
    del host_params
    run = jax.jit(teacher.features)
    while writer.done < len(order):
      chunk = _next_chunk(order, bucket_ids, writer.done, global_size)
      if bucket_ids[chunk[0]] == NO_BUCKET:
        writer.write(chunk, [np.zeros((0, dim))] * len(chunk))
      else:
        width, height = buckets[bucket_ids[chunk[0]]]
        images = np.zeros((global_size, height, width, 3), np.uint8)
        loaded = [training_image(source, int(index), (width, height)) for index in chunk]
        for row, image in enumerate(loaded):
          images[row] = 0 if image is None else image
        x = image_ops.images_to_model_range(images)
        features = np.array(jax.device_get(run(params, parallel.global_batch(x, mesh, rules)))[:len(chunk)])
        features[[image is None for image in loaded]] = 0
        writer.write(chunk, features)
      writer.commit()
      bar.update(len(chunk))
  return directory
