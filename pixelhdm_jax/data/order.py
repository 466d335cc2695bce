"""The example order (`data.order`): which dataset indices form global batch `step`, one bucket per batch.

The three batch samplers of the original (docs/original.md §8), with two fixes: every epoch
draws a new permutation (the original replays epoch 0 forever), and the schedule is a pure function of
the step, so a run resumes mid-epoch exactly and every process of a multi-host run computes the same
schedule without talking to the others (each then loads its own slice of each global batch).

- `random`: shuffle each bucket, cut it into batches, shuffle the list of all batches.
- `sequential`: buckets in ascending size, each bucket's batches in dataset (sorted path) order.
- `buffered_shuffle`: buckets in ascending size, grouped into chunks of `chunk_size` buckets; the chunk
  order is shuffled, buckets inside a chunk go in ascending size, indices inside a bucket are shuffled,
  and all batches of a bucket come before the next bucket's.

Every image trains every epoch: a bucket's last, incomplete batch is completed by wrapping around to the
start of that bucket's order for the epoch (its first images again, cyclically when the bucket holds fewer
images than a batch), where the original dropped it (`drop_last`). The fills are thus a pure function of
(seed, epoch, bucket) and every batch keeps exactly `batch_size` images of one bucket (static shapes).
Records with bucket id `NO_BUCKET` (too small for every bucket) are left out.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from pixelhdm_jax.data.buckets import NO_BUCKET

ORDERS = ("random", "sequential", "buffered_shuffle")  # `data.order`
_SCHEDULE_STREAM = 0  # keeps the schedule's random stream apart from the per-sample augmentation stream
_CACHED_EPOCHS = 2


@dataclasses.dataclass(frozen=True)
class ScheduledBatch:
  """Global batch number `step`: its epoch, its bucket and its dataset indices (global batch order)."""
  step: int
  epoch: int
  bucket: int
  indices: np.ndarray


class BatchSchedule:
  """The run's sequence of global batches, a pure function of (seed, step).

  Bucket ids are ordered by pixel count (then width), so "ascending size" is ascending id.
  """

  def __init__(self, bucket_ids: np.ndarray, batch_size: int, order: str, seed: int, chunk_size: int = 4):
    if order not in ORDERS:
      raise ValueError(f"unknown data order {order!r}: choose one of {ORDERS}")
    if batch_size <= 0 or chunk_size <= 0:
      raise ValueError(f"batch_size ({batch_size}) and chunk_size ({chunk_size}) must be positive")
    bucket_ids = np.asarray(bucket_ids)
    self.batch_size = batch_size
    self.order = order
    self.seed = seed
    self.chunk_size = chunk_size
    self._groups = _group_by_bucket(bucket_ids)
    self.bucket_count = len(self._groups)
    self.images_per_epoch = sum(len(indices) for indices in self._groups.values())
    if self.images_per_epoch == 0:
      raise ValueError(f"no image to schedule: the dataset has {len(bucket_ids)} records and "
                       f"{int((bucket_ids == NO_BUCKET).sum())} of them are too small for every bucket (set "
                       "data.allow_upscale=True to upscale them, or lower data.min_resolution)")
    self.batches_per_epoch = sum(-(-len(indices) // batch_size) for indices in self._groups.values())
    self.samples_per_epoch = self.batches_per_epoch * batch_size
    self.repeats_per_epoch = self.samples_per_epoch - self.images_per_epoch
    self._cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}

  def __getstate__(self):
    state = dict(self.__dict__)
    state["_cache"] = {}
    return state

  def __call__(self, step: int) -> ScheduledBatch:
    epoch, position = divmod(int(step), self.batches_per_epoch)
    indices, buckets = self.epoch(epoch)
    return ScheduledBatch(step=int(step), epoch=epoch, bucket=int(buckets[position]), indices=indices[position])

  def epoch(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
    """All batches of an epoch: indices (batches, batch_size) int64 and bucket ids (batches,) int32."""
    if epoch not in self._cache:
      if len(self._cache) >= _CACHED_EPOCHS:
        self._cache.pop(min(self._cache))
      self._cache[epoch] = self._plan(epoch)
    return self._cache[epoch]

  def _plan(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng([self.seed, _SCHEDULE_STREAM, epoch])
    batches: list[tuple[int, np.ndarray]] = []
    if self.order == "random":
      for bucket, indices in self._groups.items():
        batches += self._cut(bucket, rng.permutation(indices))
      batches = [batches[i] for i in rng.permutation(len(batches))]
    elif self.order == "sequential":
      for bucket in sorted(self._groups):
        batches += self._cut(bucket, self._groups[bucket])
    else:
      ascending = sorted(self._groups)
      chunks = [ascending[i:i + self.chunk_size] for i in range(0, len(ascending), self.chunk_size)]
      for chunk in rng.permutation(len(chunks)):
        for bucket in chunks[chunk]:
          batches += self._cut(bucket, rng.permutation(self._groups[bucket]))
    indices = np.stack([idx for _, idx in batches]).astype(np.int64)
    return indices, np.asarray([b for b, _ in batches], np.int32)

  def _cut(self, bucket: int, indices: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """The bucket's batches in `indices` order, the last one completed from the start of `indices` (cyclically)."""
    count = -(-len(indices) // self.batch_size)
    rows = np.resize(indices, count * self.batch_size).reshape(count, self.batch_size)
    return [(bucket, row) for row in rows]


def _group_by_bucket(bucket_ids: np.ndarray) -> dict[int, np.ndarray]:
  """Record indices of each bucket in dataset order, buckets in order of first appearance (the original's
  grouping dict); records with `NO_BUCKET` are left out."""
  kept = np.flatnonzero(bucket_ids != NO_BUCKET)
  ids = bucket_ids[kept]
  present, first = np.unique(ids, return_index=True)
  order = kept[np.argsort(ids, kind="stable")]
  splits = np.split(order, np.cumsum(np.bincount(ids)[present])[:-1])
  by_bucket = dict(zip(present.tolist(), splits))
  return {int(b): by_bucket[b] for b in present[np.argsort(first)].tolist()}
