"""JAX's persistent compilation cache, configured in one place for every launcher.

Compiling the train step for each bucket shape, the sampling loop and the encoders costs seconds to
minutes; the cache makes a restarted or resumed run skip it. A directory chosen by the user (the
`JAX_COMPILATION_CACHE_DIR` environment variable or `jax.config`) is respected; otherwise the cache lives in
`$XDG_CACHE_HOME/pixelhdm_jax/xla` (default `~/.cache/...`).
"""

from __future__ import annotations

import os
import pathlib

import jax

from pixelhdm_jax.user_cache import user_cache_root


def default_directory() -> pathlib.Path:
  return user_cache_root() / "xla"


def configure_compilation_cache(directory: str | os.PathLike | None = None) -> str:
  """Enables the cache (every compiled program is kept); returns the directory in use."""
  chosen = jax.config.jax_compilation_cache_dir or os.environ.get("JAX_COMPILATION_CACHE_DIR")
  if not chosen:
    chosen = str(directory or default_directory())
    jax.config.update("jax_compilation_cache_dir", chosen)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  return chosen
