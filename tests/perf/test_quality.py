"""`launch/bench_quality.py` end to end, shrunk: a few train steps, one solver step, a few prompts."""

import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import pytest
from PIL import Image

REPO = pathlib.Path(__file__).resolve().parents[2]
BENCH_EXTRA = 'pip install -e ".[bench]"'


def _run(*flags: str, pythonpath: str | None = None) -> subprocess.CompletedProcess:
  env = {key: value for key, value in os.environ.items() if key != "XLA_FLAGS"}  # one CPU device
  env["JAX_PLATFORMS"] = "cpu"
  if pythonpath:
    env["PYTHONPATH"] = pythonpath
  return subprocess.run([sys.executable, str(REPO / "launch" / "bench_quality.py"), *flags], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=600, check=False)


@pytest.mark.slow  # 35 s; the scores themselves are tested in tests/evaluation/test_learning_scores.py
def test_shapes_prints_one_json_line_and_writes_the_grid(tmp_path):
  flags = (f"--workdir={tmp_path / 'work'}", f"--output={tmp_path / 'out'}", "--train_steps=2", "--sample_steps=1",
           "--config.optim.warmup_steps=0")  # the preset's 10 warm-up steps leave 2 steps no cosine decay
  result = _run("shapes", *flags, "--num_prompts=3")
  assert result.returncode == 0, result.stderr[-3000:]
  [line] = result.stdout.splitlines()
  report = json.loads(line)
  assert {"background_accuracy", "colour_accuracy", "shape_iou", "shape_recognized", "patch_grid_score", "per_shape",
          "train_seconds", "sample_seconds", "final_loss", "command", "background_error_at_noise",
          "border_noise_at_noise"} <= set(report)
  assert (report["benchmark"], report["prompts"], report["train_steps"], report["sample_steps"]) == ("shapes", 3, 2, 1)
  assert (report["solver"], report["guidance_scale"], report["guidance_interval"], report["image_size"]) == (
      "heun", 4.0, [0.0, 0.3], 32)  # the tiny preset
  assert sum(shape["prompts"] for shape in report["per_shape"].values()) == 3
  assert all(0.0 <= report[key] <= 1.0 for key in ("background_accuracy", "colour_accuracy", "shape_iou"))
  assert Image.open(report["grid"]).size == (7 * 32, 32)  # 7 per row, as the 7 backgrounds of a full run
  scores = json.loads((tmp_path / "out" / "shapes_scores.json").read_text())
  assert [row["caption"].split(" ")[0] for row in scores] == ["a"] * 3

  again = _run("shapes", *flags)
  assert again.returncode == 2
  assert "already holds a training run: pass a new or empty workdir" in again.stderr


def test_bad_arguments_are_usage_errors(tmp_path):
  result = _run("colours", f"--output={tmp_path}")
  assert result.returncode == 2
  assert "name one benchmark: shapes or memorize (got 'colours')" in result.stderr
  result = _run("memorize", f"--output={tmp_path}", f"--workdir={tmp_path}", "--num_prompts=3")
  assert result.returncode == 2
  assert "num_prompts is for the shapes benchmark" in result.stderr


def test_memorize_without_the_bench_extra_names_it(tmp_path):
  (tmp_path / "sklearn").mkdir()  # an empty package shadows scikit-learn: no bundled photos
  (tmp_path / "sklearn" / "__init__.py").write_text("")
  result = _run("memorize", f"--output={tmp_path / 'out'}", f"--workdir={tmp_path / 'work'}",
                pythonpath=str(tmp_path))
  assert result.returncode == 2
  assert BENCH_EXTRA in result.stderr
  assert not (tmp_path / "work" / "train").exists()


@pytest.mark.slow
def test_memorize_trains_on_eight_photos_and_scores_them(tmp_path):
  for package in ("sklearn", "matplotlib"):
    if importlib.util.find_spec(package) is None:
      pytest.skip(f"{package} is absent: the memorize benchmark's photos come with {BENCH_EXTRA}")
  result = _run("memorize", f"--workdir={tmp_path / 'work'}", f"--output={tmp_path / 'out'}", "--train_steps=2",
                "--sample_steps=1", "--config.optim.warmup_steps=0")
  assert result.returncode == 0, result.stderr[-3000:]
  report = json.loads(result.stdout)
  assert (report["photos"], len(report["psnr_db"]), len(report["nearest_photo"])) == (8, 8, 8)
  assert 0 <= report["nearest_own_photo"] <= 8
  assert 0.9 < report["patch_grid_score_photos"] < 1.2  # photos have no patch grid
  assert Image.open(report["grid"]).size == (8 * 64, 2 * 64)
  captions = [path.read_text() for path in sorted((tmp_path / "work" / "photos").glob("*.txt"))]
  assert len(set(captions)) == 8
  assert json.loads((tmp_path / "work" / "dataset" / "report.json").read_text())["splits"]["train"] == 8
