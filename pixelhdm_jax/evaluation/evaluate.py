"""Evaluating a network: N generated images against reference statistics -> FID, FD-DINOv3, precision, recall.

The images come from the same `Pipeline` as `launch/sample.py` (one image per prompt, the prompts cycled to N),
in chunks of `evaluation.batch_size` so host memory stays bounded at any N; chunk c draws its noise from seed
`seed + c * batch_size`, so each image has its own noise. Results go to `<workdir>/eval/step_<step>.json` and
to TensorBoard (`eval/...`) by process 0.
"""

from __future__ import annotations

import json
import math
import time
from typing import Any, Sequence

import jax
import numpy as np
from etils import epath
from tqdm import tqdm

from pixelhdm_jax import storage
from pixelhdm_jax.evaluation.features import DINOV3, INCEPTION, Extractors
from pixelhdm_jax.evaluation.frechet import FeatureStatistics, frechet_distance
from pixelhdm_jax.evaluation.precision_recall import NEIGHBOURS, precision_recall
from pixelhdm_jax.evaluation.reference import Reference
from pixelhdm_jax.sample.pipeline import Pipeline
from pixelhdm_jax.sample.request import SampleRequest

SCALARS = ("fid", "fd_dinov3", "precision", "recall")


def sample_features(pipeline: Pipeline, extractors: Extractors, prompts: Sequence[str], num_images: int, size: int,
                    *, seed: int, params: Any = None, progress: bool = False) -> dict[str, np.ndarray]:
  """Features {extractor: (N, C)} of `num_images` images of `prompts` (cycled) at size x size, sampled with the
  pipeline's `config.sample` settings; `params` other weights of the network (e.g. the EMA in training)."""
  if not prompts:
    raise ValueError("no prompts to evaluate with: the reference holds no captions, pass a prompt file")
  chunk = min(extractors.batch_size, num_images)
  parts: dict[str, list[np.ndarray]] = {name: [] for name in extractors.names}
  with tqdm(total=num_images, desc="evaluation images", unit="img", disable=not progress) as bar:
    for start in range(0, num_images, chunk):
      count = min(chunk, num_images - start)
      # Always a full chunk (the last one's extra images are dropped): one compiled sampling loop for every chunk
      # and every evaluation of a run. Image k of a chunk keeps its noise, fold_in(key(seed + start), k).
      chunk_prompts = [prompts[(start + i) % len(prompts)] for i in range(chunk)]
      request = SampleRequest(chunk_prompts, height=size, width=size, seed=seed + start)
      images = pipeline.generate(request, params=params)[:count]
      for name, value in extractors(images).items():
        parts[name].append(value)
      bar.update(count)
  return {name: np.concatenate(value) for name, value in parts.items()}


def scores(reference: Reference, features: dict[str, np.ndarray]) -> dict[str, float]:
  """FID and FD-DINOv3 against the reference's statistics; precision and recall against its DINOv3 features
  (each only where both sides have the features)."""
  out = {}
  for name, label in ((INCEPTION, "fid"), (DINOV3, "fd_dinov3")):
    if name in features and name in reference.statistics:
      statistics = FeatureStatistics(features[name].shape[1]).update(features[name])
      out[label] = frechet_distance(*statistics.mean_and_covariance(), *reference.statistics[name])
  if DINOV3 in features and DINOV3 in reference.features:
    k = min(NEIGHBOURS, len(features[DINOV3]) - 1, len(reference.features[DINOV3]) - 1)
    out["precision"], out["recall"] = precision_recall(reference.features[DINOV3], features[DINOV3], k)
  return out


def evaluate(pipeline: Pipeline, extractors: Extractors, reference: Reference, num_images: int, size: int, *,
             seed: int, prompts: Sequence[str] | None = None, params: Any = None,
             progress: bool = False) -> dict[str, Any]:
  """The scores of `num_images` samples at size x size (prompts: the reference's captions unless given), with
  what produced them."""
  if reference.size not in (None, size):
    raise ValueError(f"the reference statistics were made at {reference.size}x{reference.size}, not at the "
                     f"evaluated {size}x{size}: make a reference at that size")
  started = time.perf_counter()
  features = sample_features(pipeline, extractors, reference.captions if prompts is None else prompts, num_images,
                             size, seed=seed, params=params, progress=progress)
  result = scores(reference, features)
  s = pipeline.config.sample
  settings = {"solver": s.solver, "num_steps": s.num_steps, "guidance_scale": s.guidance_scale,
              "guidance_interval": list(s.guidance_interval), "time_shift_mode": s.time_shift_mode,
              "time_shift": s.time_shift}
  return {**result, "num_images": num_images, "image_size": size, "seed": seed,
          "prompts": "dataset captions" if prompts is None else "prompt file",
          "inception_weights": extractors.info.inception_weights,
          "random_inception_weights": extractors.info.random_inception,
          "inception_resize": extractors.info.inception_resize, "reference_images": reference.num_images,
          **settings, "seconds": round(time.perf_counter() - started, 2)}


def write_result(workdir: str | epath.Path, step: int, result: dict[str, Any]) -> epath.Path:
  """`<workdir>/eval/step_<step>.json` and the TensorBoard scalars `eval/<score>` (process 0 only)."""
  path = epath.Path(workdir) / "eval" / f"step_{step:08d}.json"
  if jax.process_index() != 0:
    return path
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps({"step": step, **result}, indent=2) + "\n")
  with storage.tensorboard_writer(epath.Path(workdir) / "tb") as writer:
    for name in SCALARS:
      if name in result and math.isfinite(result[name]):
        writer.add_scalar(f"eval/{name}", result[name], step)
  return path
