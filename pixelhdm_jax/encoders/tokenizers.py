"""Host-side tokenizers: prompts -> right-padded token ids and a validity mask of a fixed length.

Every tokenizer is a callable `tokenizer(prompts) -> (ids int32 (B, max_length), mask bool (B, max_length))`
with the valid tokens first (right padding) and truncation at `max_length`; `vocab_size` and `pad_id` are
attributes. The empty prompt gives an all-False mask.
"""

from __future__ import annotations

from typing import Protocol, Sequence

import numpy as np


class Tokenizer(Protocol):
  max_length: int
  vocab_size: int
  pad_id: int

  def __call__(self, prompts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    ...


class ByteTokenizer:
  """Dependency-free UTF-8 byte tokenizer for the `tiny` preset and tests: id = byte + 1, pad = 0."""
  vocab_size = 257
  pad_id = 0

  def __init__(self, max_length: int):
    if max_length <= 0:
      raise ValueError(f"max_length must be positive, got {max_length}")
    self.max_length = max_length

  def __call__(self, prompts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(prompts, str):
      raise TypeError("pass a list of prompts, not a single string")
    ids = np.full((len(prompts), self.max_length), self.pad_id, np.int32)
    for row, prompt in enumerate(prompts):
      encoded = np.frombuffer(prompt.encode("utf-8"), np.uint8)[:self.max_length].astype(np.int32) + 1
      ids[row, :len(encoded)] = encoded
    return ids, ids != self.pad_id
