"""Where metrics go: one JSON line per logged step (`metrics.jsonl`) and TensorBoard events (`tb/`), in a local
or cloud workdir (`storage`).

Only process 0 writes. Values arrive as host numbers (the loop fetches them one step late).
"""

from __future__ import annotations

import json
import os
from typing import Mapping

import jax
import numpy as np

from pixelhdm_jax import storage


class MetricWriter:
  def __init__(self, workdir: str | os.PathLike):
    self.enabled = jax.process_index() == 0
    workdir = storage.location(workdir)
    if self.enabled:
      self._jsonl = storage.open_append(workdir / "metrics.jsonl")
      self._tb = storage.tensorboard_writer(workdir / "tb")

  def scalars(self, step: int, values: Mapping[str, float]) -> None:
    if not self.enabled:
      return
    clean = {k: (float(v) if np.ndim(v) == 0 else np.asarray(v).tolist()) for k, v in values.items()}
    self._jsonl.write(json.dumps({"step": step, **clean}) + "\n")
    self._jsonl.flush()
    for name, value in clean.items():
      if isinstance(value, float):
        self._tb.add_scalar(name, value, step)

  def image(self, step: int, name: str, image: np.ndarray) -> None:
    """An (H, W, 3) uint8 image, e.g. a grid of samples."""
    if self.enabled:
      self._tb.add_image(name, image, step, dataformats="HWC")

  def close(self) -> None:
    if self.enabled:
      self._jsonl.close()
      self._tb.close()
