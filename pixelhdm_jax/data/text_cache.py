"""Caption encodings stored beside a prepared folder, so that training feeds them instead of running Qwen3.

A `feature_cache` of kind `text_cache`: per record the hidden states of the valid tokens (rows) and the pooled
vector, in the compute dtype; per split plus `empty`, the empty prompt that caption dropout trains with, as one
record. The settings (`encoders/caption_cache.py` `cache_settings`) are the encoder's weights fingerprint,
`text.hidden_layer`, `text.max_length`, the compute dtype and the prepared dataset's fingerprint.
"""

from __future__ import annotations

import os

import numpy as np

from pixelhdm_jax.data.feature_cache import CacheReader

KIND = "text_cache"
EMPTY = "empty"  # the pseudo-split holding the empty prompt's encoding
REBUILD = "python launch/encode_text.py with this run's --config"
# settings key -> the config field a user changes (named in the error of a cache made with other settings)
SETTING_FIELDS = {"encoder": "the text encoder's weights (text.source, text.path)", "hidden_layer": "text.hidden_layer",
                  "max_length": "text.max_length", "dtype": "text.compute_dtype",
                  "dataset": "the prepared dataset (launch/prepare_data.py ran again)"}


class TextCache:
  """Reads a complete split of a text cache and builds batches of padded encodings; picklable (Grain workers)."""

  def __init__(self, dataset: os.PathLike | str, split: str, settings: dict, max_length: int):
    self.reader = CacheReader(dataset, KIND, (split, EMPTY), settings, SETTING_FIELDS, REBUILD)
    self.directory, self.split, self.max_length = self.reader.directory, split, max_length

  def __len__(self) -> int:
    return self.reader.records(self.split)

  def batch(self, indices: np.ndarray, dropped: np.ndarray) -> dict[str, np.ndarray]:
    """`text_hidden` (B, max_length, D) right-padded with zeros, `text_mask` (B, max_length) and `text_pooled`
    (B, D) of records `indices` (the empty prompt's where `dropped`), as the text encoder gives them."""
    reader = self.reader
    hidden = np.zeros((len(indices), self.max_length, reader.dim), reader.dtype)
    mask = np.zeros((len(indices), self.max_length), bool)
    pooled = np.empty((len(indices), reader.dim), reader.dtype)
    for row, (index, drop) in enumerate(zip(indices, dropped)):
      split, index = (EMPTY, 0) if drop else (self.split, int(index))
      tokens, pooled[row] = reader.rows(split, index), reader.pooled(split, index)
      hidden[row, :len(tokens)], mask[row, :len(tokens)] = tokens, True
    return {"text_hidden": hidden, "text_mask": mask, "text_pooled": pooled}
