r"""The original PyTorch PixelHDM and this port, the same network step timed side by side on this machine.

  python launch/bench_vs_original.py --original=/path/to/PixelHDM --config=configs/base.py:small \
      --height=256 --width=256 --batch_size=2

--original is a checkout of the original repository (its `src` package is imported; needs torch). Forward and
train step (forward, velocity MSE, backward, AdamW; float32; text --text_len tokens; the preset's remat as the
original's gradient checkpointing), run alternately, medians of --repeats. Prints both, the ratio, and writes
--json. `--codes=ours` (or `original`) times one code alone. See docs/performance.md.
"""

import json
import os
import shlex
import sys

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # torch's OpenMP threads must not spin while JAX runs

from absl import app, flags

from pixelhdm_jax import cli

_CONFIG = cli.define_config("small", "Config file with a preset (the network both codes build).")
_ORIGINAL = flags.DEFINE_string("original", None, "Checkout of the original PixelHDM repository.")
_CODES = flags.DEFINE_list("codes", ["original", "ours"],
                           "Which codes to time: both alternate; one alone shows its time without the other's "
                           "memory traffic in the process.")
_HEIGHT = flags.DEFINE_integer("height", 256, "Image height.")
_WIDTH = flags.DEFINE_integer("width", 256, "Image width.")
_BATCH = flags.DEFINE_integer("batch_size", 2, "Images per step.")
_TEXT_LEN = flags.DEFINE_integer("text_len", 32, "Text tokens.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed rounds (each runs every code of --codes once); medians reported.")
_JSON = flags.DEFINE_string("json", None, "Write the result as JSON to this file.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  codes = _CODES.value
  if not codes or set(codes) - {"original", "ours"}:
    raise app.UsageError(f"--codes={','.join(codes)}: name original, ours or both")
  if "original" in codes and not _ORIGINAL.value:
    raise app.UsageError("timing the original needs --original=PATH of its checkout (or --codes=ours)")
  import jax

  from pixelhdm_jax.perf import versus_original
  config = versus_original.comparable(_CONFIG.value)
  inputs = versus_original.random_inputs(config, _BATCH.value, _HEIGHT.value, _WIDTH.value, _TEXT_LEN.value)
  calls = {}
  if "original" in codes:
    calls["original"] = versus_original.original(_ORIGINAL.value, config, inputs)
  if "ours" in codes:
    calls["ours"] = versus_original.ours(config, inputs)
  medians = versus_original.alternate(calls, _REPEATS.value)
  result = {"height": _HEIGHT.value, "width": _WIDTH.value, "batch_size": _BATCH.value, "text_len": _TEXT_LEN.value,
            "remat_policy": config.model.remat_policy, "scan_layers": config.model.scan_layers, "seconds": medians,
            "jax": jax.__version__, "command": shlex.join([sys.executable, *sys.argv])}
  if "original" in calls:
    import torch
    result.update(torch=torch.__version__, torch_threads=torch.get_num_threads())
  if len(calls) == 2:
    result["speedup"] = {name: medians["original"][name] / medians["ours"][name] for name in medians["ours"]}
  for name in ("forward", "train_step"):
    times = ", ".join(f"{code} {medians[code][name]:.3f} s" for code in calls)
    ratio = f", {result['speedup'][name]:.2f}x" if "speedup" in result else ""
    print(f"{name}: {times}{ratio}")
  if _JSON.value:
    with open(_JSON.value, "w", encoding="utf-8") as f:
      json.dump(result, f, indent=2)


if __name__ == "__main__":
  cli.run(main)
