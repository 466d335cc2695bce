"""Caption encodings stored beside a prepared folder, so that training feeds them instead of running Qwen3.

Layout: `<dataset>/text_cache/<key>/`, where `key` is a short hash of the settings that determine the encodings
(`settings`: the encoder's weights fingerprint, `text.hidden_layer`, `text.max_length`, the compute dtype and the
prepared dataset's fingerprint); `meta.json` records them. Per split (and `empty`, the empty prompt that caption
dropout trains with, as one record): `<split>_hidden.npy` the valid tokens' hidden states of every record, one
after another (tokens, D); `<split>_offsets.npy` (N + 1,) int64, record i's tokens are rows offsets[i]:offsets[i+1];
`<split>_pooled.npy` (N, D); `<split>_progress.json` how many records are written (the job resumes there).
Arrays are stored as same-size unsigned integers and viewed back as the dtype named in `meta.json` (bfloat16 has
no .npy type). Numpy only: the writer takes encoded arrays, the JAX job that encodes lives in `encoders/`.
"""

from __future__ import annotations

import hashlib
import json
import os

import ml_dtypes
import numpy as np
from etils import epath

from pixelhdm_jax.errors import ConfigError

CACHE_DIR = "text_cache"
META_FILE = "meta.json"
EMPTY = "empty"  # the pseudo-split holding the empty prompt's encoding
REBUILD = "python launch/encode_text.py with this run's --config"
# settings key -> the config field a user changes (named in the error of a cache made with other settings)
SETTING_FIELDS = {"encoder": "the text encoder's weights (text.source, text.path)", "hidden_layer": "text.hidden_layer",
                  "max_length": "text.max_length", "dtype": "text.compute_dtype",
                  "dataset": "the prepared dataset (launch/prepare_data.py ran again)"}


def cache_key(settings: dict) -> str:
  """16 hex digits of the settings (`SETTING_FIELDS` keys), the cache's folder name."""
  return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def cache_dir(dataset: os.PathLike | str, settings: dict) -> epath.Path:
  return epath.Path(dataset) / CACHE_DIR / cache_key(settings)


def numpy_dtype(name: str) -> np.dtype:
  """The numpy dtype named `name` (bfloat16 from ml_dtypes)."""
  return np.dtype(getattr(ml_dtypes, name)) if hasattr(ml_dtypes, name) else np.dtype(name)


def _stored(dtype: np.dtype) -> np.dtype:
  return np.dtype(f"u{dtype.itemsize}")


def _files(directory: epath.Path, split: str) -> dict[str, epath.Path]:
  return {name: directory / f"{split}_{name}" for name in ("hidden.npy", "offsets.npy", "pooled.npy", "progress.json")}


def write_meta(directory: epath.Path, settings: dict, dim: int) -> None:
  """Creates the cache folder with its `meta.json` (settings, width); an existing one is kept (resume)."""
  directory.mkdir(parents=True, exist_ok=True)
  if not (directory / META_FILE).exists():
    (directory / META_FILE).write_text(json.dumps({"settings": settings, "dim": dim}, indent=2, sort_keys=True))


class SplitWriter:
  """Writes a split's encodings in record order into memory-mapped files, resuming where a previous job stopped.

  `lengths` (N,) are the records' valid token counts (from the tokenizer), so every file has its final size from
  the start; `progress.json` names the records written and is updated only after the arrays are flushed.
  """

  def __init__(self, directory: epath.Path, split: str, lengths: np.ndarray, dim: int, dtype: np.dtype):
    self.files, self.dtype = _files(directory, split), np.dtype(dtype)
    offsets = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)])
    self.records, self.done = len(lengths), 0
    progress = self.files["progress.json"]
    if progress.exists() and json.loads(progress.read_text())["records"] == self.records \
        and np.array_equal(np.load(self.files["offsets.npy"]), offsets):
      self.done = json.loads(progress.read_text())["done"]
      mode = "r+"
    else:
      np.save(self.files["offsets.npy"], offsets)
      mode = "w+"
    shapes = {"hidden.npy": (int(offsets[-1]), dim), "pooled.npy": (self.records, dim)}
    self.arrays = {name: np.lib.format.open_memmap(self.files[name], mode, _stored(self.dtype), shape)
                   for name, shape in shapes.items()}
    self.offsets = offsets
    if mode == "w+":
      self._mark(0)

  def write(self, hidden: np.ndarray, mask: np.ndarray, pooled: np.ndarray) -> None:
    """Appends the next records: hidden (n, T, D) with the valid tokens first, mask (n, T), pooled (n, D)."""
    start, count = self.done, len(hidden)
    for row in range(count):
      begin, end = self.offsets[start + row], self.offsets[start + row + 1]
      if end - begin != mask[row].sum():
        raise ValueError(f"record {start + row} has {mask[row].sum()} valid tokens, the tokenizer counted "
                         f"{end - begin}")
      self.arrays["hidden.npy"][begin:end] = hidden[row, :end - begin].astype(self.dtype).view(_stored(self.dtype))
    self.arrays["pooled.npy"][start:start + count] = pooled.astype(self.dtype).view(_stored(self.dtype))
    self.done = start + count

  def commit(self) -> None:
    """Flushes the arrays, then records the progress (an interrupted job redoes at most the uncommitted records)."""
    for array in self.arrays.values():
      array.flush()
    self._mark(self.done)

  def _mark(self, done: int) -> None:
    temp = self.files["progress.json"].with_suffix(".tmp")
    temp.write_text(json.dumps({"done": done, "records": self.records}))
    temp.replace(self.files["progress.json"])


def _mismatch(dataset: epath.Path, settings: dict) -> str:
  """Why no cache of `settings` exists: the settings in which the closest cache made with other ones differs."""
  made = [json.loads(meta.read_text())["settings"] for meta in (dataset / CACHE_DIR).glob(f"*/{META_FILE}")]
  if not made:
    return f"data.path={dataset} holds no text cache: build it with {REBUILD} (text.cache=True reads it)"
  differing = lambda other: [key for key in SETTING_FIELDS if other.get(key) != settings[key]]
  closest = min(made, key=lambda other: len(differing(other)))
  named = " and ".join(f"{SETTING_FIELDS[key]} ({closest.get(key)!r}, this run {settings[key]!r})"
                       for key in differing(closest))
  return f"the text cache in {dataset / CACHE_DIR} was made with other {named}: rebuild it with {REBUILD}"


class TextCache:
  """Reads a complete split of a cache and builds batches of padded encodings; picklable (Grain workers)."""

  def __init__(self, dataset: os.PathLike | str, split: str, settings: dict, max_length: int):
    dataset = epath.Path(dataset)
    self.directory = cache_dir(dataset, settings)
    if not (self.directory / META_FILE).exists():
      raise ConfigError(_mismatch(dataset, settings))
    meta = json.loads((self.directory / META_FILE).read_text())
    self.dtype, self.dim, self.max_length = numpy_dtype(settings["dtype"]), meta["dim"], max_length
    self.split = split
    for name in (split, EMPTY):
      progress = _files(self.directory, name)["progress.json"]
      state = json.loads(progress.read_text()) if progress.exists() else {"done": 0, "records": "?"}
      if state["done"] != state["records"]:
        raise ConfigError(f"the text cache {self.directory} holds {state['done']} of {state['records']} records of "
                          f"split {name!r}: finish it with {REBUILD} (it resumes)")
    self._arrays = None

  def __getstate__(self):
    return {**self.__dict__, "_arrays": None}

  def __len__(self) -> int:
    return len(self._open()[self.split]["offsets.npy"]) - 1

  def _open(self) -> dict:
    if self._arrays is None:
      self._arrays = {name: {key: np.load(path, mmap_mode="r") for key, path in _files(self.directory, name).items()
                             if key != "progress.json"} for name in (self.split, EMPTY)}
    return self._arrays

  def _record(self, split: str, index: int) -> tuple[np.ndarray, np.ndarray]:
    arrays = self._open()[split]
    begin, end = arrays["offsets.npy"][index:index + 2]
    view = lambda x: np.asarray(x).view(self.dtype)
    return view(arrays["hidden.npy"][begin:end]), view(arrays["pooled.npy"][index])

  def batch(self, indices: np.ndarray, dropped: np.ndarray) -> dict[str, np.ndarray]:
    """`text_hidden` (B, max_length, D) right-padded with zeros, `text_mask` (B, max_length) and `text_pooled`
    (B, D) of records `indices` (the empty prompt's where `dropped`), as the text encoder gives them."""
    hidden = np.zeros((len(indices), self.max_length, self.dim), self.dtype)
    mask = np.zeros((len(indices), self.max_length), bool)
    pooled = np.empty((len(indices), self.dim), self.dtype)
    for row, (index, drop) in enumerate(zip(indices, dropped)):
      tokens, pooled[row] = self._record(EMPTY, 0) if drop else self._record(self.split, int(index))
      hidden[row, :len(tokens)], mask[row, :len(tokens)] = tokens, True
    return {"text_hidden": hidden, "text_mask": mask, "text_pooled": pooled}
