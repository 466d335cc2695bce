"""Frozen encoders' outputs stored beside a prepared folder, one variable-length block of rows per record.

Layout: `<dataset>/<kind>/<key>/` (`kind`: `text_cache`, `teacher_cache`), where `key` is a short hash of the
settings that determine the stored values; `meta.json` records them and the row width. Per split: `<split>_rows.npy`
every record's rows one after another (rows, D), `<split>_offsets.npy` (N + 1,) int64 (record i is rows
offsets[i]:offsets[i+1]), optionally `<split>_pooled.npy` (N, D) one vector per record, and `<split>_progress.json`:
how many records the job has written, in its own order (it resumes there). Arrays are stored as same-size unsigned
integers and viewed back as the settings' dtype (bfloat16 has no .npy type). Files are memory-mapped: local only.
Numpy only: the JAX jobs that encode live in `encoders/`.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Sequence

import ml_dtypes
import numpy as np
from etils import epath

from pixelhdm_jax.errors import ConfigError

META_FILE = "meta.json"


def cache_key(settings: dict) -> str:
  """16 hex digits of the settings, the cache's folder name."""
  return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def cache_dir(dataset: os.PathLike | str, kind: str, settings: dict) -> epath.Path:
  return epath.Path(dataset) / kind / cache_key(settings)


def numpy_dtype(name: str) -> np.dtype:
  """The numpy dtype named `name` (bfloat16 from ml_dtypes)."""
  return np.dtype(getattr(ml_dtypes, name)) if hasattr(ml_dtypes, name) else np.dtype(name)


def _stored(dtype: np.dtype) -> np.dtype:
  return np.dtype(f"u{dtype.itemsize}")


def _files(directory: epath.Path, split: str) -> dict[str, epath.Path]:
  return {name: directory / f"{split}_{name}" for name in ("rows.npy", "offsets.npy", "pooled.npy", "progress.json")}


def write_meta(directory: epath.Path, settings: dict, dim: int) -> None:
  """Creates the cache folder with its `meta.json` (settings, width); an existing one is kept (resume)."""
  directory.mkdir(parents=True, exist_ok=True)
  if not (directory / META_FILE).exists():
    (directory / META_FILE).write_text(json.dumps({"settings": settings, "dim": dim}, indent=2, sort_keys=True))


class SplitWriter:
  """Writes a split's records into memory-mapped files, resuming where a previous job stopped.

  `lengths` (N,) are the records' row counts, known before encoding, so every file has its final size from the
  start; `done` counts the records written in the job's order, and `progress.json` records it only after the arrays
  are flushed (`commit`).
  """

  def __init__(self, directory: epath.Path, split: str, lengths: np.ndarray, dim: int, dtype: np.dtype,
               pooled: bool = False):
    self.files, self.dtype = _files(directory, split), np.dtype(dtype)
    offsets = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)])
    self.records, self.done = len(lengths), 0
    progress = self.files["progress.json"]
    resumed = (progress.exists() and json.loads(progress.read_text())["records"] == self.records
               and self.files["rows.npy"].exists() and (self.files["pooled.npy"].exists() or not pooled)
               and np.array_equal(np.load(self.files["offsets.npy"]), offsets))
    if resumed:
      self.done = json.loads(progress.read_text())["done"]
    else:
      np.save(self.files["offsets.npy"], offsets)
    shapes = {"rows.npy": (int(offsets[-1]), dim), **({"pooled.npy": (self.records, dim)} if pooled else {})}
    self.arrays = {name: np.lib.format.open_memmap(self.files[name], "r+" if resumed else "w+", _stored(self.dtype),
                                                   shape) for name, shape in shapes.items()}
    self.offsets = offsets
    if not resumed:
      self._mark(0)

  def write(self, indices: Sequence[int], rows: Sequence[np.ndarray], pooled: np.ndarray | None = None) -> None:
    """Stores records `indices`: their rows (each (length, D)) and, for a cache with them, pooled vectors (n, D)."""
    for index, block in zip(indices, rows):
      begin, end = self.offsets[index], self.offsets[index + 1]
      if len(block) != end - begin:
        raise ValueError(f"record {index} has {len(block)} rows, {end - begin} were expected")
      self.arrays["rows.npy"][begin:end] = np.asarray(block).astype(self.dtype).view(_stored(self.dtype))
    if pooled is not None:
      self.arrays["pooled.npy"][np.asarray(indices)] = pooled.astype(self.dtype).view(_stored(self.dtype))
    self.done += len(indices)

  def commit(self) -> None:
    """Flushes the arrays, then records the progress (an interrupted job redoes at most the uncommitted records)."""
    for array in self.arrays.values():
      array.flush()
    self._mark(self.done)

  def _mark(self, done: int) -> None:
    temp = self.files["progress.json"].with_suffix(".tmp")
    temp.write_text(json.dumps({"done": done, "records": self.records}))
    temp.replace(self.files["progress.json"])


def _mismatch(root: epath.Path, settings: dict, fields: dict[str, str], rebuild: str) -> str:
  """Why no cache of `settings` exists under `root`: the settings in which the closest cache differs."""
  made = [json.loads(meta.read_text())["settings"] for meta in root.glob(f"*/{META_FILE}")]
  if not made:
    return f"{root.parent} holds no {root.name}: build it with {rebuild}"
  differing = lambda other: [key for key in fields if other.get(key) != settings[key]]
  closest = min(made, key=lambda other: len(differing(other)))
  named = " and ".join(f"{fields[key]} ({closest.get(key)!r}, this run {settings[key]!r})"
                       for key in differing(closest))
  return f"the {root.name} in {root} was made with other {named}: rebuild it with {rebuild}"


class CacheReader:
  """A complete cache's splits, opened lazily (picklable for Grain workers); ConfigError naming the setting that
  differs when no cache of `settings` exists (`fields`: settings key -> the config field), or when one is unfinished."""

  def __init__(self, dataset: os.PathLike | str, kind: str, splits: Sequence[str], settings: dict,
               fields: dict[str, str], rebuild: str):
    self.directory = cache_dir(dataset, kind, settings)
    if not (self.directory / META_FILE).exists():
      raise ConfigError(_mismatch(epath.Path(dataset) / kind, settings, fields, rebuild))
    self.dim = json.loads((self.directory / META_FILE).read_text())["dim"]
    self.dtype, self.splits = numpy_dtype(settings["dtype"]), tuple(splits)
    for split in self.splits:
      files = _files(self.directory, split)
      progress = files["progress.json"]
      state = json.loads(progress.read_text()) if progress.exists() else {"done": 0, "records": "?"}
      if state["done"] != state["records"] or not (files["rows.npy"].exists() and files["offsets.npy"].exists()):
        raise ConfigError(f"the {kind} {self.directory} holds {state['done']} of {state['records']} records of "
                          f"split {split!r}: finish it with {rebuild} (it resumes)")
    self._arrays = None

  def __getstate__(self):
    return {**self.__dict__, "_arrays": None}

  def records(self, split: str) -> int:
    return len(self._open()[split]["offsets.npy"]) - 1

  def _open(self) -> dict:
    if self._arrays is None:
      self._arrays = {split: {key: np.load(path, mmap_mode="r") for key, path in _files(self.directory, split).items()
                              if key != "progress.json" and path.exists()} for split in self.splits}
    return self._arrays

  def rows(self, split: str, index: int) -> np.ndarray:
    arrays = self._open()[split]
    begin, end = arrays["offsets.npy"][index:index + 2]
    return np.asarray(arrays["rows.npy"][begin:end]).view(self.dtype)

  def pooled(self, split: str, index: int) -> np.ndarray:
    return np.asarray(self._open()[split]["pooled.npy"][index]).view(self.dtype)
