"""A hash of a frozen encoder's weights, cheap enough to check at every start, that names the caches of its outputs.

Pretrained: the checkpoint's bytes (a file, or a folder's weight, config and tokenizer files), so other weights or
another tokenizer give another fingerprint. Random sources: their description (source, architecture, seed), of
which the weights are a function; building them would cost what a cache saves.
"""

from __future__ import annotations

import hashlib
import json
import pathlib

CHECKPOINT_SUFFIXES = (".json", ".safetensors", ".txt", ".model", ".pth")  # weights, config and tokenizer files
_CHUNK = 1 << 24  # bytes hashed at a time


def random_fingerprint(description: dict) -> str:
  return hashlib.sha256(json.dumps(description, sort_keys=True, default=str).encode()).hexdigest()[:16]


def checkpoint_fingerprint(path: pathlib.Path | str) -> str:
  """16 hex digits over the names, sizes and bytes of the checkpoint file or folder at `path`."""
  path = pathlib.Path(path)
  files = [path] if path.is_file() else sorted(p for p in path.iterdir() if p.suffix in CHECKPOINT_SUFFIXES
                                               and p.is_file())
  digest = hashlib.sha256()
  for file in files:
    digest.update(f"{file.name}\0{file.stat().st_size}\0".encode())
    with open(file, "rb") as stream:
      while chunk := stream.read(_CHUNK):
        digest.update(chunk)
  return digest.hexdigest()[:16]
