"""Test set-up: 8 simulated CPU devices (for sharding tests), the repository root on sys.path, fixtures."""

import os
import pathlib
import sys

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# One persistent compilation cache per test session (subprocesses inherit it): identical programs, e.g. the
# tiny train step of several tests, compile once.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  import tempfile
  os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="pixelhdm_jax_cache_")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import pytest  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# The original's micro fixture: `../shared/fixtures/original_micro` beside the checkout, or PIXELHDM_FIXTURES.
FIXTURES = pathlib.Path(os.environ.get("PIXELHDM_FIXTURES", REPO.parent / "shared" / "fixtures"))
ORIGINAL_MICRO = FIXTURES / "original_micro"


@pytest.fixture(scope="session")
def original_micro():
  """The original PyTorch model's micro-config fixture (`../shared/fixtures/original_micro`), or a skip."""
  import json

  import numpy as np
  if not (ORIGINAL_MICRO / "forward.npz").exists():
    pytest.skip(f"fixture folder {ORIGINAL_MICRO} is absent (set PIXELHDM_FIXTURES to the folder holding "
                "original_micro/): parity with the original cannot be checked")
  arrays = dict(np.load(ORIGINAL_MICRO / "forward.npz"))
  spec = json.loads((ORIGINAL_MICRO / "params.json").read_text())
  return spec, arrays
