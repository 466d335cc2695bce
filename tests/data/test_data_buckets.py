"""Bucket lists and assignment, against the original's list and a table worked out by hand from the rule."""

import numpy as np
import pytest

from configs import base
from pixelhdm_jax.data.buckets import NO_BUCKET, AspectRatioBucket, buckets_from_config

# The original's list (docs/original.md §8), (w, h), in its id order.
ORIGINAL_256_512 = [
    (256, 256), (256, 384), (384, 256), (272, 368), (368, 272), (320, 320), (288, 384), (384, 288), (288, 448),
    (448, 288), (256, 512), (512, 256), (320, 432), (432, 320), (304, 464), (464, 304), (288, 512), (384, 384),
    (512, 288), (336, 448), (448, 336), (336, 512), (512, 336), (384, 512), (512, 384), (448, 448), (512, 512),
]


def test_original_bucket_lists():
  assert AspectRatioBucket(256, 512, 16, 2.0).buckets == ORIGINAL_256_512
  assert len(AspectRatioBucket(256, 1024, 16, 2.0)) == 123


def test_tiny_buckets():
  # Bases 32 and 64; pixel-based 64x48 / 48x64; edge-based 64x32 / 32x64 (the 4/3 edge bucket repeats 64x48).
  assert AspectRatioBucket(32, 64, 16).buckets == [(32, 32), (32, 64), (64, 32), (48, 64), (64, 48), (64, 64)]
  assert buckets_from_config(base.get_config("tiny")).buckets == [(32, 32)]  # the tiny preset's one bucket


def test_every_bucket_respects_limits():
  buckets = AspectRatioBucket(256, 1024, 16, 2.0)
  for w, h in buckets.buckets:
    assert w % 16 == 0 and h % 16 == 0 and min(w, h) >= 256 and max(w, h) <= 1024
    assert 0.5 - 1e-9 <= w / h <= 2.0 + 1e-9
  pixels = [w * h for w, h in buckets.buckets]
  assert pixels == sorted(pixels)


# (image width, height) -> bucket (w, h) for 256..512. Scores (0.7 |ln a - ln a_b| + 0.3 (P - P_b) / P) by hand:
ASSIGNMENTS = [
    ((512, 512), (512, 512)),  # exact: score 0
    ((384, 384), (384, 384)),  # exact, though 288x512 and 512x288 have the same pixel count
    ((1024, 1024), (512, 512)),  # 0.225 vs 384x512: 0.201 + 0.244
    ((4000, 3000), (512, 384)),  # exact aspect 0.295 vs 512x512: 0.201 + 0.293
    ((600, 400), (512, 336)),  # 0.011 + 0.085 beats 464x304 (0.136), 512x384 (0.137), 384x256 (0.177)
    ((400, 300), (384, 288)),  # exact aspect + 0.024 beats 368x272 (0.060); 512x384 would upscale
    ((1000, 500), (512, 256)),  # exact aspect 0.221 beats 512x288 (0.294)
    ((200, 800), (256, 512)),  # the most portrait bucket that fits: 0.485 + 0.054
    ((300, 300), (256, 256)),  # only 256x256 has <= 90000 pixels
    ((300, 200), (256, 256)),  # 60000 px: no bucket fits -> best aspect among the smallest (only 256x256)
    ((100, 400), (256, 256)),  # fallback again
    ((0, 100), (256, 256)),  # non-positive size -> bucket 0
    ((-3, -3), (256, 256)),
]


@pytest.mark.parametrize("size,expected", ASSIGNMENTS)
def test_assignment_table(size, expected):
  buckets = AspectRatioBucket(256, 512, 16, 2.0)
  assert buckets[buckets.bucket_for(*size)] == expected


@pytest.mark.parametrize("size,expected", [((64, 64), (64, 64)), ((128, 64), (64, 32)), ((100, 75), (64, 48)),
                                           ((40, 40), (32, 32)), ((20, 20), (32, 32))])
def test_tiny_assignment(size, expected):
  buckets = AspectRatioBucket(32, 64, 16)
  assert buckets[buckets.bucket_for(*size)] == expected


def test_assign_never_upscales_pixels_and_matches_bucket_for():
  buckets = AspectRatioBucket(256, 1024, 16)
  rng = np.random.default_rng(0)
  widths, heights = rng.integers(200, 3000, 300), rng.integers(200, 3000, 300)
  ids = buckets.assign(widths, heights)
  for w, h, bucket in zip(widths, heights, ids):
    assert bucket == buckets.bucket_for(int(w), int(h))
    bw, bh = buckets[bucket]
    assert bw * bh <= w * h or w * h < 256 * 256


# Without upscaling (256..512): only buckets inside the image compete; by hand as above.
COVERED_ASSIGNMENTS = [
    ((600, 400), (512, 336)),  # the original's bucket fits inside: unchanged
    ((270, 500), (256, 384)),  # the original's 256x512 is 12 rows taller; 256x384: 0.147 + 0.082 beats 256x256
    ((320, 240), None),  # 240 rows: no bucket fits (the original upscales it into 256x256)
    ((1000, 250), None),
    ((0, 100), None),
]


@pytest.mark.parametrize("size,expected", COVERED_ASSIGNMENTS)
def test_assignment_without_upscaling(size, expected):
  buckets = AspectRatioBucket(256, 512, 16, 2.0)
  [bucket] = buckets.assign(*np.asarray([size]).T, allow_upscale=False)
  assert (None if bucket == NO_BUCKET else buckets[bucket]) == expected


def test_assign_without_upscaling_keeps_every_covered_bucket_and_skips_only_short_sides():
  buckets = AspectRatioBucket(256, 1024, 16)
  rng = np.random.default_rng(1)
  widths, heights = rng.integers(150, 1500, 2000), rng.integers(150, 1500, 2000)
  original, covered = buckets.assign(widths, heights), buckets.assign(widths, heights, allow_upscale=False)
  sides = np.asarray(buckets.buckets)
  fits = (sides[original, 0] <= widths) & (sides[original, 1] <= heights)
  np.testing.assert_array_equal(covered[fits], original[fits])
  np.testing.assert_array_equal(covered == NO_BUCKET, np.minimum(widths, heights) < 256)
  kept = covered != NO_BUCKET
  assert ((sides[covered[kept]] <= np.stack([widths, heights], 1)[kept]).all() and (~fits & kept).any())


def test_assign_in_chunks_equals_assign_at_once(monkeypatch):
  from pixelhdm_jax.data import buckets as buckets_module
  rng = np.random.default_rng(3)
  widths, heights = rng.integers(100, 1500, 300), rng.integers(100, 1500, 300)
  bucket = AspectRatioBucket(256, 1024, 16)
  at_once = bucket.assign(widths, heights)
  monkeypatch.setattr(buckets_module, "_ROWS_PER_CHUNK", 7)
  np.testing.assert_array_equal(bucket.assign(widths, heights), at_once)
