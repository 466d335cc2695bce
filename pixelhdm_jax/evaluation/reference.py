"""Reference statistics of a dataset: the features of N centre-cropped images, keyed by what produced them.

The images are the first N of a fixed permutation of the training source (`config.data`), centre-cropped to
size x size as the loader does without augmentation; unreadable ones are skipped and counted. The file holds
`mu` and `sigma` of the Inception features (the names pytorch-fid, ADM and JiT use, so any of their reference
files can stand in for FID), the DINOv3 statistics and features (FD-DINOv3, precision and recall), the
captions (the prompts of an evaluation) and the key: dataset fingerprint, size, extractors and N. A file
whose key matches is reused, never recomputed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
from typing import Any, Iterator

import ml_collections
import numpy as np
from absl import logging
from etils import epath
from tqdm import tqdm

from pixelhdm_jax.data import images as image_ops
from pixelhdm_jax.data import prepare
from pixelhdm_jax.data.sources import build_source
from pixelhdm_jax.evaluation.features import DINOV3, INCEPTION, ExtractorInfo, Extractors
from pixelhdm_jax.evaluation.frechet import FeatureStatistics
from pixelhdm_jax.user_cache import user_cache_root

FORMAT_VERSION = 1
PERMUTATION_SEED = 0  # the same images for every run and seed, so references are comparable


@dataclasses.dataclass
class Reference:
  """Statistics {extractor: (mu, sigma)}, DINOv3 features for precision/recall, captions, and the key (None for
  a file made by another tool, which holds Inception `mu`/`sigma` only)."""
  statistics: dict[str, tuple[np.ndarray, np.ndarray]]
  features: dict[str, np.ndarray]
  captions: list[str]
  key: dict[str, Any] | None

  @property
  def num_images(self) -> int | None:
    return None if self.key is None else self.key["num_images"]

  @property
  def size(self) -> int | None:
    return None if self.key is None else self.key["size"]


def dataset_fingerprint(data: ml_collections.ConfigDict) -> str:
  """Names the dataset's content: the prepared folder's input fingerprint, the TFDS name and split, or the
  synthetic set's size (its images are a pure function of the index)."""
  if data.source == "folder":
    report = epath.Path(data.path) / prepare.REPORT_FILE
    fingerprint = json.loads(report.read_text())["fingerprint"] if report.exists() else str(data.path)
    return f"folder:{fingerprint}:{data.split}"
  if data.source == "tfds":
    return f"tfds:{data.tfds_name}:{data.path}:{data.split}"
  return f"synthetic:{data.synthetic_size}"


def reference_key(config: ml_collections.ConfigDict, extractors: Extractors, size: int, num_images: int) -> dict:
  info = extractors.info
  return {"format": FORMAT_VERSION, "dataset": dataset_fingerprint(config.data), "size": size,
          "num_images": num_images, "inception_weights": info.inception_weights,
          "inception_resize": info.inception_resize, "dinov3": info.dinov3}


def reference_images(config: ml_collections.ConfigDict, num_images: int, size: int,
                     batch_size: int) -> Iterator[tuple[np.ndarray, list[str]]]:
  """Batches of (uint8 (B, size, size, 3), captions): N readable images of the source, centre-cropped."""
  source = build_source(config.data)
  if num_images > len(source):
    raise ValueError(f"the dataset has {len(source)} images, fewer than the {num_images} asked for: "
                     f"lower the number of images to at most {len(source)}")
  images, captions, skipped, remaining = [], [], 0, num_images
  for index in np.random.default_rng(PERMUTATION_SEED).permutation(len(source)):
    try:
      image, caption = source.example(int(index), (size, size))
      image, _ = image_ops.decoded_rgb(image)
    except Exception as failure:  # noqa: BLE001  (a broken record is skipped and counted, as in training)
      logging.warning("reference: skipping unreadable sample %d (%s: %s)", index, type(failure).__name__, failure)
      skipped += 1
      continue
    images.append(image_ops.cover_crop(image, (size, size)))
    captions.append(caption)
    if len(images) in (batch_size, remaining):
      yield np.stack(images), captions
      remaining -= len(images)
      images, captions = [], []
    if remaining == 0:
      break
  if remaining:
    raise ValueError(f"only {len(source) - skipped} images of the dataset are readable ({skipped} skipped): "
                     "ask for fewer images")
  if skipped:
    logging.warning("reference: %d unreadable images skipped", skipped)


def compute_reference(config: ml_collections.ConfigDict, extractors: Extractors, num_images: int, size: int, *,
                      progress: bool = True) -> Reference:
  """The reference of `num_images` images of `config.data` at size x size."""
  statistics: dict[str, FeatureStatistics] = {}
  dinov3_parts, all_captions = [], []
  with tqdm(total=num_images, desc="reference images", unit="img", disable=not progress) as bar:
    for images, captions in reference_images(config, num_images, size, extractors.batch_size):
      features = extractors(images)
      for name, value in features.items():
        statistics.setdefault(name, FeatureStatistics(value.shape[1])).update(value)
      if DINOV3 in features:
        dinov3_parts.append(features[DINOV3])
      all_captions += captions
      bar.update(len(images))
  return Reference({name: s.mean_and_covariance() for name, s in statistics.items()},
                   {DINOV3: np.concatenate(dinov3_parts)} if dinov3_parts else {}, all_captions,
                   reference_key(config, extractors, size, num_images))


def save_reference(path: str | epath.Path, reference: Reference) -> None:
  arrays = {"captions": np.asarray(reference.captions, dtype=str), "key": json.dumps(reference.key)}
  for name, (mu, sigma) in reference.statistics.items():
    prefix = "" if name == INCEPTION else f"{name}_"
    arrays.update({f"{prefix}mu": mu, f"{prefix}sigma": sigma})
  arrays.update({f"{name}_features": value for name, value in reference.features.items()})
  buffer = io.BytesIO()
  np.savez(buffer, **arrays)
  path = epath.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_bytes(buffer.getvalue())


def load_reference(path: str | epath.Path) -> Reference:
  """A file of `save_reference`, or another tool's `.npz` with Inception `mu` and `sigma` (key None)."""
  path = epath.Path(path)
  if not path.exists():
    raise FileNotFoundError(f"reference statistics {path} do not exist: make them with "
                            "`python launch/evaluate.py reference --config=... --output=STATS.npz`")
  with path.open("rb") as file, np.load(file) as data:  # lazily: an ADM file's images are never read
    if "mu" not in data or "sigma" not in data:
      raise ValueError(f"{path} holds no Inception statistics (arrays `mu` and `sigma`): is it a reference file?")
    statistics = {INCEPTION: (data["mu"], data["sigma"])}
    if f"{DINOV3}_mu" in data:
      statistics[DINOV3] = (data[f"{DINOV3}_mu"], data[f"{DINOV3}_sigma"])
    features = {DINOV3: data[f"{DINOV3}_features"]} if f"{DINOV3}_features" in data else {}
    captions = [str(c) for c in data["captions"]] if "captions" in data else []
    key = json.loads(str(data["key"])) if "key" in data else None
  return Reference(statistics, features, captions, key)


def check_extractors(reference: Reference, info: ExtractorInfo) -> None:
  """Raises unless `reference` was made by the same feature networks (else the distances compare different
  features); a file of another tool has no key and is taken on trust, with a warning."""
  if reference.key is None:
    logging.warning("the reference has no key (made by another tool): its FID is comparable only if it used the "
                    "same Inception weights and resize (%s)", info.inception_resize)
    return
  for field in ("inception_weights", "inception_resize", "dinov3"):
    if reference.key[field] != getattr(info, field):
      raise ValueError(f"the reference was made with {field}={reference.key[field]!r} but this evaluation uses "
                       f"{getattr(info, field)!r}: make the reference with the same settings")


def cached_path(key: dict) -> epath.Path:
  digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
  return epath.Path(user_cache_root()) / "reference_statistics" / f"{digest}.npz"


def reference_for(config: ml_collections.ConfigDict, extractors: Extractors, num_images: int, size: int, *,
                  output: str | epath.Path | None = None, progress: bool = True) -> tuple[Reference, epath.Path]:
  """The reference of `num_images` images at `size`, read from `output` (default: the user cache, by key) when
  it was made with the same key, else computed and written there; returns it and the file."""
  key = reference_key(config, extractors, size, num_images)
  path = cached_path(key) if output is None else epath.Path(output)
  if path.exists():
    previous = load_reference(path)
    if previous.key == key:
      logging.info("reference statistics up to date: %s", path)
      return previous, path
    logging.info("reference statistics in %s were made with other settings: recomputing", path)
  reference = compute_reference(config, extractors, num_images, size, progress=progress)
  save_reference(path, reference)
  logging.info("reference statistics of %d images written to %s", num_images, path)
  return reference, path
