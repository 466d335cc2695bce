"""Data-test fixtures: the bad-input corpus, a small tiny-preset config; absl flags parsed for Grain workers."""

import pathlib

import pytest
from absl import flags

from tests.data import bad_corpus

flags.FLAGS.mark_as_parsed()  # Grain's worker processes read absl flags


@pytest.fixture()
def corpus(tmp_path: pathlib.Path) -> pathlib.Path:
  return bad_corpus.write_corpus(tmp_path / "images")


@pytest.fixture()
def tiny_config():
  """The tiny preset (synthetic data, global batch 8) with 32..64 px buckets (six: the bucket tests need several)
  and a small, quick loader."""
  from configs import base
  config = base.get_config("tiny")
  config.data.max_resolution = 64
  config.data.synthetic_size = 96
  config.data.num_threads = 1
  config.data.prefetch = 1
  return config
