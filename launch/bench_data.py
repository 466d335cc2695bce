r"""Measures data-loading throughput (decoded + resized images per second) on this machine.

  python launch/bench_data.py --config=configs/base.py:default --config.train.batch_size=16

Prints one line per measurement; record them in docs/performance.md with the machine and the command.
"""

from absl import flags

from pixelhdm_jax import cli
from pixelhdm_jax.config import validate
from pixelhdm_jax.data.throughput import measure
from pixelhdm_jax.encoders.tokenizers import ByteTokenizer

_CONFIG = cli.define_config("default", "Config whose data settings to use.")
_PHOTOS = flags.DEFINE_integer("photos", 96, "Number of ~1 MP JPEG photos to generate.")
_WORKERS = flags.DEFINE_list("workers", ["1", "2"], "Grain worker counts to time the whole loader with.")
_BATCHES = flags.DEFINE_integer("batches", 8, "Batches timed per loader run.")


def main(argv):
  del argv
  config = validate(_CONFIG.value)
  results = measure(config, ByteTokenizer(config.text.max_length), photos=_PHOTOS.value,
                    workers=tuple(int(w) for w in _WORKERS.value), batches=_BATCHES.value)
  for name, rate in results.items():
    print(f"{name}: {rate:.1f}")


if __name__ == "__main__":
  cli.run(main)
