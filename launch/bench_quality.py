r"""Learning benchmarks on a laptop CPU: train the tiny preset, sample it, score what it learned; one JSON line.

  python launch/bench_quality.py shapes --output=/tmp/quality
  python launch/bench_quality.py memorize --output=/tmp/quality   # photos from pip install -e ".[bench]"

shapes: the config's train.num_steps on the synthetic shapes, then every caption (168; --num_prompts keeps a
seeded subset) sampled and scored for background colour, shape colour and shape IoU. memorize: 3,000 steps on 8
photo crops, then each caption sampled and scored for recall (nearest photo, PSNR) and patch seams. PNG grids
and per-prompt scores go to --output; the JSON line goes to stdout (progress and logs to stderr). Any config field
can be overridden (`--config.optim.learning_rate=3e-4`). Definitions: pixelhdm_jax/perf/quality.py and
pixelhdm_jax/evaluation/learning_scores.py.
"""

import contextlib
import json
import shlex
import sys
import tempfile

from absl import app, flags, logging

from pixelhdm_jax import cli
from pixelhdm_jax.compilation_cache import configure_compilation_cache
from pixelhdm_jax.errors import ConfigError
from pixelhdm_jax.perf import quality

_CONFIG = cli.define_config("tiny", "Config file with a preset.")
_OUTPUT = flags.DEFINE_string("output", None, "Folder that receives the grid PNG and the scores.", required=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Folder for the photos, dataset and training run (default: a new "
                               "temporary folder); it must not hold a training run already.")
_TRAIN_STEPS = flags.DEFINE_integer("train_steps", None, "Training steps (default: shapes train.num_steps, "
                                    "memorize 3000).")
_SAMPLE_STEPS = flags.DEFINE_integer("sample_steps", None, "Solver steps (default: config.sample.num_steps).")
_NUM_PROMPTS = flags.DEFINE_integer("num_prompts", None, "shapes: score a seeded subset of this many of the 168 "
                                    "captions (default: all).")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the sampling noise.")


def main(argv):
  if len(argv) != 2 or argv[1] not in quality.BENCHMARKS:
    raise app.UsageError(f"name one benchmark: {' or '.join(quality.BENCHMARKS)} (got {' '.join(argv[1:])!r})",
                         exitcode=2)
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity("warning")  # Orbax and Grain log every save and restore at INFO; --verbosity=0 shows it
  configure_compilation_cache()
  workdir = _WORKDIR.value or tempfile.mkdtemp(prefix=f"pixelhdm_{argv[1]}_")
  try:
    with contextlib.redirect_stdout(sys.stderr):  # stdout holds the JSON line only
      result = quality.run(argv[1], _CONFIG.value, workdir, _OUTPUT.value, train_steps=_TRAIN_STEPS.value,
                           sample_steps=_SAMPLE_STEPS.value, num_prompts=_NUM_PROMPTS.value, seed=_SEED.value)
  except (ConfigError, ImportError) as error:
    raise app.UsageError(str(error), exitcode=2) from error
  result["command"] = shlex.join([sys.executable, *sys.argv])
  print(json.dumps(result))


if __name__ == "__main__":
  cli.run(main)
