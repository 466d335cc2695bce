"""The platform that programs are built for: this process's backend, or the target of an AOT compile.

Choices that depend on the hardware (the `auto` attention kernel, the `auto` compute dtype, Pallas
interpret mode) ask `backend()` instead of `jax.default_backend()`, so that `launch/compile.py` can trace
and compile on a CPU host for a TPU pod inside `compiling_for("tpu")`; everywhere else the two agree.
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Iterator

import jax

PLATFORMS = ("cpu", "gpu", "tpu")

_PLATFORM: contextvars.ContextVar[str | None] = contextvars.ContextVar("pixelhdm_target_platform", default=None)


def backend() -> str:
  """The platform being compiled for: the one set by `compiling_for`, else `jax.default_backend()`."""
  return _PLATFORM.get() or jax.default_backend()


@contextlib.contextmanager
def compiling_for(platform: str) -> Iterator[None]:
  """Builds and traces everything inside for `platform` (cpu, gpu or tpu), whatever the local backend."""
  if platform not in PLATFORMS:
    raise ValueError(f"unknown platform {platform!r}: choose one of {PLATFORMS}")
  token = _PLATFORM.set(platform)
  try:
    yield
  finally:
    _PLATFORM.reset(token)
