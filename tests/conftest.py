"""Test set-up: 8 simulated CPU devices (for sharding tests), the repository root on sys.path, fixtures."""

import os
import pathlib
import sys
import tempfile

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# One persistent compilation cache per test session (subprocesses inherit it): identical programs, e.g. the
# tiny train step of several tests, compile once.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="pixelhdm_jax_cache_")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
# The project's user cache (reference statistics, TFDS sizes, downloads) in a session folder, never in ~/.cache.
if "XDG_CACHE_HOME" not in os.environ:
  os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="pixelhdm_jax_user_cache_")

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# Fixtures of the original PyTorch PixelHDM: `original_tiny` is committed (every clone runs the parity tests);
# the larger `original_micro` is kept outside the repository (beside the checkout, or where PIXELHDM_FIXTURES
# points) and used when available.
FIXTURES = pathlib.Path(os.environ.get("PIXELHDM_FIXTURES", REPO.parent / "shared" / "fixtures"))
ORIGINAL_MICRO = FIXTURES / "original_micro"
ORIGINAL_TINY = REPO / "tests" / "fixtures" / "original_tiny"


def _original_fixture(folder: pathlib.Path):
  """(params.json as a dict, forward.npz as a dict of arrays) of a fixture folder."""
  import json

  import numpy as np
  return json.loads((folder / "params.json").read_text()), dict(np.load(folder / "forward.npz"))


@pytest.fixture(scope="session")
def original_tiny():
  """The original PyTorch model's tiny fixture (`tests/fixtures/original_tiny`, about 2 MB)."""
  return _original_fixture(ORIGINAL_TINY)


@pytest.fixture(scope="session")
def original_micro():
  """The original PyTorch model's micro-config fixture (outside the repository, `ORIGINAL_MICRO`), or a skip."""
  if not (ORIGINAL_MICRO / "forward.npz").exists():
    pytest.skip(f"fixture folder {ORIGINAL_MICRO} is absent (set PIXELHDM_FIXTURES to the folder holding "
                "original_micro/): the larger parity check with the original is skipped; original_tiny still runs")
  return _original_fixture(ORIGINAL_MICRO)


@pytest.fixture(scope="session")
def gcs_emulator():
  """A fake-gcs-server on a free loopback port (in memory) with the bucket `bucket`, killed at the end; a skip
  with the reason when it cannot start."""
  from tests.gcs_emulator import GcsEmulator
  emulator = GcsEmulator()
  try:
    emulator.start()
    emulator.create_bucket("bucket")
  except (RuntimeError, OSError) as error:
    emulator.stop()
    pytest.skip(f"no GCS emulator: {error}")
  yield emulator
  emulator.stop()
