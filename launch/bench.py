r"""Benchmarks the train step or the sampling loop on synthetic data and prints a table.

  python launch/bench.py --config=configs/base.py:default --mode=train --height=512 --width=512 \
      --batch_size=32 --steps=20 --json=/tmp/bench/train_512.json --config.model.attention=cudnn
  python launch/bench.py --config=configs/base.py:default --mode=sample --height=512 --width=512 \
      --batch_size=8 --steps=3 --json=/tmp/bench/sample_512.json
  python launch/bench.py --config=configs/base.py:default --height=512 --width=512 --batch_size=32 \
      --text_cache --teacher_cache      # the step on cached encodings: no Qwen3, no DINOv3

Any config field can be overridden (`--config.model.remat_policy=dots`, `--config.mesh.shape="(1,-1,1)"`).
Pretrained encoders are replaced by random ones of the same size unless --pretrained_encoders. Definitions
of every number: `pixelhdm_jax/perf/bench.py` and docs/performance.md.
"""

import shlex
import sys

from absl import app, flags

from pixelhdm_jax import cli, parallel
from pixelhdm_jax.compilation_cache import configure_compilation_cache

_CONFIG = cli.define_config("default", "Config file with a preset.")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "sample"], "What to time: a train step or a sampling loop.")
_HEIGHT = flags.DEFINE_integer("height", None, "Image height (default: data.max_resolution).")
_WIDTH = flags.DEFINE_integer("width", None, "Image width (default: data.max_resolution).")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", None, "Global images per step (default: train.batch_size for "
                                   "train, 8 for sample).")
_STEPS = flags.DEFINE_integer("steps", 10, "Timed steps (the median is reported).")
_WARMUP = flags.DEFINE_integer("warmup", 2, "Untimed steps after the compile.")
_JSON = flags.DEFINE_string("json", None, "Write the result as JSON to this file.")
_PROFILE = flags.DEFINE_string("profile", None, "Folder for a JAX profiler trace of the timed steps (TensorBoard's "
                               "profile plugin reads it; docs/performance.md).")
_TEXT_CACHE = flags.DEFINE_bool("text_cache", False, "Train mode: the step that reads cached text encodings (random "
                                 "stand-ins of their shape and dtype) and runs no Qwen3, as text.cache=True.")
_TEACHER_CACHE = flags.DEFINE_bool("teacher_cache", False, "Train mode: the step that reads cached DINOv3 patch "
                                   "features (random stand-ins) and runs no DINOv3.")
_PRETRAINED = flags.DEFINE_bool("pretrained_encoders", False, "Load the configured pretrained encoders instead of "
                                "random ones of the same size.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  parallel.maybe_initialize_distributed()
  configure_compilation_cache()
  from pixelhdm_jax.perf import bench  # after jax.distributed, which must come first
  config = _CONFIG.value
  size = config.data.max_resolution
  batch_size = _BATCH_SIZE.value or (config.train.batch_size if _MODE.value == "train" else 8)
  try:
    result = bench.run(config, mode=_MODE.value, height=_HEIGHT.value or size, width=_WIDTH.value or size,
                       batch_size=batch_size, steps=_STEPS.value, warmup=_WARMUP.value,
                       pretrained_encoders=_PRETRAINED.value, profile=_PROFILE.value,
                       text_cache=_TEXT_CACHE.value, teacher_cache=_TEACHER_CACHE.value)
  except ValueError as error:
    raise app.UsageError(str(error)) from error
  result["command"] = shlex.join([sys.executable, *sys.argv])
  print(bench.table([result]))
  if _JSON.value:
    print(f"wrote {bench.write_json(result, _JSON.value)}")


if __name__ == "__main__":
  cli.run(main)
