"""The Grain training loader: host-local batches of one bucket each, resumable through Orbax.

Element `step` of the Grain dataset is host-local batch `step`: the shared `BatchSchedule` names the
global batch (one bucket, `train.batch_size` indices), this process loads its slice
`[process_index * B_local, (process_index + 1) * B_local)`, preprocesses and tokenises it. Everything is
a pure function of (seed, step, position in the global batch), so the global batch is the same however
many processes read it, however many workers load it, and after any resume.

Batch (a dict of numpy arrays, B_local = train.batch_size // process_count):
  images      uint8 (B_local, H, W, 3)  the bucket's (W, H); the train step maps them to [-1, 1]
  token_ids   int32 (B_local, T)        T = tokenizer.max_length, right-padded
  token_mask  bool  (B_local, T)        all False for a dropped (empty) caption
  (with a text cache, `text.cache=True`, instead of the tokens: `text_hidden` (B_local, T, D), `text_mask`
  (B_local, T) and `text_pooled` (B_local, D) in the compute dtype, the empty prompt's for a dropped caption;
  `text_cache.TextCache.batch`)
  teacher_features  (B_local, L, C)   with a teacher cache (`dino.cache=True`), while REPA is on: the DINOv3 patch
                                      features of the images, its targets (`teacher_cache.TeacherCache.batch`)
  bucket_id   int32 (B_local,)          the same value on every row
  index       int32 (B_local,)          dataset index of every row

Checkpointing: the iterator is a `grain.DatasetIterator`; store it in the run's Orbax checkpoint with
`grain.checkpoint.CheckpointHandler` (`grain.checkpoint.CheckpointSave(iterator)` to save,
`grain.checkpoint.CheckpointRestore(iterator)` on a freshly built one to restore), or use
`iterator.get_state()` / `set_state()`. Grain's state depends on `data.num_workers`; a resume with other
worker or process counts rebuilds the loader with `start_step` = the number of batches already consumed.
"""

from __future__ import annotations

import signal
import sys

import grain
import numpy as np
from absl import logging

from pixelhdm_jax.data import images as image_ops
from pixelhdm_jax.data.buckets import NO_BUCKET, AspectRatioBucket, buckets_from_config
from pixelhdm_jax.data.order import BatchSchedule
from pixelhdm_jax.data.sources import ImageTextSource, build_source
from pixelhdm_jax.data.teacher_cache import REBUILD as TEACHER_REBUILD
from pixelhdm_jax.data.teacher_cache import TeacherCache
from pixelhdm_jax.data.text_cache import REBUILD as TEXT_REBUILD
from pixelhdm_jax.data.text_cache import TextCache
from pixelhdm_jax.errors import ConfigError

_AUGMENT_STREAM = 1  # keeps per-sample randomness apart from the schedule's stream


class LoadBatch(grain.transforms.Map):
  """Grain transform: global step -> this process's preprocessed slice of that batch, its captions tokenised by
  `tokenizer` or, given a `text_cache`, replaced by their stored encodings; with a `teacher_cache` (centre crops,
  no flips only) the images' stored DINOv3 features too, for the first `teacher_steps` batches (REPA's)."""

  def __init__(self, source: ImageTextSource, schedule: BatchSchedule, buckets: AspectRatioBucket, tokenizer, *,
               seed: int, caption_dropout: float, random_crop: bool, random_flip: bool, process_index: int,
               process_count: int, text_cache: TextCache | None = None, teacher_cache: TeacherCache | None = None,
               teacher_steps: int = 0):
    if schedule.batch_size % process_count:
      raise ValueError(f"train.batch_size={schedule.batch_size} is not divisible by the {process_count} "
                       "processes: every process loads an equal slice of each global batch")
    if not 0 <= process_index < process_count:
      raise ValueError(f"process_index={process_index} is not in [0, process_count={process_count})")
    self.source, self.schedule, self.buckets, self.tokenizer = source, schedule, buckets, tokenizer
    self.text_cache, self.teacher_cache, self.teacher_steps = text_cache, teacher_cache, teacher_steps
    if teacher_cache is not None and (random_crop or random_flip):
      raise ValueError("stored teacher features are of centre crops without flips: data.random_crop and "
                       "data.random_flip need the live teacher")
    self.seed, self.caption_dropout = seed, caption_dropout
    self.random_crop, self.random_flip = random_crop, random_flip
    self.local_batch_size = schedule.batch_size // process_count
    self.offset = process_index * self.local_batch_size

  def map(self, step: int) -> dict[str, np.ndarray]:
    batch = self.schedule(step)
    width, height = self.buckets[batch.bucket]
    images = np.empty((self.local_batch_size, height, width, 3), np.uint8)
    captions, used, dropped = [], [], []
    for row in range(self.local_batch_size):
      position = self.offset + row
      rng = np.random.default_rng([self.seed, _AUGMENT_STREAM, batch.step, position])
      index, image, caption = self._load(batch.indices, position, (width, height))
      dropped.append(rng.random() < self.caption_dropout)
      if dropped[-1]:
        caption = ""
      flip = self.random_flip and rng.random() < 0.5
      images[row] = image_ops.cover_crop(image, (width, height), rng if self.random_crop else None, flip)
      captions.append(caption)
      used.append(index)
    if self.text_cache is not None:
      text = self.text_cache.batch(np.asarray(used), np.asarray(dropped))
    else:
      token_ids, token_mask = self.tokenizer(captions)
      text = {"token_ids": np.asarray(token_ids, np.int32), "token_mask": np.asarray(token_mask, bool)}
    if self.teacher_cache is not None and step < self.teacher_steps:
      text.update(self.teacher_cache.batch(np.asarray(used)))
    return {"images": images, **text, "bucket_id": np.full((self.local_batch_size,), batch.bucket, np.int32),
            "index": np.asarray(used, np.int32)}

  def _load(self, indices: np.ndarray, position: int, size: tuple[int, int]):
    """Sample `position` of the global batch, or the next loadable one of the same batch (bad data)."""
    error = None
    for shift in range(len(indices)):
      index = int(indices[(position + shift) % len(indices)])
      try:
        image, caption = self.source.example(index, size)
        image, _ = image_ops.decoded_rgb(image)
        return index, image, caption
      except Exception as failure:  # noqa: BLE001  (a broken record must not stop the run)
        logging.warning("skipping unreadable sample %d (%s: %s)", index, type(failure).__name__, failure)
        error = failure
    raise RuntimeError(f"no sample of a bucket-{size} batch could be loaded") from error


def training_bucket_ids(source: ImageTextSource, buckets: AspectRatioBucket,
                        allow_upscale: bool) -> tuple[np.ndarray, int]:
  """Bucket id of every record for the schedule, and how many images left the bucket of the original's rule.

  The original's rule (`source.bucket_ids`, kept with `allow_upscale`) compares pixel counts only, so it can
  pick a bucket taller or wider than the image, and gives an image smaller than every bucket the smallest one:
  `cover_crop` then upscales. Otherwise an image of known size goes to the best bucket it covers on both sides
  and one that covers none gets `NO_BUCKET` (left out of the schedule).
  """
  image_sizes = getattr(source, "image_sizes", None)  # optional: a source drawn at any size has none
  if allow_upscale or image_sizes is None:
    return source.bucket_ids(buckets), 0
  sizes = image_sizes()
  ids = buckets.assign(sizes[:, 0], sizes[:, 1], allow_upscale=False)
  moved = (ids != NO_BUCKET) & (ids != buckets.assign(sizes[:, 0], sizes[:, 1]))
  return ids, int(moved.sum())


def build_train_dataset(config, tokenizer, *, process_index: int = 0, process_count: int = 1, start_step: int = 0,
                        source: ImageTextSource | None = None,
                        text_cache_settings: dict | None = None,
                        teacher_cache_settings: dict | None = None) -> grain.IterDataset:
  """The Grain dataset of host-local training batches, from batch `start_step` on (endless).

  Args:
    config: the full config (`data`, `train.batch_size`, `model.patch_size`, `seed`).
    tokenizer: prompts -> (ids, mask), e.g. `ByteTokenizer(config.text.max_length)`; None with a text cache.
    process_index: this process (`jax.process_index()`).
    process_count: the number of processes (`jax.process_count()`).
    start_step: first global batch to produce (resume without Grain state).
    source: overrides the source named by `config.data` (tests, custom data).
    text_cache_settings: read the caption encodings stored beside the prepared folder for these settings
      (`encoders/caption_cache.py`) instead of tokenising; ConfigError when none match.
    teacher_cache_settings: add the DINOv3 features stored for these settings (`encoders/teacher_features.py`).
  """
  d = config.data
  buckets = buckets_from_config(config)
  source = build_source(d) if source is None else source
  text_cache = teacher = None
  if text_cache_settings is not None:
    text_cache = _checked(TextCache(source.path, d.split, text_cache_settings, config.text.max_length), source,
                          TEXT_REBUILD)
  if teacher_cache_settings is not None:
    teacher = _checked(TeacherCache(source.path, d.split, teacher_cache_settings), source, TEACHER_REBUILD)
  bucket_ids, moved = training_bucket_ids(source, buckets, d.allow_upscale)
  schedule = BatchSchedule(bucket_ids, config.train.batch_size, d.order, config.seed, d.chunk_size)
  logging.info("data: %d images, %d used in %d of %d buckets (%d skipped as too small for every bucket, %d moved to "
               "a bucket they cover: data.allow_upscale=%s); per epoch %d batches of %d = %d images + %d repeats "
               "completing each bucket's last batch", len(source), schedule.images_per_epoch, schedule.bucket_count,
               len(buckets), len(source) - schedule.images_per_epoch, moved, d.allow_upscale,
               schedule.batches_per_epoch, schedule.batch_size, schedule.images_per_epoch, schedule.repeats_per_epoch)
  load = LoadBatch(source, schedule, buckets, tokenizer, seed=config.seed, caption_dropout=d.caption_dropout,
                   random_crop=d.random_crop, random_flip=d.random_flip, process_index=process_index,
                   process_count=process_count, text_cache=text_cache, teacher_cache=teacher,
                   teacher_steps=config.loss.repa_early_stop * config.optim.grad_accum_steps)
  dataset = grain.MapDataset.range(start_step, sys.maxsize).map(load)
  dataset = dataset.to_iter_dataset(grain.ReadOptions(num_threads=d.num_threads, prefetch_buffer_size=d.prefetch))
  if d.num_workers > 0:
    dataset = dataset.mp_prefetch(grain.MultiprocessingOptions(num_workers=d.num_workers,
                                                               per_worker_buffer_size=d.prefetch),
                                  worker_init_fn=_ignore_interrupts)
  return dataset


def _checked(cache, source: ImageTextSource, rebuild: str):
  """`cache`, unless it holds another number of records than `source` (ConfigError naming the rebuild)."""
  if len(cache) != len(source):
    raise ConfigError(f"the cache {cache.directory} holds {len(cache)} records but split {cache.split!r} has "
                      f"{len(source)}: rebuild it with {rebuild}")
  return cache


def _ignore_interrupts(worker_index: int, worker_count: int) -> None:
  """In each Grain worker: Ctrl-C reaches every process of the terminal's job, and the training process, which
  saves a checkpoint and then stops the workers, must still get its batches."""
  del worker_index, worker_count
  signal.signal(signal.SIGINT, signal.SIG_IGN)


def build_train_loader(config, tokenizer, *, process_index: int = 0, process_count: int = 1, start_step: int = 0,
                       source: ImageTextSource | None = None,
                       text_cache_settings: dict | None = None,
                       teacher_cache_settings: dict | None = None) -> grain.DatasetIterator:
  """An iterator of host-local batches (see the module docstring); checkpoint it with Grain's Orbax handler."""
  return iter(build_train_dataset(config, tokenizer, process_index=process_index, process_count=process_count,
                                  start_step=start_step, source=source, text_cache_settings=text_cache_settings,
                                  teacher_cache_settings=teacher_cache_settings))
