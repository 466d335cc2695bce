"""Where metrics go: one JSON line per logged step (`metrics.jsonl`) and TensorBoard events (`tb/`).

Only process 0 writes. Values arrive as host numbers (the loop fetches them one step late).
"""

from __future__ import annotations

import json
import pathlib
from typing import Mapping

import jax
import numpy as np
from tensorboardX import SummaryWriter


class MetricWriter:
  def __init__(self, workdir: str | pathlib.Path):
    self.enabled = jax.process_index() == 0
    workdir = pathlib.Path(workdir)
    if self.enabled:
      self._jsonl = open(workdir / "metrics.jsonl", "a", encoding="utf-8")  # noqa: SIM115  (closed in close())
      self._tb = SummaryWriter(logdir=str(workdir / "tb"))

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
