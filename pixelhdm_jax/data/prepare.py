"""Folder of captioned images -> a TFDS dataset in ArrayRecord format, a bucket index and a report.

`prepare_folder(images_dir, output_dir, buckets)` walks `images_dir` recursively in sorted order, checks
and converts every image (in worker processes), then writes `output_dir/pixelhdm_folder/1.0.0/` (TFDS,
ArrayRecord; features: image bytes, caption, width, height, bucket_id, path), `index_<split>.npz` (width,
height and bucket id of every record, so the loader buckets without decoding) and `report.json`.

Bad input never stops it: every file is kept (bytes unchanged), converted (to upright 8-bit RGB) or
skipped, and the report names each converted or skipped file with the reason. The train/validation split
is a fixed hash of the relative path. A second run with unchanged inputs and settings does nothing.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import multiprocessing
import os
import pathlib
import tempfile
import warnings
from typing import Iterator

import numpy as np
import tensorflow_datasets as tfds
import tqdm
from etils import epath
from PIL import Image, UnidentifiedImageError

from pixelhdm_jax import storage
from pixelhdm_jax.data import images as image_ops
from pixelhdm_jax.data.buckets import AspectRatioBucket

BUILDER_NAME = "pixelhdm_folder"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tiff", ".tif")
REPORT_FILE = "report.json"
SPLITS = ("train", "validation")
KEPT_FORMATS = ("JPEG", "PNG", "WEBP")  # stored as they are when already upright 8-bit RGB
LOSSY_FORMATS = ("JPEG", "WEBP", "MPO")  # converted ones are re-encoded as JPEG; the rest as PNG
JPEG_QUALITY = 95
# Bumped whenever the stored output would change for the same inputs, so old outputs are rebuilt.
FORMAT_VERSION = 1


@dataclasses.dataclass
class Outcome:
  """What happened to one file: status kept | converted | skipped, with the reasons."""
  path: str
  status: str
  reasons: list[str] = dataclasses.field(default_factory=list)  # conversions done, or the skip reason
  skip_kind: str = ""  # short class of the skip reason, for the counts
  caption: str = ""
  caption_issue: str | None = None
  width: int = 0
  height: int = 0
  staged: str | None = None  # converted bytes written here (kept files are read from the source)


def index_path(output_dir: str | os.PathLike, split: str) -> epath.Path:
  return epath.Path(output_dir) / f"index_{split}.npz"


def dataset_dir(output_dir: str | os.PathLike) -> epath.Path:
  return epath.Path(output_dir) / BUILDER_NAME / str(PixelhdmFolder.VERSION)


def split_of(relpath: str, validation_fraction: float) -> str:
  """`validation` for a fixed pseudo-random fraction of relative paths, `train` for the rest."""
  digest = int.from_bytes(hashlib.sha256(relpath.encode("utf-8")).digest()[:8], "big")
  return "validation" if digest / 2.0**64 < validation_fraction else "train"


def read_caption(image_path: pathlib.Path) -> tuple[str, str | None]:
  """The stripped text of the same-named `.txt` file, and an issue note when it is missing/empty/not UTF-8."""
  caption_path = image_path.with_suffix(".txt")
  if not caption_path.is_file():
    return "", "missing caption (trained with the empty prompt)"
  raw = caption_path.read_bytes()
  issue = None
  try:
    text = raw.decode("utf-8-sig")
  except UnicodeDecodeError:
    text, issue = raw.decode("utf-8", errors="replace"), "caption not UTF-8 (decoded with replacement characters)"
  text = text.strip()
  if not text:
    return "", "empty caption (trained with the empty prompt)"
  return text, issue


def convert_file(root: pathlib.Path, relpath: str, stage: pathlib.Path, *, min_resolution: int,
                 max_image_pixels: int) -> Outcome:
  """Checks one image; writes its converted bytes to `stage` when it is not stored as is."""
  path = root / relpath
  caption, caption_issue = read_caption(path)
  outcome = Outcome(relpath, "skipped", caption=caption, caption_issue=caption_issue)

  def skip(kind: str, detail: str) -> Outcome:
    outcome.skip_kind, outcome.reasons = kind, [f"{kind}: {detail}"]
    return outcome

  if path.stat().st_size == 0:
    return skip("empty file", "0 bytes")
  try:
    with warnings.catch_warnings():
      warnings.simplefilter("ignore", Image.DecompressionBombWarning)
      image = Image.open(path)
  except Image.DecompressionBombError as error:
    return skip("too large", str(error))
  except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as error:
    return skip("not a readable image", f"{type(error).__name__}: {error}")
  with image:
    width, height = image.size
    if width * height > max_image_pixels:
      return skip("too large", f"{width}x{height} exceeds max_image_pixels={max_image_pixels} "
                  "(decompression-bomb limit)")
    if min(width, height) < min_resolution:
      return skip("too small", f"{width}x{height}, the shorter side is below min_resolution={min_resolution} "
                  "(the smallest bucket)")
    try:
      image.load()
      rgb, notes = image_ops.decoded_rgb(image)
    except Exception as error:  # noqa: BLE001  (any decoder failure means a broken file, never a stop)
      return skip("truncated or corrupt", f"{type(error).__name__}: {error}")
    frames = getattr(image, "n_frames", 1)
    if frames > 1:
      notes.append(f"kept the first of {frames} frames")
    if image.format not in KEPT_FORMATS:
      notes.append(f"re-encoded {image.format} as {'JPEG' if image.format in LOSSY_FORMATS else 'PNG'}")
    outcome.width, outcome.height = rgb.size
    outcome.reasons = notes
    if not notes:
      outcome.status = "kept"
      return outcome
    buffer = io.BytesIO()
    if image.format in LOSSY_FORMATS:
      rgb.save(buffer, format="JPEG", quality=JPEG_QUALITY)
    else:
      rgb.save(buffer, format="PNG")
    stage.write_bytes(buffer.getvalue())
    outcome.status, outcome.staged = "converted", str(stage)
    return outcome


class PixelhdmFolder(tfds.core.GeneratorBasedBuilder):
  """TFDS builder over the outcomes of `convert_file`; records keep the sorted path order of each split."""
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Captioned images with their size and aspect-ratio bucket."}
  # Nothing is downloaded, so there are no URL checksums to look up beside the code (TFDS's look-up also
  # needs `importlib_resources`, which TFDS only installs on Python < 3.9).
  code_path = None

  def __init__(self, *, outcomes: dict[str, list[Outcome]] | None = None, root: str = "",
               bucket_ids: dict[str, np.ndarray] | None = None, **kwargs):
    self.outcomes = outcomes or {}
    self.root = pathlib.Path(root)
    self.bucket_ids = bucket_ids or {}
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self, disable_shuffling=True,
        description="Captioned images prepared by PixelHDM-JAX's launch/prepare_data.py.",
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(None, None, 3)),
            "caption": tfds.features.Text(),
            "width": np.int32,
            "height": np.int32,
            "bucket_id": np.int32,
            "path": tfds.features.Text(),
        }))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {split: self._generate_examples(split) for split, items in self.outcomes.items() if items}

  def _generate_examples(self, split: str) -> Iterator[tuple[str, dict]]:
    for outcome, bucket in zip(self.outcomes[split], self.bucket_ids[split]):
      source = pathlib.Path(outcome.staged) if outcome.staged else self.root / outcome.path
      yield outcome.path, {"image": source.read_bytes(), "caption": outcome.caption, "width": outcome.width,
                           "height": outcome.height, "bucket_id": int(bucket), "path": outcome.path}


def _scan(images_dir: pathlib.Path, output_dir: epath.Path) -> tuple[list[str], list[str], list[pathlib.Path]]:
  """Sorted relative paths of images and of unsupported files, and every file (for the fingerprint)."""
  images, unsupported, files = [], [], []
  output = None if storage.is_remote(output_dir) else pathlib.Path(output_dir).resolve()
  for path in sorted(images_dir.rglob("*")):
    if not path.is_file() or (output is not None and output in path.resolve().parents):
      continue
    files.append(path)
    relpath = path.relative_to(images_dir).as_posix()
    suffix = path.suffix.lower()
    if suffix in IMAGE_EXTENSIONS:
      images.append(relpath)
    elif suffix != ".txt":
      unsupported.append(relpath)
  return images, unsupported, files


def _fingerprint(images_dir: pathlib.Path, files: list[pathlib.Path], settings: dict) -> str:
  digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
  for path in files:
    stat = path.stat()
    digest.update(f"{path.relative_to(images_dir).as_posix()}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
  return digest.hexdigest()


def _convert_job(job: tuple) -> Outcome:
  root, relpath, stage, min_resolution, max_image_pixels = job
  return convert_file(pathlib.Path(root), relpath, pathlib.Path(stage), min_resolution=min_resolution,
                      max_image_pixels=max_image_pixels)


def _convert_all(jobs: list[tuple], workers: int, progress: bool) -> list[Outcome]:
  """Outcomes in job order, from `workers` processes (or this one) behind a progress bar."""
  outcomes = []
  with tqdm.tqdm(total=len(jobs), desc="checking images", unit="img", disable=not progress) as bar:
    if workers <= 1:
      for job in jobs:
        outcomes.append(_convert_job(job))
        bar.update(1)
      return outcomes
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
      for outcome in pool.imap(_convert_job, jobs, chunksize=4):
        outcomes.append(outcome)
        bar.update(1)
  return outcomes


def prepare_folder(images_dir: str | os.PathLike, output_dir: str | os.PathLike, buckets: AspectRatioBucket, *,
                   validation_fraction: float = 0.01, max_image_pixels: int = Image.MAX_IMAGE_PIXELS,
                   workers: int = 1, progress: bool = True) -> dict:
  """Prepares `images_dir` into `output_dir` and returns the report (also written as `report.json`).

  Args:
    images_dir: local folder searched recursively for images with same-named `.txt` captions.
    output_dir: receives the TFDS dataset, the bucket index and the report (local or cloud storage: a cloud
      dataset is built in a local temporary folder, then uploaded).
    buckets: the bucket list; images with a shorter side below its `min_resolution` are skipped.
    validation_fraction: share of images (by hash of the relative path) in the `validation` split.
    max_image_pixels: larger images are skipped (decompression-bomb limit; PIL's default).
    workers: processes that decode and convert images.
    progress: show a progress bar.

  Returns:
    The report: counts of kept / converted / skipped files, split sizes, bucket counts, the reasons, and
    `up_to_date: true` when nothing had changed since the last run (then nothing was written).
  """
  if storage.is_remote(images_dir):
    raise FileNotFoundError(f"--images={images_dir}: the images must be in a local folder (copy them first, e.g. "
                            "gcloud storage cp -r); the output may be in cloud storage")
  images_dir, output_dir = pathlib.Path(images_dir), storage.location(output_dir)
  if not images_dir.is_dir():
    raise FileNotFoundError(f"--images={images_dir} is not a folder")
  settings = {"format_version": FORMAT_VERSION, "buckets": buckets.spec(), "max_image_pixels": max_image_pixels,
              "validation_fraction": validation_fraction}
  relpaths, unsupported, files = _scan(images_dir, output_dir)
  fingerprint = _fingerprint(images_dir, files, settings)
  previous = _previous_report(output_dir, fingerprint)
  if previous is not None:
    return {**previous, "up_to_date": True}
  report_path = output_dir / REPORT_FILE
  _remove_outputs(output_dir)
  output_dir.mkdir(parents=True, exist_ok=True)
  remote = storage.is_remote(output_dir)
  with tempfile.TemporaryDirectory(dir=None if remote else output_dir, prefix=".staging-") as stage:
    jobs = [(str(images_dir), relpath, str(pathlib.Path(stage) / f"{i:09d}"), buckets.min_resolution,
             max_image_pixels) for i, relpath in enumerate(relpaths)]
    outcomes = _convert_all(jobs, workers, progress)
    skipped = [Outcome(p, "skipped", [f"unsupported extension: {pathlib.Path(p).suffix or '(none)'}"],
                       skip_kind="unsupported extension") for p in unsupported]
    by_split = {split: [] for split in SPLITS}
    for outcome in outcomes:
      if outcome.status != "skipped":
        by_split[split_of(outcome.path, validation_fraction)].append(outcome)
    bucket_ids = {split: buckets.assign(np.asarray([o.width for o in items]), np.asarray([o.height for o in items]))
                  for split, items in by_split.items()}
    report = _report(images_dir, output_dir, outcomes + skipped, by_split, bucket_ids, buckets, settings, fingerprint)
    if not any(by_split.values()):
      report_path.write_text(json.dumps(report, indent=2, ensure_ascii=False))
      raise ValueError(f"no usable image in {images_dir}: every file was skipped, see {report_path}")
    builder = PixelhdmFolder(outcomes=by_split, root=str(images_dir), bucket_ids=bucket_ids,
                             data_dir=stage if remote else os.fspath(output_dir), file_format="array_record")
    tfds.disable_progress_bar()
    builder.download_and_prepare(download_dir=str(pathlib.Path(stage) / "downloads"))
    if remote:  # ArrayRecord files are written locally only
      storage.copy_tree(epath.Path(stage) / BUILDER_NAME, output_dir / BUILDER_NAME)
  for split, items in by_split.items():
    if items:
      _write_index(index_path(output_dir, split), items, bucket_ids[split], buckets)
  report_path.write_text(json.dumps(report, indent=2, ensure_ascii=False))
  return report


def _previous_report(output_dir: epath.Path, fingerprint: str) -> dict | None:
  """The last run's report if it was made from the same inputs and settings and its outputs exist."""
  report_path = output_dir / REPORT_FILE
  if not report_path.is_file():
    return None
  previous = json.loads(report_path.read_text())
  written = all(index_path(output_dir, split).is_file() for split, n in previous.get("splits", {}).items() if n)
  if previous.get("fingerprint") == fingerprint and written and dataset_dir(output_dir).is_dir():
    return previous
  return None


def _write_index(path: epath.Path, items: list[Outcome], bucket_ids: np.ndarray, buckets: AspectRatioBucket):
  """Sizes and bucket ids of a split's records, in record order, with the bucket settings they belong to."""
  buffer = io.BytesIO()
  np.savez(buffer, width=np.asarray([o.width for o in items], np.int32),
           height=np.asarray([o.height for o in items], np.int32), bucket_id=bucket_ids,
           buckets=np.asarray(buckets.buckets, np.int32), spec=json.dumps(buckets.spec()))
  path.write_bytes(buffer.getvalue())


def _remove_outputs(output_dir: epath.Path) -> None:
  """Deletes what an earlier run wrote (and nothing else) before a rebuild."""
  (output_dir / BUILDER_NAME).rmtree(missing_ok=True)
  for path in [output_dir / REPORT_FILE] + [index_path(output_dir, split) for split in SPLITS]:
    path.unlink(missing_ok=True)


def _count(values) -> dict[str, int]:
  counts: dict[str, int] = {}
  for value in values:
    counts[value] = counts.get(value, 0) + 1
  return dict(sorted(counts.items()))


def _report(images_dir, output_dir, outcomes: list[Outcome], by_split, bucket_ids, buckets, settings,
            fingerprint) -> dict:
  converted = [o for o in outcomes if o.status == "converted"]
  skipped = sorted((o for o in outcomes if o.status == "skipped"), key=lambda o: o.path)
  used = [o for o in outcomes if o.status != "skipped"]
  captions = [o for o in used if o.caption_issue]
  names = [f"{w}x{h}" for w, h in buckets.buckets]
  return {
      "images_dir": str(images_dir), "output_dir": str(output_dir), "fingerprint": fingerprint,
      "settings": settings, "up_to_date": False,
      "files": len(outcomes), "kept": sum(o.status == "kept" for o in outcomes), "converted": len(converted),
      "skipped": len(skipped), "splits": {split: len(items) for split, items in by_split.items()},
      "buckets": _count(names[b] for b in bucket_ids["train"]),
      "converted_reasons": _count(r for o in converted for r in o.reasons),
      "skipped_reasons": _count(o.skip_kind for o in skipped),
      "caption_issues": _count(o.caption_issue for o in captions),
      "converted_files": [{"path": o.path, "reasons": o.reasons} for o in converted],
      "skipped_files": [{"path": o.path, "reason": o.reasons[0]} for o in skipped],
      "caption_files": [{"path": o.path, "issue": o.caption_issue} for o in captions],
  }


def format_report(report: dict) -> str:
  """The closing report as text for the terminal."""
  if report.get("up_to_date"):
    return (f"{report['output_dir']} is up to date with {report['images_dir']}: nothing to do "
            f"({report['splits']}).")
  lines = [(f"{report['files']} files: {report['kept']} kept, {report['converted']} converted, "
            f"{report['skipped']} skipped; splits {report['splits']}")]
  for title, key in (("converted", "converted_reasons"), ("skipped", "skipped_reasons"),
                     ("caption issues", "caption_issues")):
    if report[key]:
      lines.append(f"{title}: " + ", ".join(f"{reason} x{n}" for reason, n in report[key].items()))
  for entry in report["skipped_files"]:
    lines.append(f"  skipped {entry['path']}: {entry['reason']}")
  lines.append(f"report: {epath.Path(report['output_dir']) / REPORT_FILE}")
  return "\n".join(lines)
