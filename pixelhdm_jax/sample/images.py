"""Images in and out of sampling: the image-to-image input, PIL conversion, PNG files and grids."""

from __future__ import annotations

import os

import numpy as np
from etils import epath
from PIL import Image

from pixelhdm_jax import storage
from pixelhdm_jax.data.images import decoded_rgb


def load_init_image(image: Image.Image | np.ndarray, height: int | None, width: int | None,
                    patch: int) -> np.ndarray:
  """uint8 (H, W, 3): an RGB image resized (Lanczos) to (height, width); a missing side keeps the image's,
  floored to whole patches (as the original)."""
  if isinstance(image, np.ndarray):
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
      raise ValueError(f"init_image must be a PIL image or a uint8 (H, W, 3) array, got {image.dtype} "
                       f"{image.shape}")
    image = Image.fromarray(image)
  image, _ = decoded_rgb(image)  # upright and RGB as in training (transparency on white)
  height = height or max(patch, image.height // patch * patch)
  width = width or max(patch, image.width // patch * patch)
  if image.size != (width, height):
    image = image.resize((width, height), Image.LANCZOS)
  return np.asarray(image, np.uint8)


def to_pil(images: np.ndarray) -> list[Image.Image]:
  """uint8 (N, H, W, 3) -> N RGB images."""
  return [Image.fromarray(image) for image in np.asarray(images, np.uint8)]


def image_grid(images: np.ndarray, columns: int) -> Image.Image:
  """uint8 (N, H, W, 3) -> one image, `columns` per row in order; an incomplete last row is black."""
  count, height, width, channels = images.shape
  rows = -(-count // columns)
  padded = np.zeros((rows * columns, height, width, channels), np.uint8)
  padded[:count] = images
  grid = padded.reshape(rows, columns, height, width, channels).transpose(0, 2, 1, 3, 4)
  return Image.fromarray(grid.reshape(rows * height, columns * width, channels))


def save_png(image: Image.Image, path: epath.Path) -> None:
  """Writes `image` as a PNG file at `path` (local or cloud)."""
  with path.open("wb") as file:
    image.save(file, format="PNG")


def save_images(images: np.ndarray, output: str | os.PathLike, num_images_per_prompt: int) -> list[epath.Path]:
  """Writes `prompt{p:03d}_image{i:02d}.png` per image and `grid.png` (a row per prompt); returns the paths,
  the grid last."""
  output = storage.location(output)
  output.mkdir(parents=True, exist_ok=True)
  paths = []
  for k, image in enumerate(to_pil(images)):
    paths.append(output / f"prompt{k // num_images_per_prompt:03d}_image{k % num_images_per_prompt:02d}.png")
    save_png(image, paths[-1])
  paths.append(output / "grid.png")
  save_png(image_grid(images, num_images_per_prompt), paths[-1])
  return paths
