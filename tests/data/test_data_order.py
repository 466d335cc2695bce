"""Batch schedules: one bucket per batch, every image each epoch (fills from its bucket), new order per epoch, pure in
the step."""

import itertools

import numpy as np
import pytest

from pixelhdm_jax.data.buckets import NO_BUCKET
from pixelhdm_jax.data.order import BatchSchedule

BATCH = 4
# Bucket sizes 10, 7, 3 (less than a batch), 12, 9 (bucket 4 absent), interleaved in dataset order.
COUNTS = {0: 10, 1: 7, 2: 3, 3: 12, 5: 9}
BUCKET_IDS = np.random.default_rng(0).permutation(np.repeat(list(COUNTS), list(COUNTS.values())))


def schedule(order, seed=0, chunk_size=2):
  return BatchSchedule(BUCKET_IDS, BATCH, order, seed, chunk_size)


def runs(buckets):
  """The bucket sequence with repeats collapsed: [0, 0, 1, 1, 0] -> [0, 1, 0]."""
  return [b for b, _ in itertools.groupby(buckets.tolist())]


ORDERS = ["random", "sequential", "buffered_shuffle"]
# Per bucket, batches ceil(n / 4) and so slots 4 ceil(n / 4): every image once, the rest repeats.
SLOTS = {0: 12, 1: 8, 2: 4, 3: 12, 5: 12}


def members(bucket):
  return np.flatnonzero(bucket == BUCKET_IDS)


def repeats(indices, buckets, bucket):
  """The images of `bucket` scheduled twice in an epoch (sorted)."""
  taken, counts = np.unique(indices[buckets == bucket], return_counts=True)
  return taken[counts > 1].tolist()


@pytest.mark.parametrize("order", ORDERS)
def test_every_image_once_per_epoch_plus_fills_from_its_own_bucket(order):
  s = schedule(order)
  assert s.batches_per_epoch == 12 and s.bucket_count == 5
  assert (s.images_per_epoch, s.repeats_per_epoch) == (41, 7)
  for epoch in range(3):
    indices, buckets = s.epoch(epoch)
    assert indices.shape == (12, BATCH)
    assert all((BUCKET_IDS[row] == bucket).all() for row, bucket in zip(indices, buckets))
    assert sorted(set(indices.reshape(-1).tolist())) == list(range(len(BUCKET_IDS)))  # nothing dropped
    for bucket, slots in SLOTS.items():
      taken, counts = np.unique(indices[buckets == bucket], return_counts=True)
      assert taken.tolist() == members(bucket).tolist() and counts.sum() == slots
      if bucket != 2:  # a bucket of at least a batch: each image at most twice, never twice in one batch
        assert counts.max() <= 2 and all(len(set(row.tolist())) == BATCH for row in indices[buckets == bucket])


@pytest.mark.parametrize("order", ORDERS)
def test_a_bucket_smaller_than_the_batch_gets_a_batch_of_its_own_images(order):
  s = BatchSchedule(BUCKET_IDS, 16, order, seed=0)  # every bucket (3 to 12 images) is smaller than a batch
  assert (s.batches_per_epoch, s.repeats_per_epoch) == (5, 5 * 16 - len(BUCKET_IDS))
  indices, buckets = s.epoch(0)
  assert sorted(buckets.tolist()) == sorted(COUNTS)
  for row, bucket in zip(indices, buckets):
    taken, counts = np.unique(row, return_counts=True)
    assert taken.tolist() == members(bucket).tolist()
    assert counts.max() - counts.min() <= 1  # the images repeat evenly: 3 images in 16 slots are 6, 5, 5


@pytest.mark.parametrize("order", ["random", "buffered_shuffle"])
def test_epochs_differ_and_seed_determines_order_and_fills(order):
  s = schedule(order)
  assert not np.array_equal(s.epoch(0)[0], s.epoch(1)[0])
  np.testing.assert_array_equal(schedule(order).epoch(3)[0], s.epoch(3)[0])
  np.testing.assert_array_equal(schedule(order).epoch(3)[1], s.epoch(3)[1])
  assert not np.array_equal(schedule(order, seed=1).epoch(0)[0], s.epoch(0)[0])
  fills = [[repeats(*s.epoch(epoch), bucket) for bucket in (0, 1, 5)] for epoch in range(4)]
  assert all(len(f) == SLOTS[b] - COUNTS[b] for epoch in fills for f, b in zip(epoch, (0, 1, 5)))
  assert len({str(epoch) for epoch in fills}) > 1  # the repeated images change between epochs


def test_sequential_is_ascending_buckets_in_dataset_order_completed_from_the_start():
  s = schedule("sequential")
  indices, buckets = s.epoch(0)
  assert runs(buckets) == [0, 1, 2, 3, 5]
  for bucket in COUNTS:
    first = members(bucket)
    taken = indices[buckets == bucket].reshape(-1)
    np.testing.assert_array_equal(taken, np.concatenate([first, first])[:SLOTS[bucket]])
  np.testing.assert_array_equal(s.epoch(1)[0], indices)


def test_buffered_shuffle_visits_chunks_of_ascending_buckets():
  s = schedule("buffered_shuffle", chunk_size=2)
  orders = set()
  for epoch in range(8):
    order = runs(s.epoch(epoch)[1])
    assert sorted(order) == [0, 1, 2, 3, 5] and len(order) == 5  # every bucket's batches are contiguous
    chunks = ([0, 1], [2, 3], [5])  # present buckets in ascending order, two per chunk
    position = 0
    while position < len(order):
      chunk = next(c for c in chunks if c[0] == order[position])
      assert order[position:position + len(chunk)] == chunk
      position += len(chunk)
    orders.add(tuple(order))
  assert len(orders) > 1  # chunk order is reshuffled across epochs


def test_random_order_mixes_buckets():
  assert len(runs(schedule("random").epoch(0)[1])) > 5


@pytest.mark.parametrize("order", ORDERS)
def test_step_is_pure_and_crosses_epochs(order):
  s = schedule(order)
  fresh = schedule(order)
  for step in (27, 0, 5, 11, 12, 13, 40):  # out of order: nothing depends on the steps taken before
    batch = s(step)
    again = fresh(step)
    assert (batch.epoch, batch.bucket) == (step // 12, again.bucket)
    np.testing.assert_array_equal(batch.indices, again.indices)
    np.testing.assert_array_equal(batch.indices, s.epoch(step // 12)[0][step % 12])


def test_records_without_a_bucket_are_left_out():
  ids = BUCKET_IDS.copy()
  ids[members(3)[:5]] = NO_BUCKET  # bucket 3 keeps 7 of its 12 images
  s = BatchSchedule(ids, BATCH, "random", 0)
  assert (s.images_per_epoch, s.batches_per_epoch) == (len(ids) - 5, 11)
  indices, buckets = s.epoch(0)
  assert sorted(set(indices.reshape(-1).tolist())) == np.flatnonzero(ids != NO_BUCKET).tolist()
  with pytest.raises(ValueError, match="no image to schedule: the dataset has 41 records and 41 of them are too small"):
    BatchSchedule(np.full(41, NO_BUCKET), BATCH, "random", 0)


def test_unknown_order():
  with pytest.raises(ValueError, match="unknown data order 'shuffle'"):
    BatchSchedule(BUCKET_IDS, BATCH, "shuffle", 0)
