"""The Grain loader: batch format, one bucket per batch, exact resume (Grain state, Orbax, workers), multi-host."""

import io
import logging

import grain
import numpy as np
import orbax.checkpoint as ocp
import pytest
from PIL import Image

from pixelhdm_jax.data import AspectRatioBucket, SyntheticSource, build_train_dataset, build_train_loader
from pixelhdm_jax.data.buckets import buckets_from_config
from pixelhdm_jax.data.order import BatchSchedule
from pixelhdm_jax.encoders.tokenizers import ByteTokenizer


def captions_of(batch):
  return [bytes((ids[mask] - 1).astype(np.uint8).tolist()).decode() for ids, mask in
          zip(batch["token_ids"], batch["token_mask"])]


def take(iterator, n):
  return [next(iterator) for _ in range(n)]


def assert_same_batches(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for key in x:
      np.testing.assert_array_equal(x[key], y[key], err_msg=key)


class PhotoSource:
  """Smooth colour images of varied sizes (so cover-resize, crop and flip all act), some unreadable."""

  def __init__(self, size=64, broken=(), truncated=()):
    rng = np.random.default_rng(1)
    self.sizes = np.stack([rng.integers(40, 140, size), rng.integers(40, 140, size)], 1)
    self.broken = set(broken)
    self.truncated = set(truncated)  # opened lazily, as PIL does: the damage shows only when decoded

  def __len__(self):
    return len(self.sizes)

  def bucket_ids(self, buckets):
    return buckets.assign(self.sizes[:, 0], self.sizes[:, 1])

  def example(self, index, size):
    del size
    if index in self.broken:
      raise OSError(f"record {index} is corrupt")
    width, height = self.sizes[index]
    y, x = np.mgrid[0:height, 0:width]
    pixels = np.stack([x * 255 // width, y * 255 // height, np.full_like(x, index * 3 % 256)], -1)
    image = Image.fromarray(pixels.astype(np.uint8))
    if index in self.truncated:
      encoded = io.BytesIO()
      image.save(encoded, format="JPEG")
      data = encoded.getvalue()
      return Image.open(io.BytesIO(data[:len(data) * 2 // 3])), f"photo number {index}"
    return image, f"photo number {index}"


def test_batches_are_one_bucket_with_matching_captions(tiny_config):
  tiny_config.data.caption_dropout = 0.3
  buckets = buckets_from_config(tiny_config)
  source = SyntheticSource(tiny_config.data.synthetic_size)
  ids = source.bucket_ids(buckets)
  iterator = build_train_loader(tiny_config, ByteTokenizer(tiny_config.text.max_length))
  dropped = kept = 0
  seen_buckets = set()
  for batch in take(iterator, 12):
    bucket = int(batch["bucket_id"][0])
    width, height = buckets[bucket]
    assert batch["images"].shape == (8, height, width, 3) and batch["images"].dtype == np.uint8
    assert batch["token_ids"].shape == (8, 32) and batch["token_ids"].dtype == np.int32
    assert batch["token_mask"].dtype == bool and batch["index"].dtype == np.int32
    assert (batch["bucket_id"] == bucket).all() and (ids[batch["index"]] == bucket).all()
    for index, caption, image in zip(batch["index"], captions_of(batch), batch["images"]):
      expected_image, expected_caption = source.example(int(index), (width, height))
      np.testing.assert_array_equal(image, np.asarray(expected_image))
      if caption:
        assert caption == expected_caption
        kept += 1
      else:
        dropped += 1
    seen_buckets.add(bucket)
  assert len(seen_buckets) > 1 and dropped > 5 and kept > 40


def test_epoch_covers_every_sample_then_reshuffles(tiny_config):
  tiny_config.data.order = "random"
  dataset = build_train_dataset(tiny_config, ByteTokenizer(32))
  buckets = buckets_from_config(tiny_config)
  counts = np.bincount(SyntheticSource(96).bucket_ids(buckets), minlength=len(buckets))
  per_epoch = int(sum(-(-counts // 8)))  # each bucket's last batch is completed with its own images
  batches = take(iter(dataset), 2 * per_epoch)
  first = np.concatenate([b["index"] for b in batches[:per_epoch]])
  second = np.concatenate([b["index"] for b in batches[per_epoch:]])
  assert sorted(set(first.tolist())) == list(range(96)) and len(first) == per_epoch * 8
  assert not np.array_equal(first, second)


def test_resume_from_state_or_start_step_without_workers(tiny_config):
  tokenizer = ByteTokenizer(32)
  reference = take(build_train_loader(tiny_config, tokenizer), 9)
  iterator = build_train_loader(tiny_config, tokenizer)
  take(iterator, 4)
  state = iterator.get_state()
  restored = build_train_loader(tiny_config, tokenizer)
  restored.set_state(state)
  assert_same_batches(take(restored, 5), reference[4:])
  assert_same_batches(take(build_train_loader(tiny_config, tokenizer, start_step=4), 5), reference[4:])


def test_resume_through_orbax_with_worker_processes(tiny_config, tmp_path):
  tiny_config.data.random_flip = True
  tokenizer = ByteTokenizer(32)
  reference = take(build_train_loader(tiny_config, tokenizer), 7)  # no workers: the order does not depend on them
  tiny_config.data.num_workers = 2
  iterator = build_train_loader(tiny_config, tokenizer)
  assert_same_batches(take(iterator, 3), reference[:3])
  with ocp.CheckpointManager(tmp_path / "ckpt", item_names=("data",)) as manager:
    manager.save(3, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(iterator)))
    manager.wait_until_finished()
    fresh = build_train_loader(tiny_config, tokenizer)
    restored = manager.restore(3, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(fresh)))["data"]
  assert_same_batches(take(restored, 4), reference[3:])
  for it in (iterator, fresh):
    it.close()


@pytest.mark.parametrize("order", ["random", "buffered_shuffle"])
def test_global_batch_is_the_same_for_1_2_and_4_processes(tiny_config, order):
  tiny_config.data.update(order=order, random_crop=True, random_flip=True, caption_dropout=0.3)
  source = PhotoSource()
  tokenizer = ByteTokenizer(32)
  steps = 6
  single = take(build_train_loader(tiny_config, tokenizer, source=source), steps)
  for count in (2, 4):
    loaders = [build_train_loader(tiny_config, tokenizer, process_index=p, process_count=count, source=source)
               for p in range(count)]
    for step in range(steps):
      local = [next(loader) for loader in loaders]
      assert all(len(batch["index"]) == 8 // count for batch in local)
      merged = {key: np.concatenate([batch[key] for batch in local]) for key in local[0]}
      assert_same_batches([merged], [single[step]])
  tiny_config.data.update(random_crop=False, random_flip=False)
  plain = take(build_train_loader(tiny_config, tokenizer, source=source), steps)
  assert any(not np.array_equal(p["images"], s["images"]) for p, s in zip(plain, single))  # augmentation acts


class SizedPhotoSource(PhotoSource):
  """Photos of the given sizes whose sizes are known without decoding (as a prepared folder or TFDS)."""

  def __init__(self, sizes):
    super().__init__()
    self.sizes = np.asarray(sizes)

  def image_sizes(self):
    return self.sizes


# Against the tiny buckets (32..64): 80x80 fits 64x64; 60x70 gets 64x64 by the original's pixel rule (4096 <= 4200
# pixels) but covers only 48x64 at most; 20x60 is narrower than every bucket (the original puts it in 32x32).
SIZES = [(80, 80)] * 8 + [(60, 70)] * 3 + [(20, 60)] * 3


def test_images_too_small_for_every_bucket_are_skipped_and_none_is_upscaled(tiny_config, caplog):
  caplog.set_level(logging.INFO)
  source = SizedPhotoSource(SIZES)
  buckets = buckets_from_config(tiny_config)
  batches = take(build_train_loader(tiny_config, ByteTokenizer(32), source=source), 2)  # one epoch
  assert ("data: 14 images, 11 used in 2 of 6 buckets (3 skipped as too small for every bucket, 3 moved to a bucket "
          "they cover: data.allow_upscale=False); per epoch 2 batches of 8 = 11 images + 5 repeats completing each "
          "bucket's last batch") in caplog.text
  assert sorted({int(i) for b in batches for i in b["index"]}) == list(range(11))
  for batch in batches:
    width, height = buckets[int(batch["bucket_id"][0])]
    assert (source.sizes[batch["index"]] >= (width, height)).all()  # cover_crop only shrinks
  assert sorted(buckets[int(b["bucket_id"][0])] for b in batches) == [(48, 64), (64, 64)]

  caplog.clear()
  tiny_config.data.allow_upscale = True  # the original's buckets: 60x70 in 64x64, 20x60 in 32x32
  batches = take(build_train_loader(tiny_config, ByteTokenizer(32), source=source), 3)
  assert "14 used in 2 of 6 buckets (0 skipped as too small for every bucket, 0 moved" in caplog.text
  assert sorted({int(i) for b in batches for i in b["index"]}) == list(range(14))


def test_fill_batches_split_over_processes_like_any_batch(tiny_config):
  """The 48x64 batch holds 3 images and 5 repeats: each process's slice is its share of that global batch."""
  tiny_config.data.update(order="random", random_crop=True, random_flip=True)
  source, tokenizer = SizedPhotoSource(SIZES), ByteTokenizer(32)
  single = take(build_train_loader(tiny_config, tokenizer, source=source), 4)  # two epochs
  assert sorted(len(set(b["index"].tolist())) for b in single) == [3, 3, 8, 8]
  for count in (2, 4):
    loaders = [build_train_loader(tiny_config, tokenizer, process_index=p, process_count=count, source=source)
               for p in range(count)]
    for reference in single:
      local = [next(loader) for loader in loaders]
      assert_same_batches([{key: np.concatenate([b[key] for b in local]) for key in local[0]}], [reference])


def test_unreadable_sample_is_replaced_from_the_same_batch(tiny_config):
  source = PhotoSource(broken=range(0, 64, 2))
  tiny_config.data.order = "sequential"
  for batch in take(build_train_loader(tiny_config, ByteTokenizer(32), source=source), 3):
    assert all(index % 2 == 1 for index in batch["index"])
    assert captions_of(batch)[0].startswith("photo number") or not batch["token_mask"][0].any()


def test_truncated_image_is_replaced_from_the_same_batch(tiny_config):
  """A lazily opened, truncated file fails only when decoded: that must happen where it can be skipped."""
  source = PhotoSource(truncated=range(0, 64, 2))
  tiny_config.data.order = "sequential"
  loader = build_train_loader(tiny_config, ByteTokenizer(32), source=source)
  schedule = BatchSchedule(source.bucket_ids(buckets_from_config(tiny_config)), 8, "sequential", tiny_config.seed,
                           tiny_config.data.chunk_size)
  for step, batch in enumerate(take(loader, 3)):
    assert all(index % 2 == 1 for index in batch["index"])
    assert set(batch["index"]) <= set(schedule(step).indices.tolist())


def test_batch_size_must_split_over_processes(tiny_config):
  with pytest.raises(ValueError, match="train.batch_size=8 is not divisible by the 3 processes"):
    build_train_loader(tiny_config, ByteTokenizer(32), process_index=0, process_count=3)


def test_tiny_buckets_are_used(tiny_config):
  assert len(buckets_from_config(tiny_config)) == len(AspectRatioBucket(32, 64, 16)) == 6
