"""`StepProfiler`: a JAX profiler trace of optimizer steps first..last (`train.profile_steps`), for TensorBoard.

The trace goes to `<directory>/plugins/profile/<run>/<host>.xplane.pb`, which TensorBoard's profile plugin
(`pip install tensorboard tensorboard-plugin-profile`; `tensorboard --logdir WORKDIR/profile`) shows as a trace
viewer and per-op statistics; the loop marks every step with `StepTraceAnnotation` (docs/performance.md).
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
from absl import logging


class StepProfiler:
  """Starts the trace before optimizer step `first` (1-based) and stops it once step `last` has finished."""

  def __init__(self, steps: Sequence[int], directory: Any):
    self.first, self.last = tuple(steps) if steps else (None, None)
    self.directory = str(directory)
    self.active = self.done = False

  def before(self, opt_step: int) -> None:
    """Called before optimizer step `opt_step` is dispatched (a resumed run traces what is left of the range)."""
    if self.first is not None and not (self.active or self.done) and self.first <= opt_step <= self.last:
      jax.profiler.start_trace(self.directory)
      self.active = True
      logging.info("profiling optimizer steps %d to %d into %s", opt_step, self.last, self.directory)

  def after(self, opt_step: int, outputs: Any) -> None:
    """Called after optimizer step `opt_step` was dispatched; waits for `outputs` before the trace stops."""
    if self.active and opt_step >= self.last:
      jax.block_until_ready(outputs)
      self.close()
      logging.info("profile written to %s (tensorboard --logdir %s)", self.directory, self.directory)

  def close(self) -> None:
    if self.active:
      jax.profiler.stop_trace()
      self.active, self.done = False, True
