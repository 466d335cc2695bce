r"""Converts checkpoints of the original PyTorch PixelHDM into PixelHDM-JAX inference checkpoints.

  python launch/convert.py import-original --input=checkpoint_step_10000.pt --output=DIR
  python launch/convert.py import-original --input=model_state.pt --output=DIR --config=configs/base.py:small
  python launch/convert.py import-original --input=EXPORT_DIR --output=DIR   # our safetensors export

The input is an original training checkpoint (`model`, `ema`, `config`, ...; EMA weights unless
--use_ema=false), a bare state dict, or a folder with `model.safetensors` + `config.json` written by
launch/export.py. The original's config is translated onto --config (default: the `default` preset), which
also gives every other section; a bare state dict's network is read off its tensor shapes (mRoPE's split and
theta, which no tensor shows, from --config). Prints what was
dropped and which config fields do not map. `launch/sample.py --workdir=DIR` samples from the result.
See docs/interop.md.
"""


from absl import app, flags, logging

from pixelhdm_jax import cli
from pixelhdm_jax.weights import interop
from pixelhdm_jax.weights.inference import CheckpointError, save_for_inference

_CONFIG = cli.define_config("default", "Config with a preset, e.g. configs/base.py:tiny: the base the original's "
                             "config is applied to.")
_INPUT = flags.DEFINE_string("input", None, "Original .pt checkpoint or state dict, or a safetensors export.",
                             required=True)
_OUTPUT = flags.DEFINE_string("output", None, "Folder for the inference checkpoint.", required=True)
_USE_EMA = flags.DEFINE_bool("use_ema", True, "Import the original's EMA weights when present (false: `model`).")
COMMANDS = ("import-original",)


def main(argv):
  if len(argv) != 2 or argv[1] not in COMMANDS:
    raise app.UsageError(f"give one command: {' | '.join(COMMANDS)}")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity("warning")  # Orbax logs every save at INFO; --verbosity=0 shows it
  try:
    original = interop.read_original(_INPUT.value, use_ema=_USE_EMA.value)
    imported = interop.import_original(original, _CONFIG.value)
    output = save_for_inference(_OUTPUT.value, imported.config, imported.params, imported.step)
  except (ValueError, CheckpointError) as error:
    raise app.UsageError(str(error)) from error
  for note in imported.notes:
    print(f"note: {note}")
  print(f"wrote an inference checkpoint of step {imported.step} to {output}")


if __name__ == "__main__":
  cli.run(main)
