r"""Turns a folder of images with same-named .txt captions into a TFDS ArrayRecord dataset for training.

  python launch/prepare_data.py --images=DIR --output=OUT [--config=configs/base.py:default]

Bucket limits come from the config (`data.min_resolution`, `data.max_resolution`, `data.max_aspect_ratio`,
`model.patch_size`); train with `--config.data.source=folder --config.data.path=OUT`. Re-running with
unchanged inputs does nothing. The closing report is printed and written to OUT/report.json.
"""

import os

from absl import app, flags
from PIL import Image

from pixelhdm_jax import cli
from pixelhdm_jax.config import validate
from pixelhdm_jax.data.buckets import buckets_from_config
from pixelhdm_jax.data.prepare import format_report, prepare_folder

_IMAGES = flags.DEFINE_string("images", None, "Folder searched recursively for images and .txt captions.",
                              required=True)
_OUTPUT = flags.DEFINE_string("output", None, "Folder that receives the dataset, its index and report.json.",
                              required=True)
_CONFIG = cli.define_config("default", "Config whose buckets to use.")
_VALIDATION = flags.DEFINE_float("validation_fraction", 0.01, "Share of images (by path hash) in `validation`.")
_MAX_PIXELS = flags.DEFINE_integer("max_image_pixels", Image.MAX_IMAGE_PIXELS,
                                   "Larger images are skipped (decompression-bomb limit).")
_WORKERS = flags.DEFINE_integer("workers", min(8, os.cpu_count() or 1), "Processes that decode and convert.")


def main(argv):
  del argv
  config = validate(_CONFIG.value)
  try:
    report = prepare_folder(_IMAGES.value, _OUTPUT.value, buckets_from_config(config),
                            validation_fraction=_VALIDATION.value, max_image_pixels=_MAX_PIXELS.value,
                            workers=_WORKERS.value)
  except (FileNotFoundError, ValueError) as error:
    raise app.UsageError(str(error)) from error
  print(format_report(report))


if __name__ == "__main__":
  cli.run(main)
