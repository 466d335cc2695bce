"""The evaluation's feature extractors: split over 8 devices they give what one device gives."""

import jax
import ml_collections
import numpy as np

from configs import base
from pixelhdm_jax import parallel
from pixelhdm_jax.evaluation.features import DINOV3, INCEPTION, Extractors


def test_features_on_eight_devices_equal_one_device():
  config = base.get_config("tiny")
  config.evaluation.batch_size = 5  # 5 images per batch: padded to 8 on the 8-device mesh
  images = np.random.default_rng(0).integers(0, 256, (7, 32, 48, 3), np.uint8)
  one = parallel.create_mesh(ml_collections.ConfigDict({"shape": (1, 1, 1)}), devices=jax.devices()[:1])
  eight = parallel.data_parallel_mesh()
  assert eight.devices.size == 8
  single, split = Extractors.from_config(config, one)(images), Extractors.from_config(config, eight)(images)
  assert single[INCEPTION].shape == (7, 2048) and single[DINOV3].shape == (7, 32)
  for name in (INCEPTION, DINOV3):
    np.testing.assert_allclose(split[name], single[name], rtol=2e-5, atol=2e-5 * np.abs(single[name]).max())
