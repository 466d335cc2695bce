"""`launch/evaluate.py` end to end on a tiny checkpoint: reference statistics, then the scores of its samples."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from pixelhdm_jax.evaluation.reference import load_reference, save_reference
from tests.helpers import tiny_inference_checkpoint

REPO = pathlib.Path(__file__).resolve().parents[2]


def _run(tmp_path, *flags: str) -> subprocess.CompletedProcess:
  env = {key: value for key, value in os.environ.items() if key != "XLA_FLAGS"}  # one CPU device
  env.update(JAX_PLATFORMS="cpu", XDG_CACHE_HOME=str(tmp_path / "cache"))
  return subprocess.run([sys.executable, str(REPO / "launch" / "evaluate.py"), *flags], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=600, check=False)


@pytest.fixture(scope="module")
def checkpoint_and_reference(tmp_path_factory):
  tmp_path = tmp_path_factory.mktemp("evaluate")
  checkpoint = tiny_inference_checkpoint(tmp_path / "export", step=7)
  stats = tmp_path / "stats.npz"
  result = _run(tmp_path, "reference", "--config=configs/base.py:tiny", "--num_images=8", "--size=32",
                f"--output={stats}", "--batch_size=4")
  assert result.returncode == 0, result.stderr[-3000:]
  assert f"reference statistics of 8 images at 32x32: {stats}" in result.stdout
  return tmp_path, checkpoint, stats


def test_samples_are_scored_and_written_with_their_settings(checkpoint_and_reference):
  tmp_path, checkpoint, stats = checkpoint_and_reference
  result = _run(tmp_path, "samples", f"--workdir={checkpoint}", f"--reference={stats}", "--num_images=8",
                "--num_steps=2", "--solver=euler", "--guidance_scale=2", "--batch_size=4")
  assert result.returncode == 0, result.stderr[-3000:]
  written = json.loads((checkpoint / "eval" / "step_00000007.json").read_text())
  assert written == json.loads(result.stdout.splitlines()[0]) | {"step": 7}
  assert written["random_inception_weights"] is True and written["inception_weights"] == "random"
  assert (written["num_images"], written["image_size"], written["reference_images"]) == (8, 32, 8)
  assert (written["solver"], written["num_steps"], written["guidance_scale"]) == ("euler", 2, 2.0)
  assert written["prompts"] == "dataset captions" and written["use_ema"] is True
  assert all(np.isfinite(written[k]) for k in ("fid", "fd_dinov3", "precision", "recall", "seconds"))
  assert any((checkpoint / "tb").iterdir())


def test_a_reference_of_other_inception_weights_is_refused(checkpoint_and_reference):
  tmp_path, checkpoint, stats = checkpoint_and_reference
  reference = load_reference(stats)
  reference.key["inception_weights"] = "pt_inception-2015-12-05-6726825d.pth"
  other = tmp_path / "other.npz"
  save_reference(other, reference)
  result = _run(tmp_path, "samples", f"--workdir={checkpoint}", f"--reference={other}", "--num_images=8")
  assert result.returncode != 0
  assert "the reference was made with inception_weights='pt_inception-2015-12-05-6726825d.pth'" in result.stderr
  assert "Traceback" not in result.stderr


def test_a_command_is_required(tmp_path):
  result = _run(tmp_path, "--num_images=8")
  assert result.returncode != 0 and "give one command: reference | samples" in result.stderr
