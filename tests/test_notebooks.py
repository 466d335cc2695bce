"""The Colab notebooks run to the end, headless on CPU with a tiny setting, and match their generator."""

import importlib.util
import pathlib

import nbformat
import numpy as np
import pytest
from nbclient import NotebookClient

from configs import base
from pixelhdm_jax import colab
from pixelhdm_jax.optim import schedules

REPO = pathlib.Path(__file__).resolve().parents[1]
COLAB = REPO / "colab"


def _generator():
  spec = importlib.util.spec_from_file_location("make_notebooks", COLAB / "make_notebooks.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _with_parameters(name: str, **values) -> nbformat.NotebookNode:
  """The notebook with `values` assigned at the end of its `parameters` cell (papermill-style)."""
  notebook = nbformat.read(COLAB / name, as_version=4)
  cell = next(c for c in notebook.cells if "parameters" in c.metadata.get("tags", []))
  cell.source += "\n" + "\n".join(f"{key} = {value!r}" for key, value in values.items())
  return notebook


def _run(notebook: nbformat.NotebookNode) -> nbformat.NotebookNode:
  """Executes every cell in a fresh kernel started in the repository root; a failing cell raises."""
  NotebookClient(notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(REPO)}}).execute()
  return notebook


def _outputs(notebook: nbformat.NotebookNode) -> tuple[str, int]:
  """(all text printed to stdout, number of PNG images displayed)."""
  text, images = [], 0
  for cell in notebook.cells:
    for output in cell.get("outputs", []):
      if output.output_type == "stream" and output.name == "stdout":
        text.append(output.text)
      images += "image/png" in output.get("data", {})
  return "".join(text), images


def test_notebooks_match_their_generator():
  generator = _generator()
  for name, cells in generator.NOTEBOOKS.items():
    assert (COLAB / name).read_text() == nbformat.writes(generator.build(cells)) + "\n", (
        f"colab/{name} differs from colab/make_notebooks.py: run python colab/make_notebooks.py")


@pytest.mark.slow  # ~55 s: the notebook's train, sample and export are each tested on their own in the default run
def test_train_then_sample_and_export(tmp_path):
  workdir, export = tmp_path / "run", tmp_path / "export"
  trained = _run(_with_parameters("train.ipynb", REPO_DIR=str(REPO), WORKDIR=str(workdir), NUM_STEPS=2,
                                  IMAGE_SIZE=32, IMAGES_PER_CHIP=1, SAMPLE_STEPS=2))
  text, images = _outputs(trained)
  assert (workdir / "checkpoints" / "2").is_dir()
  assert "JAX " in text and "'loss':" in text  # the runtime summary and the last metrics
  plotted = importlib.util.find_spec("matplotlib") is not None  # the loss curve is a plot, else a printed table
  assert images == 1 + plotted  # and the sample grid written at the end of training
  sampled = _run(_with_parameters("sample_and_export.ipynb", REPO_DIR=str(REPO), CHECKPOINT=str(workdir),
                                  EXPORT_DIR=str(export), NUM_IMAGES_PER_PROMPT=1, IMAGE_SIZE=32, SAMPLE_STEPS=2))
  text, images = _outputs(sampled)
  assert "step 2: (2, 32, 32, 3)" in text
  assert images == 1
  assert sorted(p.name for p in export.iterdir()) == ["2", "config.json", "model.safetensors"]


@pytest.mark.parametrize("num_steps", [1, 3, 6000])
def test_a_run_shorter_than_the_warm_up_still_decays_to_the_floor(num_steps):
  config = colab.runtime_config(base.get_config("tiny"), num_steps=num_steps, image_size=32, images_per_chip=1,
                                sample_steps=2)  # validated: the preset's 10 warm-up steps alone would not be
  assert config.optim.warmup_steps == min(base.get_config("tiny").optim.warmup_steps, num_steps - 1)
  lr = schedules.from_config(config)
  np.testing.assert_allclose(float(lr(num_steps)), config.optim.min_lr, rtol=1e-5)
