r"""Exports the trained network of a workdir for inference and for the PyTorch side.

  python launch/export.py --workdir=/tmp/pixelhdm_tiny --output=/tmp/pixelhdm_export
  python launch/export.py --workdir=DIR --output=OUT --format=safetensors --use_ema=false
  python launch/export.py --workdir=DIR --output=OUT --format=orbax --format=safetensors --step=2000

--workdir is a training workdir (its latest checkpoint unless --step) or an inference checkpoint. Formats:
`orbax` writes OUT/<step>/{model,config}, the minimal checkpoint that launch/sample.py and the notebooks load;
`safetensors` writes OUT/model.safetensors with the original PixelHDM's parameter names and (out, in) Linear
weights, and OUT/config.json with the original's config fields. See docs/interop.md.
"""

from absl import app, flags, logging

from pixelhdm_jax import cli
from pixelhdm_jax.weights import interop
from pixelhdm_jax.weights.inference import CheckpointError

_WORKDIR = flags.DEFINE_string("workdir", None, "Training workdir or inference checkpoint.", required=True)
_OUTPUT = flags.DEFINE_string("output", None, "Folder that receives the export.", required=True)
_FORMAT = flags.DEFINE_multi_enum("format", ["orbax"], interop.EXPORT_FORMATS, "orbax and/or safetensors.")
_USE_EMA = flags.DEFINE_bool("use_ema", True, "Export the EMA weights (false: the raw weights).")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity("warning")  # Orbax logs every restore at INFO; --verbosity=0 shows it
  try:
    paths = interop.export(_WORKDIR.value, _OUTPUT.value, formats=_FORMAT.value, use_ema=_USE_EMA.value,
                           step=_STEP.value)
  except (ValueError, CheckpointError) as error:
    raise app.UsageError(str(error)) from error
  for path in paths:
    print(f"wrote {path}")


if __name__ == "__main__":
  cli.run(main)
