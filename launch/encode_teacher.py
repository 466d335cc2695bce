r"""Encodes the training images of a prepared folder with the frozen DINOv3 into its teacher cache (dino.cache=True).

  python launch/encode_teacher.py --config=configs/base.py:default --config.data.path=OUT [--batch_size=16]

Give the same --config (and overrides of `dino.*`, the buckets, `data.allow_upscale`, `data.jpeg_draft`,
`data.split`) as the training run: the cache is named by them, and training refuses one made with other settings.
Each image is stored at its training bucket with a centre crop and no flip (a run with data.random_crop or
random_flip uses the live teacher). Runs over all devices of this host; an interrupted run resumes.
"""

from absl import app, flags

from pixelhdm_jax import cli
from pixelhdm_jax.config import validate

_CONFIG = cli.define_config("default", "Config of the training run (data.path: the prepared folder).")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 16, "Images per device and step.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  from pixelhdm_jax.encoders.teacher_features import encode_teacher_features
  config = _CONFIG.value
  config.dino.cache = False  # validated as the encoding run it is, whatever the training config says
  config.data.source = "folder"
  directory = encode_teacher_features(validate(config), batch_size=_BATCH_SIZE.value)
  print(f"teacher cache: {directory} (train with --config.dino.cache=True --config.data.path={config.data.path})")


if __name__ == "__main__":
  cli.run(main)
