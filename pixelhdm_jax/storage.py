"""Locations a user names (workdirs, datasets, exports, sample folders), local or in cloud storage.

Every such location is an `etils.epath.Path`: local paths become absolute (logs name them in full), and
`gs://bucket/...` (or any other scheme etils.epath knows) stays as written and is read and written through
fsspec (gcsfs for gs://), so buckets need no mounting. Cloud objects cannot be appended to: `open_append`
and the TensorBoard event files keep what they wrote and rewrite the object on every flush.
"""

from __future__ import annotations

import atexit
import importlib.util
import io
import os
import shutil
import tempfile
from typing import Any

from etils import epath

# Scheme -> the fsspec implementation that etils.epath reads it with.
_FILESYSTEMS = {"gs": "gcsfs", "s3": "s3fs", "az": "adlfs"}


class StorageError(ValueError):
  """A location that cannot be used as given: the message names it and the fix."""


def is_remote(path: str | os.PathLike) -> bool:
  """Whether `path` names cloud storage (`scheme://...`), not a local file."""
  return "://" in os.fspath(path)


def location(path: str | os.PathLike) -> epath.Path:
  """`path` as an `epath.Path`: absolute if local; a cloud URL checked for the package that reads it."""
  text = os.fspath(path)
  if not is_remote(text):
    return epath.Path(text).absolute()
  scheme = text.split("://", 1)[0]
  if scheme not in _FILESYSTEMS:
    raise StorageError(f"{text}: unsupported storage scheme {scheme}:// (use a local path or one of "
                       f"{', '.join(f'{s}://' for s in _FILESYSTEMS)})")
  package = _FILESYSTEMS[scheme]
  if importlib.util.find_spec(package) is None:
    hint = "pip install -e '.[gcs]'" if scheme == "gs" else f"pip install {package}"
    raise StorageError(f"{text} needs the package {package} to read {scheme}:// paths: {hint}")
  return epath.Path(text)


class RewrittenFile:
  """A text or binary file opened for appending on storage without appends: the content so far stays in memory
  and every `flush` rewrites the whole object (cloud objects are immutable)."""

  def __init__(self, path: epath.Path, binary: bool = False):
    self.path = path
    self.binary = binary
    self._content = io.BytesIO()
    if path.exists():
      self._content.write(path.read_bytes())

  def write(self, data: str | bytes) -> None:
    self._content.write(data if self.binary else data.encode("utf-8"))

  def flush(self) -> None:
    self.path.write_bytes(self._content.getvalue())

  def close(self) -> None:
    self.flush()


def open_append(path: epath.Path) -> Any:
  """A text file at `path` opened for appending (created if absent): a local file, or a `RewrittenFile`."""
  if is_remote(path):
    return RewrittenFile(path)
  return open(path, "a", encoding="utf-8")


def copy_file(source: epath.Path, target: epath.Path) -> None:
  """Copies one file, streamed (local or remote on either side)."""
  target.parent.mkdir(parents=True, exist_ok=True)
  with source.open("rb") as reader, target.open("wb") as writer:
    shutil.copyfileobj(reader, writer, length=16 << 20)


def copy_tree(source: epath.Path, target: epath.Path) -> None:
  """Copies every file under `source` to the same place under `target` (local or remote on either side)."""
  if not (is_remote(source) or is_remote(target)):
    shutil.copytree(source, target, dirs_exist_ok=True)
    return
  target.mkdir(parents=True, exist_ok=True)
  for entry in source.iterdir():
    (copy_tree if entry.is_dir() else copy_file)(entry, target / entry.name)


def local_copy(path: epath.Path) -> epath.Path:
  """`path` itself when local; else a copy of the remote file or folder in a temporary folder that is removed when
  the process exits (for readers that need a local file: torch.load, memory-mapped safetensors)."""
  if not is_remote(path):
    return path
  target = epath.Path(tempfile.mkdtemp(prefix="pixelhdm_jax_copy_")) / path.name
  atexit.register(shutil.rmtree, target.parent, ignore_errors=True)
  (copy_tree if path.is_dir() else copy_file)(path, target)
  return target


class _EventFileFactory:
  """tensorboardX's writer registry entry for a cloud scheme: event files through epath (see RewrittenFile)."""

  def open(self, path: str) -> RewrittenFile:
    return RewrittenFile(epath.Path(path), binary=True)

  def directory_check(self, path: str) -> None:
    del path  # cloud storage has no directories to create


def tensorboard_writer(logdir: epath.Path):
  """A tensorboardX `SummaryWriter` for `logdir`; cloud event files go through epath (tensorboardX's own gs://
  writer looks for credentials with google-cloud-storage, apart from the ones fsspec uses)."""
  from tensorboardX import SummaryWriter, record_writer

  for scheme in _FILESYSTEMS:
    record_writer.register_writer_factory(scheme, _EventFileFactory())
  return SummaryWriter(logdir=os.fspath(logdir))
