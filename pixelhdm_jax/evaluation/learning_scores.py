"""Scores of what a small model learned, from images whose right answer is known (numpy only).

Shapes (`data/synthetic.py`, captions "a red circle on blue"): the share of border pixels near the named
background colour, the share of the shape's always-covered core near the named shape colour, and the IoU of
the pixels near the shape colour with the named shape drawn by `draw_shape` at its mean size in the centre.
Memorized photographs: the nearest photo of each sample (pixel MSE), the PSNR to its own photo, and the
patch-grid score (seams along the network's patch boundaries). `launch/bench_quality.py` reports them.
"""

from __future__ import annotations

import functools
import itertools
import math

import numpy as np
from PIL import Image, ImageDraw

from pixelhdm_jax.data.synthetic import COLOURS, SHAPES, draw_shape

# Euclidean RGB distance (0..255 per channel) within which a pixel counts as a named colour. The closest pair
# of COLOURS (yellow and orange) is 81 apart, so 40 never counts a pixel for two colours.
COLOUR_DISTANCE = 40.0
# The outer 1/8 of each side is always background: the shape (at most 0.65 of the short side, its centre
# moved at most 0.1 of the rest) reaches at most 0.86 of the way across.
BORDER_FRACTION = 1 / 8
MEAN_EXTENT = 0.5  # quantile of draw_shape's extent range 0.45..0.65: 0.55 of the short side
FIT_EXTENTS = (0.0, 0.5, 1.0)  # quantiles tried when asking which shape fits best: 0.45, 0.55, 0.65


def shape_captions() -> list[str]:
  """Every caption the synthetic dataset can draw (8 x 3 x 7 = 168): shape-major, then colour, then background."""
  return [f"a {colour} {shape} on {background}" for shape, colour, background in
          itertools.product(SHAPES, COLOURS, COLOURS) if background != colour]


def parse_caption(caption: str) -> tuple[str, str, str]:
  """(shape colour, shape, background colour) of a synthetic caption; ValueError for any other text."""
  words = caption.split(" ")
  if (len(words) != 5 or words[0] != "a" or words[3] != "on" or words[1] not in COLOURS or words[2] not in SHAPES
      or words[4] not in COLOURS):
    raise ValueError(f"{caption!r} is not a synthetic caption like 'a red circle on blue'")
  return words[1], words[2], words[4]


class _Quantiles:
  """Stands in for `draw_shape`'s generator: each `uniform(low, high)` returns the next fixed quantile of its
  range (extent, then horizontal offset, then vertical offset)."""

  def __init__(self, *quantiles: float):
    self._quantiles = iter(quantiles)

  def uniform(self, low: float, high: float) -> float:
    return low + next(self._quantiles) * (high - low)


@functools.lru_cache(maxsize=256)
def shape_mask(shape: str, width: int, height: int, extent: float = MEAN_EXTENT, x: float = 0.5,
               y: float = 0.5) -> np.ndarray:
  """bool (height, width): `shape` as `draw_shape` draws it with its extent and offsets at these quantiles of
  their ranges (0.5: 0.55 of the short side, centred)."""
  canvas = Image.new("L", (width, height), 0)
  draw_shape(ImageDraw.Draw(canvas), shape, 255, (width, height), _Quantiles(extent, x, y))
  mask = np.asarray(canvas) > 0
  mask.flags.writeable = False
  return mask


@functools.lru_cache(maxsize=64)
def core_mask(shape: str, width: int, height: int) -> np.ndarray:
  """bool (height, width): the pixels that every training image of `shape` covers (its smallest extent at the
  four extreme offsets; a convex shape covers the intersection at every offset and larger extent in between)."""
  mask = np.logical_and.reduce([shape_mask(shape, width, height, 0.0, x, y) for x in (0.0, 1.0) for y in (0.0, 1.0)])
  mask.flags.writeable = False
  return mask


def border_mask(width: int, height: int) -> np.ndarray:
  """bool (height, width): the outer `BORDER_FRACTION` of each side, which no shape reaches."""
  mask = np.ones((height, width), bool)
  dy, dx = math.ceil(height * BORDER_FRACTION), math.ceil(width * BORDER_FRACTION)
  mask[dy:height - dy, dx:width - dx] = False
  return mask


def near_colour(image: np.ndarray, colour: tuple[int, int, int], distance: float = COLOUR_DISTANCE) -> np.ndarray:
  """bool (H, W): pixels of uint8 `image` (H, W, 3) within `distance` (Euclidean RGB) of `colour`."""
  difference = image.astype(np.float64) - np.asarray(colour, np.float64)
  return np.sqrt(np.sum(difference**2, axis=-1)) <= distance


def iou(a: np.ndarray, b: np.ndarray) -> float:
  """Intersection over union of two bool masks; 0 when both are empty."""
  union = np.logical_or(a, b).sum()
  return float(np.logical_and(a, b).sum() / union) if union else 0.0


def score_shape_image(image: np.ndarray, caption: str) -> dict[str, float]:
  """How well uint8 `image` (H, W, 3) shows synthetic `caption`, each in [0, 1].

  background_accuracy: border pixels near the background colour; colour_accuracy: core pixels of the named
  shape near its colour; shape_iou: IoU of the pixels near the shape colour with the named shape at its mean
  size, centred; shape_recognized: 1 when those pixels fit the named shape better than the other two (each
  at its best of three sizes, centred) and overlap it at all.
  """
  colour, shape, background = parse_caption(caption)
  height, width = image.shape[:2]
  drawn = near_colour(image, COLOURS[colour])
  fits = {s: max(iou(drawn, shape_mask(s, width, height, extent)) for extent in FIT_EXTENTS) for s in SHAPES}
  return {
      "background_accuracy": float(near_colour(image, COLOURS[background])[border_mask(width, height)].mean()),
      "colour_accuracy": float(drawn[core_mask(shape, width, height)].mean()),
      "shape_iou": iou(drawn, shape_mask(shape, width, height)),
      "shape_recognized": float(fits[shape] > 0 and max(fits, key=fits.get) == shape),
  }


def background_at_noise(estimates: np.ndarray, captions: list[str]) -> dict[str, float]:
  """Does the prompt reach the network where only the prompt can tell the colours? `estimates` (N, H, W, 3), RGB
  0..255, are its one-step guesses of E[x | caption] from pure noise (x_hat at t = 0).

  background_error_at_noise: the mean RGB distance between each border's mean colour and the named background
  (0 for a network that follows the prompt; one that ignores it predicts the mean of all backgrounds, 148 away
  on the benchmark's captions). border_noise_at_noise: the border pixels' standard deviation, the input noise
  that the network failed to cancel (0 for a flat guess).
  """
  mask = border_mask(estimates.shape[2], estimates.shape[1])
  border = estimates[:, mask].astype(np.float64)  # (N, P, 3)
  named = np.asarray([COLOURS[parse_caption(caption)[2]] for caption in captions], np.float64)
  return {"background_error_at_noise": float(np.linalg.norm(border.mean(axis=1) - named, axis=-1).mean()),
          "border_noise_at_noise": float(border.std(axis=1).mean())}


def mean_squared_errors(samples: np.ndarray, photos: np.ndarray) -> np.ndarray:
  """(N, M): the mean squared pixel error (0..255 scale) of each of N samples to each of M photos."""
  a = samples.reshape(len(samples), -1).astype(np.float64)
  b = photos.reshape(len(photos), -1).astype(np.float64)
  return np.mean((a[:, None, :] - b[None, :, :])**2, axis=-1)


def nearest_photo(samples: np.ndarray, photos: np.ndarray) -> np.ndarray:
  """int (N,): the index of the photo with the smallest pixel MSE to each sample."""
  return np.argmin(mean_squared_errors(samples, photos), axis=1)


def psnr(samples: np.ndarray, photos: np.ndarray) -> np.ndarray:
  """(N,): PSNR in dB of sample i to photo i (uint8 images, peak 255); inf where they are equal."""
  errors = np.diagonal(mean_squared_errors(samples, photos)).copy()
  with np.errstate(divide="ignore"):
    return 10.0 * np.log10(255.0**2 / errors)


def patch_grid_score(images: np.ndarray, patch_size: int) -> float:
  """Mean |difference| of neighbouring pixels across patch boundaries over that of neighbours inside patches,
  pooled over the images (N, H, W, C) and both directions: 1 = no grid, > 1 = seams; a flat image scores 1."""
  pixels = images.astype(np.float64)
  if min(pixels.shape[1:3]) <= patch_size:
    raise ValueError(f"images of {pixels.shape[1]}x{pixels.shape[2]} hold no patch boundary of patch size "
                     f"{patch_size}")
  across, inside = [], []
  for axis in (1, 2):
    differences = np.abs(np.diff(pixels, axis=axis))
    crossing = (np.arange(differences.shape[axis]) + 1) % patch_size == 0  # pair (j, j + 1) straddles a boundary
    across.append(np.compress(crossing, differences, axis=axis).ravel())
    inside.append(np.compress(~crossing, differences, axis=axis).ravel())
  across_mean, inside_mean = np.concatenate(across).mean(), np.concatenate(inside).mean()
  if inside_mean == 0:
    return 1.0 if across_mean == 0 else math.inf
  return float(across_mean / inside_mean)
