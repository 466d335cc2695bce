"""Data-loading throughput: decoded + resized images per second, per worker and through the Grain loader.

Writes a folder of camera-sized JPEG photos (smooth colour fields with sensor-like noise, about 1 MP),
prepares it with `prepare_folder`, then times (1) one process decoding and cover-resizing every record
into its bucket (the work of one Grain worker), with and without reduced-scale JPEG decoding, and (2) the
whole loader with several worker processes. `launch/bench_data.py` runs it; docs/performance.md has numbers.
"""

from __future__ import annotations

import pathlib
import tempfile
import time

import numpy as np
from PIL import Image

from pixelhdm_jax.data import images as image_ops
from pixelhdm_jax.data.buckets import buckets_from_config
from pixelhdm_jax.data.pipeline import build_train_loader
from pixelhdm_jax.data.prepare import prepare_folder
from pixelhdm_jax.data.sources import FolderSource

PHOTO_SIZES = ((1024, 768), (768, 1024), (1200, 800), (800, 1200), (1024, 1024), (1280, 720))


def write_photos(folder: pathlib.Path, count: int, seed: int = 0) -> None:
  """`count` JPEG photos (quality 90) with captions, sizes cycling through PHOTO_SIZES."""
  rng = np.random.default_rng(seed)
  folder.mkdir(parents=True, exist_ok=True)
  for i in range(count):
    width, height = PHOTO_SIZES[i % len(PHOTO_SIZES)]
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    phase = rng.uniform(0, 6, 3)
    field = np.stack([np.sin(x / 97 + phase[c]) + np.cos(y / 61 - phase[c]) for c in range(3)], -1)
    pixels = 128 + 60 * field + rng.normal(0, 8, (height, width, 3))
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(folder / f"photo_{i:04d}.jpg", quality=90)
    (folder / f"photo_{i:04d}.txt").write_text(f"a benchmark photo number {i}")


def decode_rate(source: FolderSource, bucket_ids: np.ndarray, buckets, repeats: int = 2) -> float:
  """Images per second of decode + upright + RGB + cover-resize + crop in this one process (one worker's work)."""
  start = time.perf_counter()
  for _ in range(repeats):
    for index, bucket in enumerate(bucket_ids):
      image, _ = source.example(index, buckets[bucket])
      image_ops.cover_crop(image_ops.decoded_rgb(image)[0], buckets[bucket])
  return repeats * len(bucket_ids) / (time.perf_counter() - start)


def loader_rate(config, tokenizer, batches: int) -> float:
  """Images per second out of the whole Grain loader (after a warm-up batch that starts the workers)."""
  iterator = build_train_loader(config, tokenizer)
  next(iterator)
  start = time.perf_counter()
  for _ in range(batches):
    next(iterator)
  rate = batches * config.train.batch_size / (time.perf_counter() - start)
  if hasattr(iterator, "close"):
    iterator.close()
  return rate


def measure(config, tokenizer, *, photos: int = 96, workers: tuple[int, ...] = (1, 2), batches: int = 8) -> dict:
  """Prepares `photos` photos and returns the measured rates (images per second)."""
  results = {}
  buckets = buckets_from_config(config)
  with tempfile.TemporaryDirectory() as scratch:
    folder, out = pathlib.Path(scratch) / "photos", pathlib.Path(scratch) / "prepared"
    write_photos(folder, photos)
    start = time.perf_counter()
    prepare_folder(folder, out, buckets, validation_fraction=0.0, workers=1, progress=False)
    results["prepare_images_per_s_1_process"] = photos / (time.perf_counter() - start)
    for draft in (True, False):
      source = FolderSource(out, "train", jpeg_draft=draft)
      key = f"decode_resize_images_per_s_per_worker{'' if draft else '_full_decode'}"
      results[key] = decode_rate(source, source.bucket_ids(buckets), buckets)
    config = config.copy_and_resolve_references()
    config.data.update(source="folder", path=str(out), order="random", caption_dropout=0.1)
    for count in workers:
      config.data.num_workers = count
      results[f"loader_images_per_s_{count}_workers"] = loader_rate(config, tokenizer, batches)
  return results
