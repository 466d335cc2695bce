"""Improved precision and recall: the k-NN radii against scipy's KD-tree, and sets whose answer is known."""

import numpy as np
import pytest
from scipy.spatial import cKDTree

from pixelhdm_jax.evaluation.precision_recall import knn_radii, precision_recall


def clusters(seed: int, centres, per_cluster: int = 40, dim: int = 8) -> np.ndarray:
  rng = np.random.default_rng(seed)
  return np.concatenate([c + rng.normal(size=(per_cluster, dim)) for c in centres])


@pytest.mark.parametrize("k", [1, 3, 5])
def test_radii_equal_the_kd_tree_neighbours(k):
  points = np.random.default_rng(0).normal(size=(1500, 6))  # more rows than one distance block
  distances, _ = cKDTree(points).query(points, k=k + 1)  # the nearest is the point itself
  np.testing.assert_allclose(knn_radii(points, k), distances[:, k], rtol=1e-9)


def test_a_copy_of_the_data_has_full_precision_and_recall():
  real = clusters(1, [np.zeros(8), np.full(8, 50.0)])
  assert precision_recall(real, real + 1e-6) == (1.0, 1.0)


def test_dropping_a_mode_keeps_precision_and_halves_recall():
  real = clusters(1, [np.zeros(8), np.full(8, 50.0)])
  generated = real[:40] + 1e-6  # the first mode's points: every sample realistic, the second mode missing
  assert precision_recall(real, generated) == (1.0, 0.5)


def test_a_fresh_draw_of_the_same_distribution_scores_alike_both_ways():
  real, generated = clusters(1, [np.zeros(8)], 400), clusters(2, [np.zeros(8)], 400)
  precision, recall = precision_recall(real, generated)
  assert 0.6 < precision < 0.95 and abs(precision - recall) < 0.1


def test_samples_off_the_data_have_no_precision_and_no_recall():
  real = clusters(1, [np.zeros(8)])
  assert precision_recall(real, clusters(2, [np.full(8, 100.0)])) == (0.0, 0.0)


def test_too_few_points_is_a_clear_error():
  with pytest.raises(ValueError, match="needs more than 3 points"):
    knn_radii(np.zeros((3, 2)))
