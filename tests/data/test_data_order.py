"""Batch schedules: one bucket per batch, each sample once per epoch, new order per epoch, pure in the step."""

import itertools

import numpy as np
import pytest

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


@pytest.mark.parametrize("order", ["random", "sequential", "buffered_shuffle"])
def test_each_sample_once_per_epoch_and_one_bucket_per_batch(order):
  s = schedule(order)
  assert s.batches_per_epoch == sum(n // BATCH for n in COUNTS.values()) == 8
  for epoch in range(3):
    indices, buckets = s.epoch(epoch)
    assert indices.shape == (8, BATCH)
    assert all((BUCKET_IDS[row] == bucket).all() for row, bucket in zip(indices, buckets))
    flat = indices.reshape(-1)
    assert len(set(flat.tolist())) == len(flat)  # no sample twice
    per_bucket = np.bincount(BUCKET_IDS[flat], minlength=6)
    assert {b: per_bucket[b] for b in COUNTS} == {b: n // BATCH * BATCH for b, n in COUNTS.items()}


@pytest.mark.parametrize("order", ["random", "buffered_shuffle"])
def test_epochs_differ_and_seed_determines_order(order):
  s = schedule(order)
  assert not np.array_equal(s.epoch(0)[0], s.epoch(1)[0])
  np.testing.assert_array_equal(schedule(order).epoch(3)[0], s.epoch(3)[0])
  assert not np.array_equal(schedule(order, seed=1).epoch(0)[0], s.epoch(0)[0])


def test_sequential_is_ascending_buckets_in_dataset_order():
  s = schedule("sequential")
  indices, buckets = s.epoch(0)
  assert runs(buckets) == [0, 1, 3, 5]  # bucket 2 has no full batch
  for bucket in (0, 1, 3, 5):
    members = np.flatnonzero(bucket == BUCKET_IDS)
    taken = indices[buckets == bucket].reshape(-1)
    np.testing.assert_array_equal(taken, members[:len(taken)])
  np.testing.assert_array_equal(s.epoch(1)[0], indices)


def test_buffered_shuffle_visits_chunks_of_ascending_buckets():
  s = schedule("buffered_shuffle", chunk_size=2)
  orders = set()
  for epoch in range(8):
    order = runs(s.epoch(epoch)[1])
    assert sorted(order) == [0, 1, 3, 5] and len(order) == 4  # every bucket's batches are contiguous
    # Chunks of present buckets (ascending): [0, 1], [2, 3], [5]; bucket 2 yields no batch.
    chunks = [[b for b in chunk if b != 2] for chunk in ([0, 1], [2, 3], [5])]
    position = 0
    while position < len(order):
      chunk = next(c for c in chunks if c[0] == order[position])
      assert order[position:position + len(chunk)] == chunk
      position += len(chunk)
    orders.add(tuple(order))
  assert len(orders) > 1  # chunk order is reshuffled across epochs


def test_random_order_mixes_buckets():
  assert len(runs(schedule("random").epoch(0)[1])) > 4


@pytest.mark.parametrize("order", ["random", "sequential", "buffered_shuffle"])
def test_step_is_pure_and_crosses_epochs(order):
  s = schedule(order)
  fresh = schedule(order)
  for step in (0, 5, 7, 8, 13, 27):
    batch = s(step)
    again = fresh(step)
    assert (batch.epoch, batch.bucket) == (step // 8, again.bucket)
    np.testing.assert_array_equal(batch.indices, again.indices)
    np.testing.assert_array_equal(batch.indices, s.epoch(step // 8)[0][step % 8])


def test_no_full_batch_is_an_error():
  with pytest.raises(ValueError, match="no bucket holds a full batch.*largest bucket has 12 samples.*batch size is 16"):
    BatchSchedule(BUCKET_IDS, 16, "random", 0)


def test_unknown_order():
  with pytest.raises(ValueError, match="unknown data order 'shuffle'"):
    BatchSchedule(BUCKET_IDS, BATCH, "shuffle", 0)
