"""A generated corpus of good and bad images for `prepare_folder`, and what must happen to each file."""

import io
import pathlib
import struct
import zlib

import numpy as np
from PIL import Image

# What `prepare_folder(..., max_image_pixels=BIG_LIMIT)` with 32..64 px buckets must do with each file.
BIG_LIMIT = 50_000
KEPT = ("good/rgb.jpg", "good/square.png", "good/photo.webp", "nested/deep/pic.JPEG", "misc/mislabelled.jpg",
        "captions/missing.png", "captions/empty.png", "captions/latin1.png", "captions/bom.png")
CONVERTED = {
    "modes/gray.png": ["converted L to RGB"],
    "modes/cmyk.jpg": ["converted CMYK to RGB"],
    "modes/palette.gif": ["converted P to RGB", "re-encoded GIF as PNG"],
    "modes/animated.gif": ["converted P to RGB", "kept the first of 2 frames", "re-encoded GIF as PNG"],
    "modes/rgba.png": ["flattened RGBA transparency onto white"],
    "modes/gray16.png": ["scaled 16-bit I;16 to 8-bit RGB"],
    "modes/image.bmp": ["re-encoded BMP as PNG"],
    "modes/image.tiff": ["re-encoded TIFF as PNG"],
    "exif/rotated.jpg": ["rotated upright (EXIF orientation 6)"],
}
SKIPPED = {
    "bad/empty.jpg": "empty file",
    "bad/truncated.jpg": "truncated or corrupt",
    "bad/garbage.png": "not a readable image",
    "bad/text.jpg": "not a readable image",
    "bad/small.png": "too small",
    "bad/bomb.png": "too large",
    "bad/big.png": "too large",
    "misc/notes.md": "unsupported extension",
}
CAPTION_ISSUES = {
    "captions/missing.png": "missing caption (trained with the empty prompt)",
    "captions/empty.png": "empty caption (trained with the empty prompt)",
    "captions/latin1.png": "caption not UTF-8 (decoded with replacement characters)",
}


def _pattern(width: int, height: int, seed: int = 0) -> np.ndarray:
  """A smooth colour pattern (compresses well, survives JPEG)."""
  y, x = np.mgrid[0:height, 0:width]
  rng = np.random.default_rng(seed)
  a, b, c = rng.uniform(0.02, 0.2, 3)
  return np.stack([128 + 100 * np.sin(a * x), 128 + 100 * np.cos(b * y), 128 + 100 * np.sin(c * (x + y))],
                  -1).astype(np.uint8)


def _encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
  buffer = io.BytesIO()
  image.save(buffer, format=fmt, **kwargs)
  return buffer.getvalue()


def _bomb_png(width: int, height: int) -> bytes:
  """A small PNG whose header claims `width` x `height` pixels (a decompression bomb, without the bomb)."""

  def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

  header = chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
  return b"\x89PNG\r\n\x1a\n" + header + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def write_corpus(root: pathlib.Path) -> pathlib.Path:
  """Writes the bad-input corpus (KEPT, CONVERTED, SKIPPED above) with captions under `root`."""
  files: dict[str, bytes] = {}
  rgb = Image.fromarray(_pattern(80, 60))
  files["good/rgb.jpg"] = _encode(rgb, "JPEG", quality=90)
  files["good/square.png"] = _encode(Image.fromarray(_pattern(64, 64, 1)), "PNG")
  files["good/photo.webp"] = _encode(Image.fromarray(_pattern(70, 50, 2)), "WEBP", quality=90)
  files["nested/deep/pic.JPEG"] = _encode(Image.fromarray(_pattern(50, 90, 3)), "JPEG")
  files["misc/mislabelled.jpg"] = _encode(Image.fromarray(_pattern(64, 48, 4)), "PNG")
  for name in ("missing", "empty", "latin1", "bom"):
    files[f"captions/{name}.png"] = _encode(Image.fromarray(_pattern(48, 48, 5)), "PNG")
  files["modes/gray.png"] = _encode(rgb.convert("L"), "PNG")
  files["modes/cmyk.jpg"] = _encode(rgb.convert("CMYK"), "JPEG")
  files["modes/palette.gif"] = _encode(rgb.convert("P"), "GIF")
  frames = [rgb.convert("P"), Image.fromarray(_pattern(80, 60, 6)).convert("P")]
  files["modes/animated.gif"] = _encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
  rgba = rgb.convert("RGBA")
  rgba.putalpha(Image.fromarray(np.tile(np.linspace(0, 255, 80, dtype=np.uint8), (60, 1))))
  files["modes/rgba.png"] = _encode(rgba, "PNG")
  files["modes/gray16.png"] = _encode(Image.fromarray(np.full((60, 80), 32896, np.uint16)), "PNG")
  files["modes/image.bmp"] = _encode(rgb, "BMP")
  files["modes/image.tiff"] = _encode(rgb, "TIFF")
  exif = Image.Exif()
  exif[0x0112] = 6
  files["exif/rotated.jpg"] = _encode(Image.fromarray(_pattern(80, 40, 7)), "JPEG", exif=exif)
  files["bad/empty.jpg"] = b""
  whole = _encode(Image.fromarray(_pattern(200, 200, 8)), "JPEG")
  files["bad/truncated.jpg"] = whole[:len(whole) // 2]
  files["bad/garbage.png"] = np.random.default_rng(0).integers(0, 256, 500, np.uint8).tobytes()
  files["bad/text.jpg"] = b"this is not an image\n"
  files["bad/small.png"] = _encode(Image.fromarray(_pattern(20, 100)), "PNG")
  files["bad/bomb.png"] = _bomb_png(40_000, 40_000)
  files["bad/big.png"] = _encode(Image.fromarray(_pattern(300, 300)), "PNG")
  files["misc/notes.md"] = b"# not an image\n"
  for relpath, data in files.items():
    path = root / relpath
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    if not relpath.startswith("captions/") and relpath != "misc/notes.md":
      path.with_suffix(".txt").write_text(f"caption of {relpath}\n", encoding="utf-8")
  (root / "captions/empty.txt").write_text("  \n", encoding="utf-8")
  (root / "captions/latin1.txt").write_bytes("un caf\u00e9".encode("latin-1"))
  (root / "captions/bom.txt").write_bytes("\ufeffa caption with a BOM".encode("utf-8"))
  return root
