"""Sample grids of the fixed validation prompts (`train.sample_prompts`), rendered from the EMA weights.

One grid per call: a row per prompt, written to `<workdir>/samples/step_<step>.png` and to TensorBoard. The
sampling pipeline (and its compiled loop) is built once and reused; the seed is fixed, so successive grids
show how the same noise is denoised as training goes on. Every process samples (the loop is one program
over all devices); only process 0 writes.
"""

from __future__ import annotations

import jax
import numpy as np
from etils import epath

from pixelhdm_jax.sample.images import image_grid, save_png
from pixelhdm_jax.sample.pipeline import Pipeline
from pixelhdm_jax.sample.request import SampleRequest
from pixelhdm_jax.train.metrics import MetricWriter


class SampleGrids:
  """Writes the grid of `train.sample_prompts` for a step; the pipeline and its compiled loop are built on the
  first call and reused, and the request (prompts, size, seed) is the same every time."""

  def __init__(self, trainer, workdir: epath.Path, writer: MetricWriter):
    self.trainer = trainer
    self.pipeline = None
    self.directory = workdir / "samples"
    self.writer = writer
    train = trainer.config.train
    self.request = SampleRequest(list(train.sample_prompts), height=train.sample_size, width=train.sample_size,
                                 seed=trainer.config.seed)

  def __call__(self, state, step: int) -> epath.Path:
    if self.pipeline is None:
      self.pipeline = Pipeline(self.trainer.config, state.ema, *self.trainer.prompt_encoder(), mesh=self.trainer.mesh)
    images = self.pipeline.generate(self.request, params=state.ema)
    path = self.directory / f"step_{step:08d}.png"
    if jax.process_index() == 0:
      grid = image_grid(images, columns=len(images))
      self.directory.mkdir(parents=True, exist_ok=True)
      save_png(grid, path)
      self.writer.image(step, "samples", np.asarray(grid))
    return path
