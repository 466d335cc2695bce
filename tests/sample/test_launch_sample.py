"""`launch/sample.py` end to end: a tiny checkpoint written by `save_for_inference` -> PNGs and a grid."""

import os
import pathlib
import re
import subprocess
import sys

from PIL import Image

from tests.helpers import damage_arrays, tiny_inference_checkpoint

REPO = pathlib.Path(__file__).resolve().parents[2]


def _run(*flags: str) -> subprocess.CompletedProcess:
  env = {key: value for key, value in os.environ.items() if key != "XLA_FLAGS"}  # one CPU device
  env["JAX_PLATFORMS"] = "cpu"
  return subprocess.run([sys.executable, str(REPO / "launch" / "sample.py"), *flags], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=300, check=False)


def test_tiny_checkpoint_samples_pngs_and_a_grid(tmp_path):
  checkpoint = tiny_inference_checkpoint(tmp_path / "export", step=7)
  (tmp_path / "prompts.txt").write_text("a blue square\n\n")
  output = tmp_path / "out"
  result = _run(f"--workdir={checkpoint}", "--prompt=a red circle", f"--prompt_file={tmp_path / 'prompts.txt'}",
                f"--output={output}", "--num_steps=2", "--height=32", "--width=48",  # Heun, guidance 4 (config)
                "--num_images_per_prompt=2", "--batch_size=3", "--seed=3")
  assert result.returncode == 0, result.stderr[-3000:]
  names = sorted(path.name for path in output.iterdir())
  assert names == ["grid.png", "prompt000_image00.png", "prompt000_image01.png", "prompt001_image00.png",
                   "prompt001_image01.png"]
  assert Image.open(output / "prompt001_image01.png").size == (48, 32)
  assert Image.open(output / "grid.png").size == (2 * 48, 2 * 32)
  assert f"4 images of step 7 (32x48) in {output}" in result.stdout


def test_no_prompt_is_a_usage_error(tmp_path):
  result = _run(f"--workdir={tmp_path}", f"--output={tmp_path / 'out'}")
  assert result.returncode != 0
  assert "give at least one --prompt or a --prompt_file" in result.stderr


def test_an_unreadable_checkpoint_names_the_newest_earlier_one_that_loads(tmp_path):
  checkpoints = tmp_path / "checkpoints"
  for step in (3, 6):
    tiny_inference_checkpoint(checkpoints, step=step)
  damage_arrays(checkpoints / "6")
  result = _run(f"--workdir={checkpoints}", "--prompt=a red circle", f"--output={tmp_path / 'out'}")
  assert result.returncode != 0
  message = (r"cannot load the network weights \(model\) of checkpoint .*/checkpoints/6: ValueError: .{20,300}\. "
             r"The newest earlier checkpoint that loads: step 3 \(--step=3\)")
  assert re.search(message, result.stderr), result.stderr[-3000:]
  assert "Traceback" not in result.stderr
