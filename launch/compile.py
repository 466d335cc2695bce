r"""Compiles the train step ahead of time for a TPU topology (or this host's devices) and reports memory per chip.

  python launch/compile.py --config=configs/base.py:default --topology=v5p-256 --batch_size=1024 \
      --height=512 --width=512 --config.mesh.shape="(1,-1,1)"
  python launch/compile.py --config=configs/base.py:default --topology=local --batch_size=32 \
      --height=512 --width=512 --config.model.remat_policy=dots --json=/tmp/compile.json

Runs on a CPU host: TPU topologies need libtpu (`pip install 'jax[tpu]'`) but no TPU. Nothing is allocated:
state, batch and RNG are shapes, so a model that does not fit the target fails here, at compile time, as it
would on the pod (also a mesh or batch that does not divide). `local` compiles for this process's devices.
Pretrained encoders are compiled as random ones of the same size. See docs/distributed.md.
"""

import json
import shlex
import sys

from absl import app, flags
from ml_collections import config_flags

from pixelhdm_jax import aot
from pixelhdm_jax.compilation_cache import configure_compilation_cache

_CONFIG = config_flags.DEFINE_config_file("config", "configs/base.py:default", "Config file with a preset.")
_TOPOLOGY = flags.DEFINE_string("topology", aot.LOCAL, f"A TPU slice ({', '.join(aot.TPU_SLICES)}), a libtpu "
                                "topology such as v5:4x4x8, or 'local' (this host's devices).")
_NUM_SLICES = flags.DEFINE_integer("num_slices", 1, "TPU slices (multi-slice over DCN).")
_HEIGHT = flags.DEFINE_integer("height", None, "Image height (default: data.max_resolution).")
_WIDTH = flags.DEFINE_integer("width", None, "Image width (default: data.max_resolution).")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", None, "Global batch (default: train.batch_size).")
_JSON = flags.DEFINE_string("json", None, "Write the report as JSON to this file.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  configure_compilation_cache()
  config = _CONFIG.value
  size = config.data.max_resolution
  try:
    devices, platform = aot.topology_devices(_TOPOLOGY.value, _NUM_SLICES.value)
    report = aot.compile_train_step(config, devices, platform=platform, height=_HEIGHT.value or size,
                                    width=_WIDTH.value or size, batch_size=_BATCH_SIZE.value or config.train.batch_size)
  except aot.CompileError as error:
    sys.exit(f"launch/compile.py: {error}")
  except ValueError as error:
    raise app.UsageError(str(error)) from error
  report.update(topology=_TOPOLOGY.value, num_slices=_NUM_SLICES.value,
                command=shlex.join([sys.executable, *sys.argv]))
  memory = report["memory_per_device"]
  summary = "no memory analysis on this backend" if memory is None else (
      f"{memory['peak_bytes'] / 2**30:.2f} GiB per device (arguments {memory['argument_bytes'] / 2**30:.2f}, "
      f"outputs {memory['output_bytes'] / 2**30:.2f}, donated {memory['alias_bytes'] / 2**30:.2f}, "
      f"temporaries {memory['temp_bytes'] / 2**30:.2f})")
  print(f"compiled the train step for {report['num_devices']} x {report['device_kind']} ({_TOPOLOGY.value}), mesh "
        f"{report['mesh']}, batch {report['batch_size']} of {report['height']}x{report['width']} in "
        f"{report['compile_s']:.1f} s: {summary}")
  if _JSON.value:
    with open(_JSON.value, "w", encoding="utf-8") as f:
      json.dump(report, f, indent=2)
    print(f"wrote {_JSON.value}")


if __name__ == "__main__":
  app.run(main)
