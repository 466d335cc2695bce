r"""Samples images from a trained PixelHDM: text-to-image, or image-to-image with --init_image.

  python launch/sample.py --workdir=DIR --prompt="a photo of a cat" --output=OUT
  python launch/sample.py --workdir=DIR --prompt_file=prompts.txt --num_images_per_prompt=4 --seed=1 \
      --solver=dpmpp_2m --num_steps=20 --guidance_scale=5 --output=OUT
  python launch/sample.py --workdir=DIR --prompt="an oil painting" --init_image=photo.png --strength=0.6 \
      --output=OUT

--workdir is a training workdir (its latest checkpoint, EMA weights unless --use_ema=false) or an exported
checkpoint directory. Unset options come from the checkpoint's `config.sample` (Heun, 50 steps, guidance
4.0) and the size from `config.data.max_resolution`. Batches are split over all devices (data parallel).
Writes OUT/prompt{p}_image{i}.png and OUT/grid.png (a row per prompt); a folder OUT that holds files already
is refused unless --overwrite. See docs/sampling.md.
"""

from absl import app, flags, logging
from etils import epath
from PIL import Image

from pixelhdm_jax import cli, parallel, storage
from pixelhdm_jax.compilation_cache import configure_compilation_cache
from pixelhdm_jax.sample.images import save_images
from pixelhdm_jax.sample.pipeline import Pipeline
from pixelhdm_jax.sample.request import SampleRequest
from pixelhdm_jax.sample.solvers import SOLVERS
from pixelhdm_jax.weights.inference import CheckpointError

_WORKDIR = flags.DEFINE_string("workdir", None, "Training workdir or exported checkpoint directory.", required=True)
_OUTPUT = flags.DEFINE_string("output", None, "Folder that receives the PNGs and grid.png.", required=True)
_PROMPT = flags.DEFINE_multi_string("prompt", [], "A prompt; repeat the flag for several.")
_PROMPT_FILE = flags.DEFINE_string("prompt_file", None, "A text file with one prompt per line.")
_NEGATIVE = flags.DEFINE_string("negative_prompt", None, "Replaces the empty prompt of the unconditional pass.")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step to load (default: the latest).")
_USE_EMA = flags.DEFINE_bool("use_ema", True, "Sample with the EMA weights (false: the raw weights).")
_SOLVER = flags.DEFINE_string("solver", None, f"ODE solver: {' | '.join(SOLVERS)}.")
_NUM_STEPS = flags.DEFINE_integer("num_steps", None, "Solver steps.")
_GUIDANCE = flags.DEFINE_float("guidance_scale", None, "Classifier-free guidance scale (1 = off).")
_SEED = flags.DEFINE_integer("seed", 0, "Noise seed; image k uses fold_in(key(seed), k).")
_HEIGHT = flags.DEFINE_integer("height", None, "Image height in pixels (a multiple of the patch size).")
_WIDTH = flags.DEFINE_integer("width", None, "Image width in pixels (a multiple of the patch size).")
_PER_PROMPT = flags.DEFINE_integer("num_images_per_prompt", 1, "Images per prompt.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 8, "Images per compiled call.")
_INIT_IMAGE = flags.DEFINE_string("init_image", None, "Image-to-image: the input image file.")
_STRENGTH = flags.DEFINE_float("strength", None, "Image-to-image: 0 keeps the input, 1 ignores it (default 0.8).")
_TEXT_PATH = flags.DEFINE_string("text_path", None, "Local Qwen3 directory, if not the one the run trained with.")
_TEXT_DOWNLOAD = flags.DEFINE_bool("text_allow_download", None, "Fetch the run's Qwen3 (text.hub_id) from the "
                                   "Hugging Face hub when there is no local copy.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Write into an --output folder that holds files already.")
# The config fields these flags set, as the loaders' messages name them.
_FIELD_FLAGS = {"--config.text.path": "--text_path", "--config.text.allow_download": "--text_allow_download"}


def _prompts() -> list[str]:
  prompts = list(_PROMPT.value)
  if _PROMPT_FILE.value:
    lines = storage.location(_PROMPT_FILE.value).read_text(encoding="utf-8").splitlines()
    prompts += [line.strip() for line in lines if line.strip()]
  if not prompts:
    raise app.UsageError("give at least one --prompt or a --prompt_file")
  return prompts


def _check_output() -> None:
  output = epath.Path(_OUTPUT.value)
  if output.exists() and any(output.iterdir()) and not _OVERWRITE.value:
    raise app.UsageError(f"--output={_OUTPUT.value} holds files already: choose a new folder, or pass --overwrite "
                         "to replace its images")


def _with_our_flags(message: str) -> str:
  """A loader's message names config fields (`--config.text.path`); this launcher sets them with its own flags."""
  for field, flag in _FIELD_FLAGS.items():
    message = message.replace(field, flag)
  return message


def main(argv):
  del argv
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity("warning")  # Orbax logs every restore at INFO; --verbosity=0 shows it
  prompts = _prompts()
  _check_output()
  configure_compilation_cache()
  overrides = {"sample.solver": _SOLVER.value, "sample.num_steps": _NUM_STEPS.value,
               "sample.guidance_scale": _GUIDANCE.value, "text.path": _TEXT_PATH.value,
               "text.allow_download": _TEXT_DOWNLOAD.value}
  mesh = parallel.data_parallel_mesh()
  try:
    pipeline = Pipeline.from_checkpoint(_WORKDIR.value, use_ema=_USE_EMA.value, step=_STEP.value, mesh=mesh,
                                        overrides=overrides)
    init_image = Image.open(_INIT_IMAGE.value) if _INIT_IMAGE.value else None
    request = SampleRequest(prompts, negative_prompt=_NEGATIVE.value, num_images_per_prompt=_PER_PROMPT.value,
                            height=_HEIGHT.value, width=_WIDTH.value, seed=_SEED.value, batch_size=_BATCH_SIZE.value,
                            init_image=init_image, strength=_STRENGTH.value)
    images = pipeline.generate(request, progress=True)
  except (ValueError, OSError, CheckpointError) as error:
    raise app.UsageError(_with_our_flags(str(error))) from error
  paths = save_images(images, _OUTPUT.value, _PER_PROMPT.value)
  print(f"{len(images)} images of step {pipeline.step} ({images.shape[1]}x{images.shape[2]}) in "
        f"{storage.location(_OUTPUT.value)}; grid: {paths[-1]}")


if __name__ == "__main__":
  cli.run(main)
