"""Reference statistics: which images, what the file holds, when it is reused, and other tools' files."""

import io

import numpy as np
import pytest
from etils import epath

from configs import base
from pixelhdm_jax.data import images as image_ops
from pixelhdm_jax.data.synthetic import SyntheticSource
from pixelhdm_jax.evaluation import reference as reference_lib
from pixelhdm_jax.evaluation.features import DINOV3, INCEPTION, ExtractorInfo
from pixelhdm_jax.evaluation.reference import check_extractors, load_reference, reference_for, reference_images


class ColourExtractors:
  """Stands in for the networks: per-image channel means and quartiles, so features follow the pixels."""
  names = (INCEPTION, DINOV3)
  batch_size = 3
  info = ExtractorInfo("random", "pytorch_fid", "random:")

  def __init__(self):
    self.images_seen = 0

  def __call__(self, images):
    self.images_seen += len(images)
    x = images.reshape(len(images), -1, 3).astype(np.float64)
    features = np.concatenate([x.mean(1), np.quantile(x, 0.25, axis=1), np.quantile(x, 0.75, axis=1)], axis=1)
    return {INCEPTION: features, DINOV3: features[:, :4]}


def tiny_config(synthetic_size=64):
  config = base.get_config("tiny")
  config.data.synthetic_size = synthetic_size
  return config


def test_the_images_are_centre_crops_of_a_fixed_permutation():
  config = tiny_config()
  batches = list(reference_images(config, 7, 32, batch_size=3))
  assert [len(captions) for _, captions in batches] == [3, 3, 1]
  order = np.random.default_rng(reference_lib.PERMUTATION_SEED).permutation(64)
  source = SyntheticSource(64)
  for row, index in enumerate(order[:7]):
    image, caption = source.example(int(index), (32, 32))
    images, captions = batches[row // 3]
    np.testing.assert_array_equal(images[row % 3], image_ops.cover_crop(image, (32, 32)))
    assert captions[row % 3] == caption


def test_unreadable_images_are_skipped_and_replaced(monkeypatch):
  broken = set(np.random.default_rng(reference_lib.PERMUTATION_SEED).permutation(64)[:2].tolist())
  real_example = SyntheticSource.example

  def example(self, index, size):
    if index in broken:
      raise OSError("truncated file")
    return real_example(self, index, size)
  monkeypatch.setattr(SyntheticSource, "example", example)
  images = np.concatenate([batch for batch, _ in reference_images(tiny_config(), 5, 32, batch_size=8)])
  assert len(images) == 5
  with pytest.raises(ValueError, match="only 62 images of the dataset are readable"):
    list(reference_images(tiny_config(), 63, 32, batch_size=8))


def test_more_images_than_the_dataset_is_a_clear_error():
  with pytest.raises(ValueError, match="the dataset has 64 images, fewer than the 65"):
    list(reference_images(tiny_config(), 65, 32, batch_size=8))


def test_the_file_holds_the_statistics_and_is_reused_while_its_key_matches(tmp_path):
  config, extractors = tiny_config(), ColourExtractors()
  path = tmp_path / "stats.npz"
  reference, written = reference_for(config, extractors, 9, 32, output=path, progress=False)
  assert written == path and extractors.images_seen == 9
  features = extractors(np.concatenate([b for b, _ in reference_images(config, 9, 32, batch_size=9)]))
  loaded = load_reference(path)
  mu, sigma = loaded.statistics[INCEPTION]
  np.testing.assert_allclose(mu, features[INCEPTION].mean(0), rtol=1e-12)
  np.testing.assert_allclose(sigma, np.cov(features[INCEPTION], rowvar=False), rtol=1e-9, atol=1e-9)
  np.testing.assert_allclose(loaded.features[DINOV3], features[DINOV3])
  assert loaded.captions == reference.captions and len(loaded.captions) == 9
  assert loaded.key == {"format": 1, "dataset": "synthetic:64", "size": 32, "num_images": 9,
                        "inception_weights": "random", "inception_resize": "pytorch_fid", "dinov3": "random:"}
  seen = extractors.images_seen
  reference_for(config, extractors, 9, 32, output=path, progress=False)
  assert extractors.images_seen == seen  # reused
  reference_for(config, extractors, 10, 32, output=path, progress=False)
  assert extractors.images_seen == seen + 10 and load_reference(path).num_images == 10  # another key: recomputed


def test_without_an_output_the_reference_is_cached_by_key(tmp_path, monkeypatch):
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
  _, path = reference_for(tiny_config(), ColourExtractors(), 6, 32, progress=False)
  assert path.parent == epath.Path(tmp_path) / "pixelhdm_jax" / "reference_statistics" and path.exists()


def test_another_tools_file_gives_fid_statistics_only(tmp_path):
  path = tmp_path / "pytorch_fid_stats.npz"
  buffer = io.BytesIO()
  np.savez(buffer, mu=np.zeros(4), sigma=np.eye(4))
  path.write_bytes(buffer.getvalue())
  reference = load_reference(path)
  assert set(reference.statistics) == {INCEPTION} and reference.key is None and reference.captions == []
  check_extractors(reference, ColourExtractors.info)  # taken on trust (a warning)


def test_a_reference_of_other_extractors_is_refused(tmp_path):
  reference, _ = reference_for(tiny_config(), ColourExtractors(), 6, 32, output=tmp_path / "s.npz", progress=False)
  with pytest.raises(ValueError, match="inception_weights='random' but this evaluation uses 'pt.pth'"):
    check_extractors(reference, ExtractorInfo("pt.pth", "pytorch_fid", "random:"))


def test_a_missing_file_names_the_command_that_makes_one(tmp_path):
  with pytest.raises(FileNotFoundError, match="launch/evaluate.py reference"):
    load_reference(tmp_path / "none.npz")
