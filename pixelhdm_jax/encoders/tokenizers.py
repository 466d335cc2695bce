"""Host-side tokenizers: prompts -> right-padded token ids and a validity mask of a fixed length.

Every tokenizer is a callable `tokenizer(prompts) -> (ids int32 (B, max_length), mask bool (B, max_length))`
with the valid tokens first (right padding) and truncation at `max_length`; `vocab_size` and `pad_id` are
attributes; `num_tokens(prompt)` counts a prompt's tokens before the cut. The empty prompt gives an all-False
mask. `build_tokenizer(config.text)` picks one.
"""

from __future__ import annotations

import pathlib
from typing import Protocol, Sequence

import ml_collections
import numpy as np

from pixelhdm_jax.encoders.hf_checkpoint import EncoderCheckpointError, resolve_checkpoint
from pixelhdm_jax.encoders.transformer import RANDOM_SOURCES

VOCABULARY_FILES = ("tokenizer.json", "vocab.json", "tokenizer.model")
QWEN3_FILES = "a Qwen3 checkpoint such as Qwen3-0.6B (config.json, *.safetensors and the tokenizer files)"


class Tokenizer(Protocol):
  max_length: int
  vocab_size: int
  pad_id: int

  def __call__(self, prompts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    ...

  def num_tokens(self, prompt: str) -> int:
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

  def num_tokens(self, prompt: str) -> int:
    return len(prompt.encode("utf-8"))


class HFTokenizer:
  """A Hugging Face tokenizer read from a local directory (Qwen3's for the real presets).

  As the original: no chat template and no added special tokens; right padding to `max_length`,
  truncation; the pad token falls back to the EOS token when the tokenizer has none.
  """

  def __init__(self, directory: pathlib.Path | str, max_length: int):
    from transformers import AutoTokenizer
    if max_length <= 0:
      raise ValueError(f"max_length must be positive, got {max_length}")
    directory = pathlib.Path(directory)
    if not directory.is_dir():
      raise EncoderCheckpointError(f"tokenizer directory {str(directory)!r} does not exist or is not a directory")
    # transformers would otherwise build an empty tokenizer from config.json alone.
    if not any((directory / name).is_file() for name in VOCABULARY_FILES):
      raise EncoderCheckpointError(f"no usable tokenizer files in {str(directory)!r}: expected one of "
                                   f"{VOCABULARY_FILES}")
    try:
      tokenizer = AutoTokenizer.from_pretrained(str(directory), local_files_only=True, trust_remote_code=False)
    except (OSError, ValueError) as error:
      raise EncoderCheckpointError(f"no usable tokenizer files in {str(directory)!r}: {error}") from error
    if tokenizer.pad_token is None:
      if tokenizer.eos_token is None:
        raise EncoderCheckpointError(f"the tokenizer in {str(directory)!r} has neither a pad nor an EOS token")
      tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    self._tokenizer = tokenizer
    self.max_length = max_length
    self.vocab_size = len(tokenizer)
    self.pad_id = tokenizer.pad_token_id

  def __call__(self, prompts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(prompts, str):
      raise TypeError("pass a list of prompts, not a single string")
    encoded = self._tokenizer(list(prompts), padding="max_length", truncation=True, max_length=self.max_length,
                              return_tensors="np")
    return encoded["input_ids"].astype(np.int32), encoded["attention_mask"].astype(bool)

  def num_tokens(self, prompt: str) -> int:
    return len(self._tokenizer(prompt)["input_ids"])


def build_tokenizer(text: ml_collections.ConfigDict) -> Tokenizer:
  """The tokenizer of `config.text`: bytes for the random encoders, else the checkpoint's own."""
  if text.source in RANDOM_SOURCES:
    return ByteTokenizer(text.max_length)
  return HFTokenizer(resolve_checkpoint(text, "text", QWEN3_FILES),
                     text.max_length)
