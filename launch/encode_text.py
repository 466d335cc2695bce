r"""Encodes the captions of a prepared folder with the frozen Qwen3 into its text cache, for `text.cache=True`.

  python launch/encode_text.py --config=configs/base.py:default --config.data.path=OUT [--batch_size=64]

Give the same --config (and overrides of `text.*`, `data.path`, `data.split`) as the training run: the cache is
named by the encoder's weights, `text.hidden_layer`, `text.max_length` and the compute dtype, and training refuses
one made with other settings. Runs over all devices of this host; an interrupted run resumes where it stopped.
"""

from absl import app, flags

from pixelhdm_jax import cli
from pixelhdm_jax.config import validate

_CONFIG = cli.define_config("default", "Config of the training run (data.path: the prepared folder).")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 64, "Captions per device and step.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  from pixelhdm_jax.encoders.caption_cache import encode_captions
  config = _CONFIG.value
  config.text.cache = False  # validated as the encoding run it is, whatever the training config says
  config.data.source = "folder"
  directory = encode_captions(validate(config), batch_size=_BATCH_SIZE.value)
  print(f"text cache: {directory} (train with --config.text.cache=True --config.data.path={config.data.path})")


if __name__ == "__main__":
  cli.run(main)
