"""Scores of sample features against a reference: which numbers exist for which reference, and their anchors."""

import numpy as np

from pixelhdm_jax.evaluation.evaluate import scores
from pixelhdm_jax.evaluation.features import DINOV3, INCEPTION
from pixelhdm_jax.evaluation.reference import Reference


def features(seed, shift=0.0):
  rng = np.random.default_rng(seed)
  return {INCEPTION: rng.normal(size=(64, 6)) + shift, DINOV3: rng.normal(size=(64, 4)) + shift}


def reference_of(feats, with_dinov3=True):
  names = (INCEPTION, DINOV3) if with_dinov3 else (INCEPTION,)
  stats = {n: (feats[n].mean(0), np.cov(feats[n], rowvar=False)) for n in names}
  return Reference(stats, {DINOV3: feats[DINOV3]} if with_dinov3 else {}, [], None)


def test_the_reference_images_themselves_score_perfectly():
  real = features(0)
  result = scores(reference_of(real), real)
  assert abs(result["fid"]) < 1e-9 and abs(result["fd_dinov3"]) < 1e-9
  assert (result["precision"], result["recall"]) == (1.0, 1.0)


def test_a_shifted_distribution_adds_the_squared_shift_to_the_distance():
  real, moved = features(0), features(0, shift=3.0)  # the same covariances: FD is |shift|^2 * dim exactly
  result = scores(reference_of(real), moved)
  np.testing.assert_allclose([result["fid"], result["fd_dinov3"]], [9.0 * 6, 9.0 * 4], rtol=1e-9)
  assert result["precision"] < 0.2 and result["recall"] < 0.2


def test_another_tools_reference_gives_the_fid_only():
  real = features(0)
  assert set(scores(reference_of(real, with_dinov3=False), features(1))) == {"fid"}
