r"""FID, FD-DINOv3, precision and recall: reference statistics of a dataset, and the scores of a trained network.

  python launch/evaluate.py reference --config=configs/base.py:default --config.data.path=DATA \
      --num_images=10000 --output=STATS.npz [--size=512] [--inception_weights=pt_inception-2015-12-05-6726825d.pth]
  python launch/evaluate.py samples --workdir=DIR --reference=STATS.npz --num_images=10000 \
      [--prompt_file=F] [--step=S] [--use_ema=false] [--solver=heun --num_steps=50 --guidance_scale=4]

`reference` reads the first N images of a fixed permutation of `config.data`, centre-cropped to size x size
(default `train.sample_size`), and writes their statistics, DINOv3 features and captions; an output made with
the same key (dataset, size, extractors, N) is kept. `samples` generates N images with the pipeline of
launch/sample.py (prompts: the reference's captions, or a prompt file cycled to N), batched over all devices,
and writes `<workdir>/eval/step_<S>.json` and TensorBoard scalars. Without Inception weights the FID uses
random weights and the JSON says so. See docs/evaluation.md.
"""

import json

from absl import app, flags, logging
from ml_collections import config_flags

from pixelhdm_jax import cli, parallel, storage
from pixelhdm_jax.compilation_cache import configure_compilation_cache
from pixelhdm_jax.config import validate
from pixelhdm_jax.errors import ConfigError
from pixelhdm_jax.evaluation.evaluate import evaluate, write_result
from pixelhdm_jax.evaluation.features import Extractors
from pixelhdm_jax.evaluation.reference import check_extractors, load_reference, reference_for
from pixelhdm_jax.sample.pipeline import Pipeline
from pixelhdm_jax.sample.solvers import SOLVERS
from pixelhdm_jax.weights.inference import CheckpointError

COMMANDS = ("reference", "samples")
_CONFIG = config_flags.DEFINE_config_file("config", None, "reference: config with a preset, e.g. configs/base.py:tiny.",
                                          lock_config=True)
_NUM_IMAGES = flags.DEFINE_integer("num_images", None, "Images to take (reference) or generate (samples).",
                                   required=True)
_OUTPUT = flags.DEFINE_string("output", None, "reference: the statistics file to write (.npz).")
_SIZE = flags.DEFINE_integer("size", None, "reference: square crop size in pixels (default train.sample_size).")
_INCEPTION = flags.DEFINE_string("inception_weights", None, "pt_inception-2015-12-05-*.pth file or URL (default: "
                                 "the config's evaluation.inception_weights; empty = random weights).")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", None, "Images per batch (default evaluation.batch_size).")
_WORKDIR = flags.DEFINE_string("workdir", None, "samples: training workdir or exported checkpoint directory.")
_REFERENCE = flags.DEFINE_string("reference", None, "samples: the statistics file of `reference` (or pytorch-fid's).")
_PROMPT_FILE = flags.DEFINE_string("prompt_file", None, "samples: one prompt per line, cycled to --num_images "
                                   "(default: the reference's captions).")
_STEP = flags.DEFINE_integer("step", None, "samples: checkpoint step (default: the latest).")
_USE_EMA = flags.DEFINE_bool("use_ema", True, "samples: the EMA weights (false: the raw weights).")
_SOLVER = flags.DEFINE_string("solver", None, f"samples: ODE solver, {' | '.join(SOLVERS)}.")
_NUM_STEPS = flags.DEFINE_integer("num_steps", None, "samples: solver steps.")
_GUIDANCE = flags.DEFINE_float("guidance_scale", None, "samples: classifier-free guidance scale (1 = off).")
_SEED = flags.DEFINE_integer("seed", 0, "samples: noise seed.")


def _overrides() -> dict:
  return {"evaluation.inception_weights": _INCEPTION.value, "evaluation.batch_size": _BATCH_SIZE.value}


def _reference(mesh) -> str:
  if _CONFIG.value is None or not _OUTPUT.value:
    raise app.UsageError("reference needs --config and --output")
  config = _CONFIG.value.copy_and_resolve_references()
  config.unlock()
  config.update_from_flattened_dict({k: v for k, v in _overrides().items() if v is not None})
  validate(config)
  size = _SIZE.value or config.train.sample_size
  reference, path = reference_for(config, Extractors.from_config(config, mesh), _NUM_IMAGES.value, size,
                                  output=_OUTPUT.value)
  return f"reference statistics of {reference.num_images} images at {size}x{size}: {path}"


def _prompts() -> list[str] | None:
  if not _PROMPT_FILE.value:
    return None
  lines = storage.location(_PROMPT_FILE.value).read_text(encoding="utf-8").splitlines()
  prompts = [line.strip() for line in lines if line.strip()]
  if not prompts:
    raise app.UsageError(f"--prompt_file={_PROMPT_FILE.value} holds no prompt")
  return prompts


def _samples(mesh) -> str:
  if not _WORKDIR.value or not _REFERENCE.value:
    raise app.UsageError("samples needs --workdir and --reference")
  prompts = _prompts()
  reference = load_reference(_REFERENCE.value)
  overrides = {**_overrides(), "sample.solver": _SOLVER.value, "sample.num_steps": _NUM_STEPS.value,
               "sample.guidance_scale": _GUIDANCE.value}
  pipeline = Pipeline.from_checkpoint(_WORKDIR.value, use_ema=_USE_EMA.value, step=_STEP.value, mesh=mesh,
                                      overrides=overrides)
  extractors = Extractors.from_config(pipeline.config, mesh)
  check_extractors(reference, extractors.info)
  if reference.key is None and prompts is None:
    raise app.UsageError(f"{_REFERENCE.value} holds no captions (made by another tool): pass --prompt_file")
  size = reference.size or pipeline.config.train.sample_size
  result = evaluate(pipeline, extractors, reference, _NUM_IMAGES.value, size, seed=_SEED.value, prompts=prompts,
                    progress=True)
  result = {**result, "use_ema": _USE_EMA.value, "reference": _REFERENCE.value}
  path = write_result(_WORKDIR.value, pipeline.step, result)
  return f"{json.dumps(result)}\nwritten to {path}"


def main(argv):
  if len(argv) != 2 or argv[1] not in COMMANDS:
    raise app.UsageError(f"give one command: {' | '.join(COMMANDS)} (e.g. `python launch/evaluate.py samples ...`)")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity("warning")
  configure_compilation_cache()
  mesh = parallel.data_parallel_mesh()
  try:
    message = _reference(mesh) if argv[1] == "reference" else _samples(mesh)
  except (ValueError, OSError, CheckpointError, ConfigError) as error:
    raise app.UsageError(str(error)) from error
  print(message)


if __name__ == "__main__":
  cli.run(main)
