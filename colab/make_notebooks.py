"""Writes the Colab notebooks of this folder from the cell sources below: `python colab/make_notebooks.py`.

Edit the notebooks here, not in Jupyter, so they stay small and reviewable (tests/test_notebooks.py checks
that the `.ipynb` files match and runs them). Each notebook's first code cell (tagged `parameters`) holds
its settings; tests override them by appending assignments to that cell.
"""

import pathlib

import nbformat

HERE = pathlib.Path(__file__).resolve().parent

_SETUP = """\
# Clone the repository if needed, work from its root, install it unless it is importable already.
import importlib.util
import os

assert REPO_URL or os.path.isdir(REPO_DIR), "set REPO_URL (or upload the repository to REPO_DIR)"
if not os.path.isdir(REPO_DIR):
  !git clone --depth 1 {REPO_URL} {REPO_DIR}
%cd {REPO_DIR}
if importlib.util.find_spec("pixelhdm_jax") is None:
  !pip install -q -e .\
"""

_REPO_PARAMETERS = """\
REPO_URL = ""  # git URL of this repository (Colab clones it into REPO_DIR)
REPO_DIR = "/content/pixelhdm_jax"\
"""

TRAIN = [
    ("markdown", """\
# PixelHDM-JAX: train the `tiny` preset

Trains PixelHDM on the built-in synthetic captioned shapes with a random tiny text encoder and DINOv3 (no
downloads), on every chip of the runtime: choose *Runtime > Change runtime type > TPU* (GPU and CPU work too).
Then plots the loss and shows the sample grid of the end of training. `sample_and_export.ipynb` samples from
the checkpoint and exports it."""),
    ("parameters", _REPO_PARAMETERS + """
WORKDIR = "/content/pixelhdm_tiny"  # checkpoints, metrics.jsonl, tb/, samples/
PRESET = "tiny"
NUM_STEPS = 6000  # the tiny preset's run: its samples show the prompts (docs/quality.md)
IMAGE_SIZE = 32  # pixels per side, a multiple of 16 (the tiny preset trains at 32)
IMAGES_PER_CHIP = 8
SAMPLE_STEPS = 20  # solver steps of the sample grid"""),
    ("code", _SETUP),
    ("code", """\
from configs import base
from pixelhdm_jax import colab
from pixelhdm_jax.train.loop import train_and_evaluate

print(colab.init_runtime())"""),
    ("markdown", """\
## Config
The preset, sized for this runtime: one square bucket, a batch that splits over every chip (the `fsdp` mesh
axis spans them all), one checkpoint and one sample grid at the end. Any field can be changed here."""),
    ("code", """\
config = colab.runtime_config(base.get_config(PRESET), num_steps=NUM_STEPS, image_size=IMAGE_SIZE,
                              images_per_chip=IMAGES_PER_CHIP, sample_steps=SAMPLE_STEPS)
print(config.train)"""),
    ("markdown", """\
## Train
Running this cell again with a larger `NUM_STEPS` resumes from the latest checkpoint in `WORKDIR` (the
learning-rate schedule is then the preset's over the new `NUM_STEPS`)."""),
    ("code", """\
last = train_and_evaluate(config, WORKDIR)
print({k: round(v, 4) for k, v in last.items()})"""),
    ("markdown", "## Loss curve"),
    ("code", "rows = colab.plot_metrics(WORKDIR)"),
    ("markdown", "## Sample grids written during training (EMA weights, `train.sample_prompts` side by side)"),
    ("code", "colab.show_images(colab.sample_grids(WORKDIR))"),
]

SAMPLE_AND_EXPORT = [
    ("markdown", """\
# PixelHDM-JAX: sample from a checkpoint and export it

Loads the EMA weights of a training workdir (e.g. the one `train.ipynb` wrote) or of an exported
checkpoint, samples images with the compiled pipeline on every chip, then exports an inference checkpoint
(Orbax) and `model.safetensors` with the original PyTorch PixelHDM's parameter names."""),
    ("parameters", _REPO_PARAMETERS + """
CHECKPOINT = "/content/pixelhdm_tiny"  # a training workdir or an exported checkpoint
EXPORT_DIR = "/content/pixelhdm_export"
PROMPTS = ["a red circle on blue", "a yellow square on green"]  # the tiny run's caption wording
NUM_IMAGES_PER_PROMPT = 2
IMAGE_SIZE = 32
SAMPLE_STEPS = 30
GUIDANCE_SCALE = 4.0
SEED = 0"""),
    ("code", _SETUP),
    ("code", """\
from pixelhdm_jax import colab, parallel
from pixelhdm_jax.sample.images import image_grid
from pixelhdm_jax.sample.pipeline import Pipeline
from pixelhdm_jax.sample.request import SampleRequest
from pixelhdm_jax.weights import interop

print(colab.init_runtime())"""),
    ("markdown", "## Sample (text-to-image; a row per prompt)"),
    ("code", """\
pipeline = Pipeline.from_checkpoint(CHECKPOINT, mesh=parallel.data_parallel_mesh(),
                                    overrides={"sample.num_steps": SAMPLE_STEPS,
                                               "sample.guidance_scale": GUIDANCE_SCALE})
request = SampleRequest(PROMPTS, num_images_per_prompt=NUM_IMAGES_PER_PROMPT, height=IMAGE_SIZE, width=IMAGE_SIZE,
                        seed=SEED)
images = pipeline.generate(request, progress=True)
print(f"step {pipeline.step}: {images.shape}")
colab.show_images([image_grid(images, columns=NUM_IMAGES_PER_PROMPT)])"""),
    ("markdown", """\
## Export
`EXPORT_DIR/<step>/` is an inference checkpoint (`launch/sample.py --workdir=EXPORT_DIR` reads it);
`model.safetensors` + `config.json` hold the weights under the original's names with (out, in) Linear
weights and its config fields, for the PyTorch side (see docs/interop.md). The same as
`python launch/export.py --workdir=CHECKPOINT --output=EXPORT_DIR --format=orbax --format=safetensors`."""),
    ("code", """\
paths = interop.export(CHECKPOINT, EXPORT_DIR, formats=("orbax", "safetensors"))
print(*paths, sep="\\n")"""),
]

NOTEBOOKS = {"train.ipynb": TRAIN, "sample_and_export.ipynb": SAMPLE_AND_EXPORT}


def build(cells) -> nbformat.NotebookNode:
  """A notebook (Python 3 kernel, a Colab TPU runtime requested) from (kind, source) pairs."""
  notebook = nbformat.v4.new_notebook()
  notebook.metadata = {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
                       "language_info": {"name": "python"}, "accelerator": "TPU",
                       "colab": {"provenance": []}}
  for kind, source in cells:
    if kind == "markdown":
      notebook.cells.append(nbformat.v4.new_markdown_cell(source))
    else:
      cell = nbformat.v4.new_code_cell(source)
      if kind == "parameters":
        cell.metadata["tags"] = ["parameters"]
      notebook.cells.append(cell)
  for index, cell in enumerate(notebook.cells):
    cell.id = f"cell-{index}"  # stable ids, so regenerating changes nothing
  return notebook


def main():
  for name, cells in NOTEBOOKS.items():
    nbformat.write(build(cells), HERE / name)


if __name__ == "__main__":
  main()
