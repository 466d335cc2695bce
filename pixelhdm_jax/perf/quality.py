"""Learning benchmarks that run on a laptop CPU (`launch/bench_quality.py`): train a config, sample it, score it.

`shapes` trains the config (the `tiny` preset: synthetic shapes) and samples every caption the dataset can
draw (168, or a seeded subset) at `train.sample_size` with `config.sample`'s solver, steps and guidance;
`learning_scores.score_shape_image` scores each. `memorize` cuts 8 photographs bundled with scikit-learn and
matplotlib (`PHOTOS`) to 64x64, prepares them as a folder dataset (`data/prepare.py`), trains the config on
them alone and samples each caption: is each sample nearest its own photo, how close (PSNR), and does a
patch grid show. Both write a grid PNG to the output folder and return one dict of results; seconds are wall
time (training includes building and compiling, sampling includes compiling its loop).
"""

from __future__ import annotations

import copy
import dataclasses
import importlib.util
import json
import pathlib
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from etils import epath
from PIL import Image

from pixelhdm_jax import parallel
from pixelhdm_jax.config import validate
from pixelhdm_jax.data.buckets import buckets_from_config
from pixelhdm_jax.data.images import to_uint8
from pixelhdm_jax.data.prepare import prepare_folder
from pixelhdm_jax.data.synthetic import SHAPES
from pixelhdm_jax.errors import ConfigError
from pixelhdm_jax.evaluation import learning_scores
from pixelhdm_jax.sample.images import image_grid
from pixelhdm_jax.sample.pipeline import Pipeline
from pixelhdm_jax.sample.request import SampleRequest
from pixelhdm_jax.train.loop import train_and_evaluate

BENCHMARKS = ("shapes", "memorize")
MEMORIZE_STEPS = 3000
PHOTO_SIZE = 64
SAMPLE_BATCH = 24  # images per compiled sampling call (168 = 7 batches)
PROMPT_SUBSET_SEED = 0  # which captions a --num_prompts subset keeps
BENCH_EXTRA = 'the memorize benchmark reads photos bundled with scikit-learn and matplotlib: pip install -e ".[bench]"'


@dataclasses.dataclass(frozen=True)
class Photo:
  """A square crop of a bundled photograph: `path` inside `package`, box (left, top, side) in its pixels."""
  package: str
  path: str
  box: tuple[int, int, int]
  caption: str


_CHINA, _FLOWER = "datasets/images/china.jpg", "datasets/images/flower.jpg"  # 640x427
_HOPPER = "mpl-data/sample_data/grace_hopper.jpg"  # 512x600
PHOTOS = (
    Photo("sklearn", _CHINA, (106, 0, 427), "photo 1: a temple"),  # centre square
    Photo("sklearn", _CHINA, (60, 20, 300), "photo 2: a pagoda roof"),  # the upper floors
    Photo("sklearn", _CHINA, (340, 100, 300), "photo 3: a lake, trees"),  # right side
    Photo("sklearn", _FLOWER, (106, 0, 427), "photo 4: a dahlia"),  # centre square
    Photo("sklearn", _FLOWER, (200, 120, 160), "photo 5: petals up close"),  # the flower's heart
    Photo("sklearn", _FLOWER, (0, 0, 200), "photo 6: green leaves"),  # top-left corner
    Photo("matplotlib", _HOPPER, (0, 44, 512), "photo 7: a portrait"),  # centre square
    Photo("matplotlib", _HOPPER, (140, 100, 240), "photo 8: a face, glasses"),  # the face
)


def run(benchmark: str, config: ml_collections.ConfigDict, workdir: str, output: str, *,
        train_steps: int | None = None, sample_steps: int | None = None, num_prompts: int | None = None,
        seed: int = 0) -> dict:
  """Runs `benchmark` (`BENCHMARKS`) and returns its results; `train_steps`, `sample_steps` default to the
  benchmark's (shapes: `train.num_steps`; memorize: `MEMORIZE_STEPS`) and `config.sample.num_steps`.

  Raises ConfigError for bad arguments or settings and ImportError when memorize lacks its photos' packages,
  both before any training.
  """
  if benchmark not in BENCHMARKS:
    raise ConfigError(f"unknown benchmark {benchmark!r}: choose one of {', '.join(BENCHMARKS)}")
  for name, value in (("train_steps", train_steps), ("sample_steps", sample_steps), ("num_prompts", num_prompts)):
    if value is not None and value < 1:
      raise ConfigError(f"{name} must be a positive integer, got {value}")
  workdir, output = epath.Path(workdir), epath.Path(output)
  if (workdir / "train" / "checkpoints").exists():
    raise ConfigError(f"{workdir} already holds a training run: pass a new or empty workdir")
  output.mkdir(parents=True, exist_ok=True)
  if benchmark == "shapes":
    return shapes(config, workdir, output, train_steps=train_steps, sample_steps=sample_steps,
                  num_prompts=num_prompts, seed=seed)
  if num_prompts is not None:
    raise ConfigError("num_prompts is for the shapes benchmark; memorize samples each of its 8 captions")
  return memorize(config, workdir, output, train_steps=train_steps or MEMORIZE_STEPS, sample_steps=sample_steps,
                  seed=seed)


def shapes(config: ml_collections.ConfigDict, workdir: epath.Path, output: epath.Path, *, train_steps: int | None,
           sample_steps: int | None, num_prompts: int | None, seed: int) -> dict:
  """Trains `config` on its synthetic shapes, samples the captions and scores them; writes `shapes_grid.png` (7
  per row: a row per shape colour and shape when all 168 are sampled) and `shapes_scores.json` (per caption)."""
  if config.data.source != "synthetic":
    raise ConfigError(f"the shapes benchmark trains on data.source=synthetic, not {config.data.source!r}")
  captions = learning_scores.shape_captions()
  if num_prompts is not None and num_prompts < len(captions):
    keep = np.random.default_rng(PROMPT_SUBSET_SEED).choice(len(captions), num_prompts, replace=False)
    captions = [captions[i] for i in sorted(keep)]
  config = _run_config(config, train_steps or config.train.num_steps)
  size = config.train.sample_size
  trained = _train(config, workdir / "train")
  images, sampled, pipeline = _sample(workdir / "train", captions, size, sample_steps, seed)
  at_noise = learning_scores.background_at_noise(noise_estimates(pipeline, captions, size, seed), captions)
  scores = [learning_scores.score_shape_image(image, caption) for image, caption in zip(images, captions)]
  keys = list(scores[0])
  per_shape = {}
  for shape in SHAPES:
    rows = [s for s, caption in zip(scores, captions) if learning_scores.parse_caption(caption)[1] == shape]
    if rows:
      per_shape[shape] = {"prompts": len(rows), **{k: _mean(r[k] for r in rows) for k in keys}}
  grid = _save(image_grid(images, columns=7), output / "shapes_grid.png")
  (output / "shapes_scores.json").write_text(json.dumps(
      [{"caption": caption, **score} for caption, score in zip(captions, scores)], indent=1))
  return {"benchmark": "shapes", "prompts": len(captions), "image_size": size, **trained, **sampled,
          "colour_distance": learning_scores.COLOUR_DISTANCE, **{k: _mean(s[k] for s in scores) for k in keys},
          "patch_grid_score": round(learning_scores.patch_grid_score(images, config.model.patch_size), 4),
          **{k: round(v, 1) for k, v in at_noise.items()}, "per_shape": per_shape, "grid": str(grid),
          "workdir": str(workdir)}


def memorize(config: ml_collections.ConfigDict, workdir: epath.Path, output: epath.Path, *, train_steps: int,
             sample_steps: int | None, seed: int) -> dict:
  """Trains `config` on the 8 `PHOTOS` alone, samples their captions and scores the recall; writes
  `memorize_grid.png` (the photos above their samples)."""
  photos = write_photos(workdir / "photos")
  config = copy.deepcopy(config)
  config.data.update(source="folder", path=str(workdir / "dataset"), min_resolution=PHOTO_SIZE,
                     max_resolution=PHOTO_SIZE)
  config = _run_config(config, train_steps)
  prepare_folder(pathlib.Path(workdir / "photos"), pathlib.Path(workdir / "dataset"), buckets_from_config(config),
                 validation_fraction=0.0)
  trained = _train(config, workdir / "train")
  captions = [photo.caption for photo in PHOTOS]
  images, sampled, _ = _sample(workdir / "train", captions, PHOTO_SIZE, sample_steps, seed)
  nearest = learning_scores.nearest_photo(images, photos)
  psnr = learning_scores.psnr(images, photos)
  patch = config.model.patch_size
  grid = _save(image_grid(np.concatenate([photos, images]), columns=len(PHOTOS)), output / "memorize_grid.png")
  return {"benchmark": "memorize", "photos": len(PHOTOS), "image_size": PHOTO_SIZE, **trained, **sampled,
          "nearest_own_photo": int(np.sum(nearest == np.arange(len(PHOTOS)))), "nearest_photo": nearest.tolist(),
          "mean_psnr_db": _mean(psnr), "psnr_db": [round(float(p), 2) for p in psnr],
          "patch_grid_score": round(learning_scores.patch_grid_score(images, patch), 4),
          "patch_grid_score_photos": round(learning_scores.patch_grid_score(photos, patch), 4),
          "grid": str(grid), "workdir": str(workdir)}


def photo_file(photo: Photo) -> pathlib.Path:
  """The bundled image file of `photo`; ImportError naming the `bench` extra when its package is missing."""
  spec = importlib.util.find_spec(photo.package)
  if spec is None or spec.origin is None:
    raise ImportError(f"{photo.package} is not installed: {BENCH_EXTRA}")
  path = pathlib.Path(spec.origin).parent / photo.path
  if not path.is_file():
    raise ImportError(f"{path} is missing from the installed {photo.package}: {BENCH_EXTRA}")
  return path


def write_photos(folder: epath.Path) -> np.ndarray:
  """Writes `PHOTOS` as `photo_<i>.png` (PHOTO_SIZE square, Lanczos) with `.txt` captions; returns them uint8."""
  folder.mkdir(parents=True, exist_ok=True)
  pixels = []
  for i, photo in enumerate(PHOTOS, start=1):
    left, top, side = photo.box
    with Image.open(photo_file(photo)) as source:
      image = source.convert("RGB").crop((left, top, left + side, top + side))
    image = image.resize((PHOTO_SIZE, PHOTO_SIZE), Image.Resampling.LANCZOS)
    _save(image, folder / f"photo_{i}.png")
    (folder / f"photo_{i}.txt").write_text(photo.caption)
    pixels.append(np.asarray(image, np.uint8))
  return np.stack(pixels)


def _run_config(config: ml_collections.ConfigDict, train_steps: int) -> ml_collections.ConfigDict:
  """A copy trained for `train_steps` with one checkpoint at the end, and no grids or evaluations during training
  (the benchmark samples and scores on its own; its training seconds are training alone)."""
  config = copy.deepcopy(config)
  config.train.update(num_steps=train_steps, checkpoint_every=train_steps, sample_prompts=(), eval_every=0)
  return validate(config)


def _train(config: ml_collections.ConfigDict, workdir: epath.Path) -> dict:
  started = time.perf_counter()
  metrics = train_and_evaluate(config, pathlib.Path(workdir))
  return {"train_steps": config.train.num_steps, "train_seconds": round(time.perf_counter() - started, 1),
          "final_loss": round(metrics["loss"], 4)}


def noise_estimates(pipeline: Pipeline, captions: list[str], size: int, seed: int) -> np.ndarray:
  """The network's one-step guesses of E[x | caption] from pure noise, x_hat = z + v(z, t = 0), as uint8 RGB
  (N, size, size, 3): at t = 0 nothing but the prompt can tell the colours."""
  ids, mask = pipeline.text_encoder.tokenizer(captions)
  noise = jax.random.normal(jax.random.key(seed), (len(captions), size, size, 3), jnp.float32)

  def estimate(params, text_params, ids, mask, z):
    text = pipeline.text_encoder.encode(text_params, ids, mask)
    t = jnp.zeros((z.shape[0],), jnp.float32)
    return to_uint8(z + pipeline.model.apply({"params": params}, z, t, text.hidden, text.mask, text.pooled).velocity)
  return np.asarray(jax.jit(estimate)(pipeline.params, pipeline.text_params, ids, mask, noise))


def _sample(workdir: epath.Path, captions: list[str], size: int, sample_steps: int | None,
            seed: int) -> tuple[np.ndarray, dict, Pipeline]:
  """uint8 images of `captions` from the run's EMA weights, the settings and seconds, and the pipeline."""
  started = time.perf_counter()
  pipeline = Pipeline.from_checkpoint(pathlib.Path(workdir), mesh=parallel.data_parallel_mesh(),
                                      overrides={"sample.num_steps": sample_steps})
  request = SampleRequest(captions, height=size, width=size, seed=seed, batch_size=SAMPLE_BATCH)
  images = pipeline.generate(request, progress=True)
  s = pipeline.config.sample
  return images, {"solver": s.solver, "sample_steps": s.num_steps, "guidance_scale": s.guidance_scale,
                  "guidance_interval": list(s.guidance_interval), "seed": seed,
                  "sample_seconds": round(time.perf_counter() - started, 1)}, pipeline


def _save(image: Image.Image, path: epath.Path) -> epath.Path:
  with path.open("wb") as file:
    image.save(file, format="PNG")
  return path


def _mean(values) -> float:
  return round(float(np.mean(list(values))), 4)
