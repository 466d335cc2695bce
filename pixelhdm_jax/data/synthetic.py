"""The built-in synthetic dataset: one coloured shape on a plain background, with a caption that says so.

Sample i is a pure function of i ("a red circle on blue": the shape's colour, the shape, the background
colour, at most 27 bytes so it fits the tiny preset's 32 tokens), drawn at whatever bucket size is asked
for, so it needs no files and the `tiny` preset trains on it in minutes: flat colours and one centred
shape are easy for a small model to learn, and the caption names every visible property.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from pixelhdm_jax.data.buckets import AspectRatioBucket

COLOURS = {
    "red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (240, 220, 40),
    "white": (245, 245, 245), "black": (20, 20, 20), "orange": (245, 140, 30), "purple": (140, 60, 180),
}
SHAPES = ("circle", "square", "triangle")
_DATASET_SEED = 20240611  # fixes which bucket each index has, independently of the run's seed


class SyntheticSource:
  """`size` procedurally drawn captioned images, spread uniformly over the buckets."""

  def __init__(self, size: int):
    if size <= 0:
      raise ValueError(f"the synthetic dataset needs a positive size, got {size}")
    self.size = size

  def __len__(self) -> int:
    return self.size

  def bucket_ids(self, buckets: AspectRatioBucket) -> np.ndarray:
    return np.random.default_rng(_DATASET_SEED).integers(0, len(buckets), size=self.size).astype(np.int32)

  def example(self, index: int, size: tuple[int, int]) -> tuple[Image.Image, str]:
    """Sample `index` drawn at `size` = (width, height), and its caption."""
    rng = np.random.default_rng([_DATASET_SEED, index])
    names = list(COLOURS)
    background, foreground = rng.choice(len(names), size=2, replace=False)
    shape = SHAPES[int(rng.integers(len(SHAPES)))]
    image = Image.new("RGB", size, COLOURS[names[background]])
    draw_shape(ImageDraw.Draw(image), shape, COLOURS[names[foreground]], size, rng)
    return image, f"a {names[foreground]} {shape} on {names[background]}"


def draw_shape(draw: ImageDraw.ImageDraw, shape: str, colour: tuple[int, int, int], size: tuple[int, int],
               rng: np.random.Generator) -> None:
  """Draws one shape of about half the short side, near the centre."""
  width, height = size
  extent = min(width, height) * rng.uniform(0.45, 0.65)
  cx = width / 2 + rng.uniform(-0.1, 0.1) * (width - extent)
  cy = height / 2 + rng.uniform(-0.1, 0.1) * (height - extent)
  half = extent / 2
  box = (cx - half, cy - half, cx + half, cy + half)
  if shape == "circle":
    draw.ellipse(box, fill=colour)
  elif shape == "square":
    draw.rectangle(box, fill=colour)
  else:
    draw.polygon([(cx, cy - half), (cx + half, cy + half), (cx - half, cy + half)], fill=colour)
