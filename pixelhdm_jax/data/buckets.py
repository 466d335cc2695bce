"""Aspect-ratio buckets: the original's bucket list and its assignment rule, exactly.

A bucket is a (width, height) pair with both sides multiples of the patch size. Every training batch holds
images of one bucket, so the model compiles once per bucket shape. Generation and assignment follow
docs/original.md §8 (`bucket/generator/*.py` and `generator/matching.py` of the original).
"""

from __future__ import annotations

import math

import numpy as np

# Width / height ratios tried by the original, in its order.
ASPECT_RATIOS = (1.0, 4 / 3, 3 / 4, 3 / 2, 2 / 3, 16 / 9, 9 / 16, 2.0, 1 / 2)
# Weights of the assignment score: aspect mismatch (log ratio) and lost pixel fraction.
ASPECT_WEIGHT = 0.7
PIXEL_WEIGHT = 0.3
# `assign(..., allow_upscale=False)`'s id for an image that covers no bucket (the schedule leaves it out).
NO_BUCKET = -1
_ROWS_PER_CHUNK = 65536  # bounds the (images x buckets) score matrix of `assign`


class AspectRatioBucket:
  """The bucket list for a resolution range, and the rule that puts an image into a bucket.

  Attributes:
    buckets: (width, height) pairs sorted by (pixels, width); a bucket's id is its index here.
  """

  def __init__(self, min_resolution: int, max_resolution: int, patch_size: int, max_aspect_ratio: float = 2.0):
    if not 0 < patch_size <= min_resolution <= max_resolution:
      raise ValueError(f"need 0 < patch_size ({patch_size}) <= min_resolution ({min_resolution}) "
                       f"<= max_resolution ({max_resolution})")
    if max_aspect_ratio < 1:
      raise ValueError(f"max_aspect_ratio must be >= 1, got {max_aspect_ratio}")
    self.min_resolution = min_resolution
    self.max_resolution = max_resolution
    self.patch_size = patch_size
    self.max_aspect_ratio = max_aspect_ratio
    self.buckets: list[tuple[int, int]] = _generate(min_resolution, max_resolution, patch_size, max_aspect_ratio)
    sizes = np.asarray(self.buckets, np.float64)
    self._widths, self._heights = sizes[:, 0], sizes[:, 1]
    self._pixels = sizes[:, 0] * sizes[:, 1]
    self._log_aspects = np.log(sizes[:, 0] / sizes[:, 1])

  def __len__(self) -> int:
    return len(self.buckets)

  def __getitem__(self, bucket_id: int) -> tuple[int, int]:
    return self.buckets[bucket_id]

  def spec(self) -> dict:
    """The four numbers that define the list (stored with prepared data to tell whether ids still apply)."""
    return {"min_resolution": self.min_resolution, "max_resolution": self.max_resolution,
            "patch_size": self.patch_size, "max_aspect_ratio": float(self.max_aspect_ratio)}

  def bucket_for(self, width: int, height: int) -> int:
    """The id of the bucket for an image of `width` x `height` pixels."""
    return int(self.assign(np.asarray([width]), np.asarray([height]))[0])

  def assign(self, widths: np.ndarray, heights: np.ndarray, allow_upscale: bool = True) -> np.ndarray:
    """Bucket ids (int32) for arrays of image sizes, without decoding anything.

    The original's rule (`allow_upscale=True`): among buckets with no more pixels than the image, the one
    minimising 0.7·|ln a - ln a_b| + 0.3·(P - P_b)/P wins, the first (smallest) on ties. An image smaller than
    every bucket gets the best aspect match among the smallest buckets; a non-positive size gets bucket 0.
    Fewer pixels do not rule out upscaling (270x500 gets 256x512), so with `allow_upscale=False` only buckets
    that fit inside the image (both sides) compete, and an image that covers none gets `NO_BUCKET`.
    """
    widths = np.asarray(widths, np.float64).reshape(-1)
    heights = np.asarray(heights, np.float64).reshape(-1)
    ids = np.zeros(widths.shape, np.int32)
    for start in range(0, len(widths), _ROWS_PER_CHUNK):
      chunk = slice(start, start + _ROWS_PER_CHUNK)
      ids[chunk] = self._assign_chunk(widths[chunk], heights[chunk], allow_upscale)
    return ids

  def _assign_chunk(self, widths: np.ndarray, heights: np.ndarray, allow_upscale: bool) -> np.ndarray:
    valid = (widths > 0) & (heights > 0)
    w = np.where(valid, widths, 1.0)
    h = np.where(valid, heights, 1.0)
    log_aspect = np.log(np.clip(w / h, 1e-6, 1e6))[:, None]
    pixels = (w * h)[:, None]
    aspect_loss = np.abs(log_aspect - self._log_aspects[None, :])
    score = ASPECT_WEIGHT * aspect_loss + PIXEL_WEIGHT * (pixels - self._pixels[None, :]) / pixels
    if allow_upscale:
      fits = self._pixels[None, :] <= pixels
    else:
      fits = (self._widths[None, :] <= w[:, None]) & (self._heights[None, :] <= h[:, None])
    best = np.argmin(np.where(fits, score, np.inf), axis=1)
    if not allow_upscale:
      return np.where(valid & fits.any(axis=1), best, NO_BUCKET)
    smallest = self._pixels == self._pixels.min()
    fallback = np.argmin(np.where(smallest[None, :], aspect_loss, np.inf), axis=1)
    ids = np.where(fits.any(axis=1), best, fallback)
    return np.where(valid, ids, 0)


def _floor(value: float, patch: int) -> int:
  return int(value) // patch * patch


def _generate(min_res: int, max_res: int, patch: int, max_ar: float) -> list[tuple[int, int]]:
  """The original's bucket list: pixel-based, edge-based and square buckets, sorted by (w·h, w)."""
  bases = {_floor(r, patch) for r in range(min_res, max_res + 1, 4 * patch)} | {_floor(max_res, patch)}
  bases = sorted(r for r in bases if r >= min_res)
  aspects = [a for a in ASPECT_RATIOS if 1 / max_ar <= a <= max_ar]

  def aspect_ok(w: int, h: int) -> bool:
    return 1 / max_ar - 1e-9 <= w / h <= max_ar + 1e-9

  buckets = set()
  for r in bases:  # Pixel-based: about r² pixels at each aspect.
    for a in aspects:
      w, h = _floor(math.sqrt(r * r * a), patch), _floor(math.sqrt(r * r / a), patch)
      if min_res <= w <= max_res and min_res <= h <= max_res and aspect_ok(w, h):
        buckets.add((w, h))
  edges = [r for r in bases if r >= max_res // 2] or bases[-3:]
  for edge in edges:  # Edge-based: the long side is a base edge.
    for a in aspects:
      if a == 1.0:
        continue
      w, h = (edge, int(edge / a)) if a > 1 else (int(edge * a), edge)
      w, h = _floor(w, patch), _floor(h, patch)
      if w >= min_res and h >= min_res and aspect_ok(w, h):
        buckets.add((w, h))
  buckets.update((r, r) for r in bases)
  return sorted(buckets, key=lambda wh: (wh[0] * wh[1], wh[0]))


def buckets_from_config(config) -> AspectRatioBucket:
  """The buckets of a full config: limits from `config.data`, step from `config.model.patch_size`."""
  return AspectRatioBucket(config.data.min_resolution, config.data.max_resolution, config.model.patch_size,
                           config.data.max_aspect_ratio)

