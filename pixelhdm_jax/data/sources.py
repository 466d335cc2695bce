"""Captioned-image sources behind one interface: a prepared folder, any TFDS dataset, synthetic shapes.

A source is random access and knows each record's bucket without decoding it:

  len(source)                  number of records
  source.bucket_ids(buckets)   int32 bucket id of every record
  source.example(i, size)      (PIL image, caption) of record i; `size` = (width, height) of its bucket,
                               a hint that lets a JPEG decode at a reduced scale
  source.image_sizes()         (optional) (N, 2) stored (width, height) of every record, so the loader can
                               leave out images too small for every bucket; a source without it (synthetic:
                               drawn at any size) never upscales

Sources are pickled into Grain's worker processes, so they open files lazily.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import re
import tempfile
from typing import Protocol

import numpy as np
import tensorflow_datasets as tfds
import tqdm
from absl import logging
from etils import epath
from PIL import Image

from pixelhdm_jax import storage
from pixelhdm_jax.data import images as image_ops
from pixelhdm_jax.data import prepare
from pixelhdm_jax.data.buckets import AspectRatioBucket
from pixelhdm_jax.data.synthetic import SyntheticSource
from pixelhdm_jax.user_cache import user_cache_root


class ImageTextSource(Protocol):

  def __len__(self) -> int:
    ...

  def bucket_ids(self, buckets: AspectRatioBucket) -> np.ndarray:
    ...

  def example(self, index: int, size: tuple[int, int]) -> tuple[Image.Image, str]:
    ...


def as_text(value) -> str:
  """A caption feature (str, UTF-8 bytes, or a list/array of them: the first) as text."""
  if isinstance(value, (list, tuple, np.ndarray)) and not isinstance(value, (str, bytes)):
    value = value[0] if len(value) else ""
  if isinstance(value, bytes):
    return value.decode("utf-8", errors="replace").strip()
  return str(value).strip()


def size_cache_dir() -> pathlib.Path:
  """Where TFDS image sizes are cached: `$PIXELHDM_CACHE_DIR/image_sizes`, else
  `$XDG_CACHE_HOME/pixelhdm_jax/image_sizes` (default `~/.cache/...`)."""
  return pathlib.Path(os.environ.get("PIXELHDM_CACHE_DIR") or user_cache_root()) / "image_sizes"


def load_sizes(path: pathlib.Path, count: int) -> np.ndarray | None:
  """The cached (count, 2) sizes at `path`, or None (logged) when the file is missing, unreadable or wrong."""
  try:
    with open(path, "rb") as file:
      sizes = np.lib.format.read_array(file, allow_pickle=False)  # a .npy file only
  except (FileNotFoundError, NotADirectoryError):
    return None
  except Exception as error:  # noqa: BLE001  (any broken file means: read the headers again)
    logging.warning("ignoring unreadable image-size cache %s (%s): reading the headers again", path, error)
    return None
  if sizes.shape != (count, 2) or sizes.dtype.kind not in "iu" or (sizes < 0).any():
    logging.warning("ignoring image-size cache %s: it holds %s %s, not (%d, 2) sizes >= 0: reading the headers "
                    "again", path, sizes.dtype, sizes.shape, count)
    return None
  return sizes.astype(np.int64)


def save_sizes(path: pathlib.Path, sizes: np.ndarray) -> None:
  """Writes `sizes` atomically (a temp file, then a rename); a cache that cannot be written is only logged."""
  temp = None
  try:
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp")
    with os.fdopen(descriptor, "wb") as file:
      np.save(file, sizes)
    os.replace(temp, path)
  except OSError as error:
    logging.warning("cannot write the image-size cache %s (%s): going on without it", path, error)
    if temp is not None and os.path.exists(temp):
      os.remove(temp)


class _LazyDataSource:
  """Opens a TFDS data source on first use, in whichever process uses it."""

  def __init__(self):
    self._source = None

  def __getstate__(self):
    return {**self.__dict__, "_source": None}

  def _open(self):
    raise NotImplementedError

  @property
  def data_source(self):
    if self._source is None:
      self._source = self._open()
    return self._source

  def __len__(self) -> int:
    return len(self.data_source)


def local_dataset(remote: epath.Path) -> epath.Path:
  """A local copy of the prepared dataset at `remote` (ArrayRecord reads local files only), in the user cache;
  copied again only when the remote report's fingerprint changed."""
  local = epath.Path(user_cache_root()) / "datasets" / hashlib.sha256(os.fspath(remote).encode()).hexdigest()[:16]
  report = prepare.REPORT_FILE
  if (local / report).exists() and (local / report).read_bytes() == (remote / report).read_bytes():
    return local
  logging.info("copying the prepared dataset %s to %s (ArrayRecord is read from local files)", remote, local)
  local.rmtree(missing_ok=True)
  for entry in remote.iterdir():
    if entry.name != report:
      (storage.copy_tree if entry.is_dir() else storage.copy_file)(entry, local / entry.name)
  storage.copy_file(remote / report, local / report)  # last: it marks a complete copy
  return local


class FolderSource(_LazyDataSource):
  """The output of `launch/prepare_data.py`: TFDS ArrayRecord records plus the bucket index (a dataset in cloud
  storage is copied to the user cache first)."""

  def __init__(self, path: str | os.PathLike, split: str = "train", jpeg_draft: bool = True):
    super().__init__()
    self.path = storage.location(path)
    self.split = split
    self.jpeg_draft = jpeg_draft
    if not prepare.index_path(self.path, split).is_file() or not prepare.dataset_dir(self.path).is_dir():
      raise FileNotFoundError(f"{self.path} holds no prepared split {split!r}: run "
                              f"`python launch/prepare_data.py --images=DIR --output={self.path}` first "
                              f"(and check report.json there for the {split} split size)")
    if storage.is_remote(self.path):
      self.path = local_dataset(self.path)

  def _open(self):
    builder = tfds.builder_from_directory(str(prepare.dataset_dir(self.path)))
    return builder.as_data_source(self.split, decoders={"image": tfds.decode.SkipDecoding()})

  def bucket_ids(self, buckets: AspectRatioBucket) -> np.ndarray:
    with np.load(prepare.index_path(self.path, self.split)) as index:
      if json.loads(str(index["spec"])) == buckets.spec():
        return index["bucket_id"].astype(np.int32)
      logging.info("bucket settings differ from the prepared index: reassigning %d images", len(index["width"]))
      return buckets.assign(index["width"], index["height"])

  def image_sizes(self) -> np.ndarray:
    """(N, 2) int64 (width, height) of every record, upright, from the prepared index."""
    with np.load(prepare.index_path(self.path, self.split)) as index:
      return np.stack([index["width"], index["height"]], 1).astype(np.int64)

  def example(self, index: int, size: tuple[int, int]) -> tuple[Image.Image, str]:
    record = self.data_source[int(index)]
    image = image_ops.open_image(record["image"], size if self.jpeg_draft else None)
    return image, as_text(record["caption"])

  def caption(self, index: int) -> str:
    """Record `index`'s caption, without decoding its image (the text-cache job reads every caption)."""
    return as_text(self.data_source[int(index)]["caption"])

  def fingerprint(self) -> str:
    """The fingerprint of the inputs and settings the dataset was prepared from (`report.json`)."""
    return json.loads((self.path / prepare.REPORT_FILE).read_text())["fingerprint"]


class TfdsSource(_LazyDataSource):
  """Any TFDS dataset stored in ArrayRecord format, with an image feature and a text feature.

  Image sizes come from the feature's static shape, or else from each image's header (read without
  decoding pixels, then cached under `size_cache_dir()` so a restart skips it).
  """

  def __init__(self, name: str, data_dir: str | None = None, split: str = "train", image_feature: str = "image",
               caption_feature: str = "caption", jpeg_draft: bool = True):
    super().__init__()
    self.name, self.data_dir, self.split = name, data_dir or None, split
    self.image_feature, self.caption_feature = image_feature, caption_feature
    self.jpeg_draft = jpeg_draft
    builder = self._builder()
    info = builder.info
    self._version, self._location = str(info.version), str(builder.data_dir)
    features = info.features
    for feature in (image_feature, caption_feature):
      if feature not in features:
        raise KeyError(f"TFDS dataset {name!r} has no feature {feature!r} (it has {sorted(features)}): set "
                       "data.image_feature / data.caption_feature")
    self._encoded = isinstance(features[image_feature], tfds.features.Image)
    self._shape = tuple(features[image_feature].shape) if self._encoded else (None,)

  def _builder(self):
    return tfds.builder(self.name, data_dir=self.data_dir)

  def _open(self):
    decoders = {self.image_feature: tfds.decode.SkipDecoding()} if self._encoded else None
    return self._builder().as_data_source(self.split, decoders=decoders)

  def bucket_ids(self, buckets: AspectRatioBucket) -> np.ndarray:
    sizes = self.image_sizes()
    return buckets.assign(sizes[:, 0], sizes[:, 1])

  def image_sizes(self) -> np.ndarray:
    """(N, 2) int64 (width, height) of every record, 0 for a broken one: the feature's static shape, else the
    cache, else the headers.

    Sizes rather than bucket ids are cached, so changed bucket settings reuse the cache.
    """
    if len(self._shape) == 3 and None not in self._shape[:2]:
      height, width = self._shape[:2]
      return np.tile(np.asarray([width, height], np.int64), (len(self), 1))
    key = json.dumps([self._location, self.name, self._version, self.split, self.image_feature, len(self)])
    stem = re.sub(r"[^\w.-]+", "_", f"{self.name}-{self._version}-{self.split}")
    path = size_cache_dir() / f"{stem}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.npy"
    sizes = load_sizes(path, len(self))
    if sizes is None:
      sizes = self._read_sizes()
      save_sizes(path, sizes)
    return sizes

  def _read_sizes(self) -> np.ndarray:
    sizes = np.zeros((len(self), 2), np.int64)
    broken = 0
    for i in tqdm.trange(len(self), desc=f"reading image sizes of {self.name}", unit="img"):
      try:
        sizes[i] = self._image(self.data_source[i][self.image_feature], None).size
      except Exception:  # noqa: BLE001  (a broken record has size 0: it covers no bucket)
        broken += 1
    if broken:
      logging.warning("%d of %d records of %s have an unreadable image: the loader leaves them out as too small "
                      "(with data.allow_upscale=True they go to bucket 0 and another record replaces them when "
                      "loaded)", broken, len(self), self.name)
    return sizes

  def _image(self, value, size: tuple[int, int] | None) -> Image.Image:
    if isinstance(value, bytes):
      return image_ops.open_image(value, size if self.jpeg_draft else None)
    return Image.fromarray(np.asarray(value))

  def example(self, index: int, size: tuple[int, int]) -> tuple[Image.Image, str]:
    record = self.data_source[int(index)]
    return self._image(record[self.image_feature], size), as_text(record[self.caption_feature])


def _folder_source(d) -> FolderSource:
  if not d.path:
    raise ValueError("data.source='folder' needs data.path: the --output folder of launch/prepare_data.py "
                     "(or train on data.source=synthetic)")
  return FolderSource(d.path, d.split, d.jpeg_draft)


# `data.source` -> the source it builds from `config.data`.
SOURCES = {
    "folder": _folder_source,
    "tfds": lambda d: TfdsSource(d.tfds_name, d.path, d.split, d.image_feature, d.caption_feature, d.jpeg_draft),
    "synthetic": lambda d: SyntheticSource(d.synthetic_size),
}


def build_source(data_config) -> ImageTextSource:
  """The source named by `config.data.source` (`SOURCES`)."""
  if data_config.source not in SOURCES:
    raise ValueError(f"unknown data.source {data_config.source!r}: choose one of {tuple(SOURCES)}")
  return SOURCES[data_config.source](data_config)
