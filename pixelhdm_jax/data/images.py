"""Image decoding and preprocessing shared by `prepare.py` and the training loader, and the pixel range.

Preprocessing is the original's (docs/original.md §8): cover-resize with Lanczos so the
bucket fits inside, crop the bucket at the centre or at a random offset, optional horizontal flip. The
loader hands uint8 pixels to the device; the train step maps them to [-1, 1] (`images_to_model_range`) and
sampling maps the network's images back (`to_uint8`). Both take numpy or JAX arrays (array methods only), so
this module imports no JAX.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageOps

WHITE = (255, 255, 255)
_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def images_to_model_range(images):
  """uint8 [0, 255] -> float32 [-1, 1] (x / 127.5 - 1)."""
  return images.astype(np.float32) / 127.5 - 1.0


def to_uint8(images):
  """[-1, 1] -> uint8 by rounding (the original truncated) of clip((x + 1) / 2) * 255."""
  return (((images + 1.0) / 2.0).clip(0.0, 1.0) * 255.0).round().astype(np.uint8)


def open_image(data: bytes, draft_size: tuple[int, int] | None = None) -> Image.Image:
  """Opens encoded image bytes lazily; a JPEG is decoded at the smallest DCT scale still >= `draft_size`."""
  image = Image.open(io.BytesIO(data))
  if draft_size is not None and image.format == "JPEG":
    image.draft("RGB", draft_size)
  return image


def to_rgb(image: Image.Image) -> tuple[Image.Image, list[str]]:
  """Any PIL image as 8-bit RGB, with notes on what was converted (empty when it already was RGB).

  Transparency is flattened onto white (the original's plain `convert("RGB")` shows whatever colour
  hides under transparent pixels); 16-bit grayscale is scaled to 8 bits instead of clipped.
  """
  mode = image.mode
  if mode == "RGB":
    return image, []
  if mode == "P" and "transparency" in image.info:
    image = image.convert("RGBA")
  if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
    rgba = image.convert("RGBA")
    flat = Image.new("RGBA", rgba.size, WHITE + (255,))
    flat.alpha_composite(rgba)
    return flat.convert("RGB"), [f"flattened {mode} transparency onto white"]
  if image.mode in _SIXTEEN_BIT_MODES:
    pixels = np.asarray(image).astype(np.float64) / 257.0
    gray = Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8), "L")
    return gray.convert("RGB"), [f"scaled 16-bit {mode} to 8-bit RGB"]
  if image.mode == "F":
    pixels = np.asarray(image, np.float64)
    pixels = pixels * 255.0 if pixels.max(initial=0.0) <= 1.0 else pixels
    gray = Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8), "L")
    return gray.convert("RGB"), ["converted float F to 8-bit RGB"]
  return image.convert("RGB"), [f"converted {mode} to RGB"]


def exif_upright(image: Image.Image) -> tuple[Image.Image, list[str]]:
  """The image rotated/flipped as its EXIF orientation says, with a note when that changed anything."""
  orientation = image.getexif().get(0x0112, 1)
  if orientation in (None, 1):
    return image, []
  return ImageOps.exif_transpose(image), [f"rotated upright (EXIF orientation {orientation})"]


def decoded_rgb(image: Image.Image) -> tuple[Image.Image, list[str]]:
  """The image upright (EXIF), as 8-bit RGB and fully decoded, with notes on what changed.

  PIL opens lazily: decoding here, not later in the resize, makes a truncated file fail where the caller
  can skip it.
  """
  upright, notes = exif_upright(image)
  rgb, converted = to_rgb(upright)
  rgb.load()
  return rgb, notes + converted


def cover_crop(image: Image.Image, size: tuple[int, int], rng: np.random.Generator | None = None,
               flip: bool = False) -> np.ndarray:
  """Resizes `image` (RGB) to cover `size` = (width, height), crops it and returns uint8 (height, width, 3).

  Args:
    image: an RGB image of any size.
    size: the bucket, (width, height).
    rng: draws the crop offset; None crops at the centre.
    flip: mirror left-right after cropping.
  """
  tw, th = size
  width, height = image.size
  scale = max(tw / width, th / height)
  if abs(scale - 1.0) > 1e-6:
    image = image.resize((max(int(width * scale), tw), max(int(height * scale), th)), Image.Resampling.LANCZOS)
    width, height = image.size
  if rng is None:
    left, top = (width - tw) // 2, (height - th) // 2
  else:
    left, top = int(rng.integers(0, width - tw + 1)), int(rng.integers(0, height - th + 1))
  pixels = np.asarray(image.crop((left, top, left + tw, top + th)), np.uint8)
  return pixels[:, ::-1] if flip else pixels
