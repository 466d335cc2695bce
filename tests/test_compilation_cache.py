"""The persistent compilation cache: a directory the user chose is kept, else one under the user cache root."""

import jax

from pixelhdm_jax.compilation_cache import configure_compilation_cache, default_directory


def test_a_directory_the_user_chose_is_kept(tmp_path):
  chosen = jax.config.jax_compilation_cache_dir  # tests/conftest.py sets JAX_COMPILATION_CACHE_DIR
  assert chosen
  assert configure_compilation_cache(tmp_path / "ignored") == chosen
  assert jax.config.jax_compilation_cache_dir == chosen


def test_without_a_choice_the_given_or_default_directory_is_used(tmp_path, monkeypatch):
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
  assert default_directory() == tmp_path / "pixelhdm_jax" / "xla"
  monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR")
  before = jax.config.jax_compilation_cache_dir
  jax.config.update("jax_compilation_cache_dir", None)
  try:
    assert configure_compilation_cache() == str(tmp_path / "pixelhdm_jax" / "xla")
    assert jax.config.jax_compilation_cache_dir == str(tmp_path / "pixelhdm_jax" / "xla")
    assert jax.config.jax_persistent_cache_min_compile_time_secs == 0
  finally:
    jax.config.update("jax_compilation_cache_dir", before)
