"""Where metrics go: one JSON line per logged step (`metrics.jsonl`) and TensorBoard events (`tb/`), in a local
or cloud workdir (`storage`).

Only process 0 writes. Values arrive as host numbers (the loop fetches them one step late). A resumed run first
drops the rows after its checkpoint's step, which the interrupted run logged but the resumed one logs again, so
`metrics.jsonl` keeps one row per logged step.
"""

from __future__ import annotations

import json
import os
from typing import Mapping

import jax
import numpy as np
from absl import logging
from etils import epath

from pixelhdm_jax import storage


def drop_rows_after(path: str | os.PathLike, step: int) -> None:
  """Rewrites the JSON-lines file `path` without its rows of steps after `step` (and a line cut short by a
  kill), replacing it only once the new file is complete."""
  path = epath.Path(path)
  if not path.exists():
    return
  lines = path.read_text(encoding="utf-8").splitlines()
  kept = []
  for line in lines:
    try:
      row = json.loads(line)
    except ValueError:
      continue
    if isinstance(row, dict) and row.get("step", 0) <= step:
      kept.append(line)
  if len(kept) == len(lines):
    return
  logging.warning("%s: dropped %d rows after step %d, the checkpoint this run resumes from (it logs those steps "
                  "again)", path, len(lines) - len(kept), step)
  staged = path.with_name(path.name + ".tmp")
  staged.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
  staged.replace(path)


class MetricWriter:
  """Appends to `workdir/metrics.jsonl` and `workdir/tb`, after dropping the rows after `start_step` (the
  checkpoint a run resumes from; 0 for a new run)."""

  def __init__(self, workdir: str | os.PathLike, start_step: int = 0):
    self.enabled = jax.process_index() == 0
    workdir = storage.location(workdir)
    if self.enabled:
      drop_rows_after(workdir / "metrics.jsonl", start_step)
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
