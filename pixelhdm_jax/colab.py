"""What the Colab notebooks (`colab/`) call, so that no logic lives in their cells.

The notebooks run on a Colab TPU runtime and fall back to GPU or CPU: `init_runtime` prepares the process
and says what it found, `runtime_config` sizes a preset to the chips, `plot_metrics` draws the loss curve
of a workdir's `metrics.jsonl` (matplotlib if installed, else a text table), `show_images` displays images
in the notebook (or lists them outside one).
"""

from __future__ import annotations

import copy
import json
import pathlib
from typing import Iterable, Sequence

import jax
import ml_collections
import numpy as np
from absl import flags
from PIL import Image

from pixelhdm_jax.compilation_cache import configure_compilation_cache
from pixelhdm_jax.config import validate


def init_runtime() -> str:
  """Marks absl flags parsed (Grain workers and absl logging expect it), enables the persistent compilation
  cache, and returns a one-line summary of the devices."""
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()
  cache = configure_compilation_cache()
  devices = jax.devices()
  return (f"JAX {jax.__version__} on {jax.default_backend()}: {len(devices)} x {devices[0].device_kind} "
          f"over {jax.process_count()} process(es); compilation cache {cache}")


def runtime_config(base: ml_collections.ConfigDict, *, num_steps: int, image_size: int, images_per_chip: int,
                   sample_steps: int) -> ml_collections.ConfigDict:
  """A copy of `base` (a preset) for a short notebook run on every chip of this runtime.

  Square `image_size` images (one bucket, one compiled step), `images_per_chip` x chips per batch, the fsdp
  mesh axis over all chips, logs every step for short runs, one checkpoint and one sample grid (with
  `sample_steps` solver steps) at the end; no evaluation (`launch/evaluate.py` scores a workdir afterwards).
  A run shorter than the preset's warm-up warms up for all but its last step, so that its schedule still ends
  at `optim.min_lr` (the notebook has no other place to change it).
  """
  config = copy.deepcopy(base)
  config.data.min_resolution = config.data.max_resolution = image_size
  config.train.batch_size = images_per_chip * jax.device_count()
  config.train.num_steps = num_steps
  config.optim.warmup_steps = min(config.optim.warmup_steps, max(num_steps - 1, 0))
  config.train.log_every = max(1, num_steps // 100)
  config.train.checkpoint_every = num_steps
  config.train.sample_every = 0
  config.train.eval_every = 0
  config.train.sample_size = image_size
  config.sample.num_steps = sample_steps
  config.mesh.shape = (1, -1, 1)
  return validate(config)


def read_metrics(workdir: str | pathlib.Path) -> list[dict]:
  """The training metrics logged to `workdir/metrics.jsonl` (rows with a loss only)."""
  path = pathlib.Path(workdir) / "metrics.jsonl"
  rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []
  return [row for row in rows if "loss" in row]


def plot_metrics(workdir: str | pathlib.Path, keys: Sequence[str] = ("loss", "loss_velocity", "loss_frequency",
                                                                      "loss_repa")) -> list[dict]:
  """Plots `keys` over steps (log scale) with matplotlib, or prints them as a table; returns the rows."""
  rows = read_metrics(workdir)
  keys = [k for k in keys if any(k in row for row in rows)]
  if not rows:
    print(f"no metrics in {pathlib.Path(workdir) / 'metrics.jsonl'} yet")
    return rows
  try:
    import matplotlib.pyplot as plt
  except ImportError:
    print("step  " + "  ".join(f"{k:>14}" for k in keys))
    for row in rows[:: max(1, len(rows) // 20)] + ([rows[-1]] if len(rows) > 20 else []):
      print(f"{row['step']:>4}  " + "  ".join(f"{row.get(k, float('nan')):>14.5f}" for k in keys))
    return rows
  _, axis = plt.subplots(figsize=(8, 4))
  for key in keys:
    axis.plot([row["step"] for row in rows if key in row], [row[key] for row in rows if key in row], label=key)
  axis.set(xlabel="optimizer step", yscale="log", title=str(workdir))
  axis.legend()
  plt.show()
  return rows


def sample_grids(workdir: str | pathlib.Path) -> list[pathlib.Path]:
  """The sample grids written during training (`workdir/samples/step_*.png`), oldest first."""
  return sorted((pathlib.Path(workdir) / "samples").glob("step_*.png"))


def show_images(images: Iterable[Image.Image | np.ndarray | str | pathlib.Path]) -> None:
  """Displays images (PIL, uint8 arrays or PNG paths) in the notebook; outside IPython prints their sizes."""
  try:
    from IPython.display import display
  except ImportError:
    display = None
  shown = 0
  for image in images:
    name = str(image) if isinstance(image, (str, pathlib.Path)) else f"image {shown}"
    if isinstance(image, (str, pathlib.Path)):
      image = Image.open(image)
    elif isinstance(image, np.ndarray):
      image = Image.fromarray(image)
    print(f"{name}: {image.width}x{image.height}")
    if display is not None:
      display(image)
    shown += 1
  if not shown:
    print("no images")
