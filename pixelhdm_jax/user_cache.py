"""Where the project's caches live on this machine; plain Python, so the data layer can use it without JAX."""

from __future__ import annotations

import os
import pathlib


def user_cache_root() -> pathlib.Path:
  """`$XDG_CACHE_HOME/pixelhdm_jax` (default `~/.cache/pixelhdm_jax`): the compilation cache, the TFDS size cache."""
  return pathlib.Path(os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache") / "pixelhdm_jax"
