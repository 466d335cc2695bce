r"""Compiles the train step (or one network pass) ahead of time for a TPU slice, a GPU model or this host's devices;
reports memory per chip.

  python launch/compile.py --config=configs/base.py:default --topology=v5p-256 --batch_size=1024 \
      --height=512 --width=512 --config.mesh.shape="(1,-1,1)"
  python launch/compile.py --config=configs/base.py:default --topology=local --batch_size=32 \
      --height=512 --width=512 --config.model.remat_policy=dots --json=/tmp/compile.json
  python launch/compile.py --config=configs/base.py:default --topology=h100x8 --batch_size=256 \
      --height=512 --width=512 --config.model.remat_policy=save_attention
  python launch/compile.py --config=configs/base.py:default --topology=h100x1 --batch_size=32 \
      --height=512 --width=512 --text_cache --teacher_cache --roofline_layers=12
  python launch/compile.py --config=configs/base.py:default --topology=h100x1 --program=forward \
      --batch_size=16 --height=512 --width=512 --roofline_layers=6

Runs on a CPU host: TPU slices need libtpu (`pip install 'jax[tpu]'`) but no TPU, GPU models the JAX CUDA
plugin (`pip install 'jax[cuda12]'`) but no GPU. Nothing is allocated: state, batch and RNG are shapes, so a
model that does not fit the target fails here (exit status 1; for a GPU, whose compiler does not check, when
the peak exceeds the card's memory), as would a mesh or batch that does not divide. `local` compiles for
this process's devices. Pretrained encoders are compiled as random ones of the same size. For a device of
known peak FLOP/s and bandwidth it also prints the program's roofline: the least time its kernels take and the
MFU that allows (`--roofline_layers=N` lists the N costliest layers; docs/performance.md). See
docs/distributed.md.
"""

import json
import shlex
import sys

import jax
from absl import app, flags

from pixelhdm_jax import cli
from pixelhdm_jax.compilation_cache import configure_compilation_cache
from pixelhdm_jax.perf import aot, roofline
from pixelhdm_jax.perf.gpu_targets import GPUS

_CONFIG = cli.define_config("default", "Config file with a preset.")
_TOPOLOGY = flags.DEFINE_string("topology", aot.LOCAL, f"A TPU slice ({', '.join(aot.TPU_SLICES)}), a libtpu "
                                "topology such as v5:4x4x8, GPUs on one host as <model>x<count> (models: "
                                f"{', '.join(GPUS)}; e.g. h100x8), or 'local' (this host's devices).")
_NUM_SLICES = flags.DEFINE_integer("num_slices", 1, "TPU slices (multi-slice over DCN).")
_HEIGHT = flags.DEFINE_integer("height", None, "Image height (default: data.max_resolution).")
_WIDTH = flags.DEFINE_integer("width", None, "Image width (default: data.max_resolution).")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", None, "Global batch (default: train.batch_size).")
_JSON = flags.DEFINE_string("json", None, "Write the report as JSON to this file.")
_TEXT_CACHE = flags.DEFINE_bool("text_cache", False, "Compile the step that reads cached text encodings (no Qwen3).")
_TEACHER_CACHE = flags.DEFINE_bool("teacher_cache", False, "Compile the REPA step that reads cached DINOv3 features.")
_PROGRAM = flags.DEFINE_enum("program", "train", list(aot.PROGRAMS), "The train step, or one network pass "
                             "(a sampling step's work: no remat, no encoders; --batch_size counts the guided batch).")
_LAYERS = flags.DEFINE_integer("roofline_layers", 0, "Also print the roofline of this many costliest layers "
                               "(the JSON report carries them, or the 10 costliest).")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  if _TOPOLOGY.value == aot.LOCAL:
    configure_compilation_cache()
  else:  # a compile-only program cannot be read back from the cache (there is no client to load it into)
    jax.config.update("jax_enable_compilation_cache", False)
    if not jax.config.jax_platforms:  # the host's own CPU: a GPU plugin would fail to start without a GPU
      jax.config.update("jax_platforms", "cpu")
  config = _CONFIG.value
  size = config.data.max_resolution
  try:
    target = aot.compile_target(_TOPOLOGY.value, _NUM_SLICES.value)
  except aot.CompileError as error:  # the command line names no target this host can describe
    raise app.UsageError(str(error)) from error
  if _PROGRAM.value == "forward" and (_TEXT_CACHE.value or _TEACHER_CACHE.value):
    raise app.UsageError("--text_cache and --teacher_cache apply to --program=train: a network pass runs no encoder")
  shape = dict(height=_HEIGHT.value or size, width=_WIDTH.value or size,
               batch_size=_BATCH_SIZE.value or config.train.batch_size, roofline_layers=_LAYERS.value or 10)
  try:
    if _PROGRAM.value == "forward":
      report = aot.compile_forward(config, target, **shape)
    else:
      report = aot.compile_train_step(config, target, **shape, text_cache=_TEXT_CACHE.value,
                                      teacher_cache=_TEACHER_CACHE.value)
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
  program = aot.PROGRAMS[_PROGRAM.value]
  print(f"compiled {program} for {report['num_devices']} x {report['device_kind']} ({_TOPOLOGY.value}), mesh "
        f"{report['mesh']}, batch {report['batch_size']} of {report['height']}x{report['width']} in "
        f"{report['compile_s']:.1f} s: {summary}")
  print(f"custom calls: {report['custom_calls'] or 'none'}")
  bound = report["roofline"]
  if bound is not None:
    print(f"roofline at {bound['peak_flops'] / 1e12:.0f} TFLOP/s and {bound['bandwidth'] / 1e12:.2f} TB/s: "
          f"{bound['program_flops'] / 1e12:.1f} TFLOP and {bound['bytes'] / 1e9:.1f} GB per device take at least "
          f"{bound['bound_s'] * 1e3:.1f} ms ({bound['memory_bound_s'] * 1e3:.1f} ms in memory-bound kernels): "
          f"MFU at most {bound['mfu_ceiling'] or 0:.1%}; collectives move {bound['collective_bytes'] / 1e9:.1f} GB")
    for note in roofline.grouped(bound["unresolved"]):
      print(f"  roofline: {note}")
    for layer in bound["layers"][:_LAYERS.value]:
      print(f"  {layer['seconds'] * 1e3:8.1f} ms  memory-bound {layer['memory_bound_seconds'] * 1e3:7.1f} ms  "
            f"{layer['flops'] / 1e12:7.2f} TFLOP  {layer['bytes'] / 1e9:7.1f} GB  {layer['scope']}")
  if _JSON.value:
    with open(_JSON.value, "w", encoding="utf-8") as f:
      json.dump(report, f, indent=2)
    print(f"wrote {_JSON.value}")
  if report["fits"] is False:
    sys.exit(f"launch/compile.py: {program} needs {memory['peak_bytes'] / 2**30:.2f} GiB per device, more than "
             f"the {report['device_memory_bytes'] / 2**30:.2f} GiB of one {report['device_kind']}. "
             f"{aot.REMEDIES[_PROGRAM.value]}")


if __name__ == "__main__":
  cli.run(main)
