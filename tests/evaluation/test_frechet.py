"""The Frechet distance against scipy's `sqrtm` form (pytorch-fid's) and closed forms; streaming statistics against
numpy; statistics files through `etils.epath`."""

import warnings

import numpy as np
import pytest

from pixelhdm_jax.evaluation.frechet import FeatureStatistics, frechet_distance


def scipy_frechet(mu1, sigma1, mu2, sigma2, eps=1e-6):
  """pytorch-fid's classic formula: `sqrtm(S1 @ S2)`, retried with eps*I added when not finite, real part."""
  linalg = pytest.importorskip("scipy.linalg", reason="the reference Frechet distance uses scipy's sqrtm")
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # sqrtm warns on singular products; the retry below handles non-finite ones
    covmean = linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
      offset = np.eye(sigma1.shape[0]) * eps
      covmean = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
  diff = mu1 - mu2
  return diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean.real)


def gaussian_features(rng, samples, dim, shift=0.0):
  """Correlated features: `samples` draws of a random linear map of a standard normal, plus `shift`."""
  return rng.standard_normal((samples, dim)) @ rng.standard_normal((dim, dim)) * 0.3 + shift


@pytest.mark.parametrize("dim, samples", [(16, 400), (64, 1000), (16, 10), (64, 40)])
def test_matches_scipy_sqrtm(dim, samples):
  """Full-rank and rank-deficient (fewer samples than dimensions) covariances."""
  rng = np.random.default_rng(dim + samples)
  a, b = gaussian_features(rng, samples, dim), gaussian_features(rng, samples, dim, shift=0.2)
  stats = (a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))
  assert frechet_distance(*stats) == pytest.approx(scipy_frechet(*stats), rel=1e-6)


def test_isotropic_gaussians():
  """N(m1, a^2 I) and N(m2, b^2 I): |m1 - m2|^2 + d (a - b)^2."""
  dim, a, b = 32, 0.7, 1.9
  rng = np.random.default_rng(0)
  m1, m2 = rng.standard_normal(dim), rng.standard_normal(dim)
  expected = np.sum((m1 - m2) ** 2) + dim * (a - b) ** 2
  assert frechet_distance(m1, a**2 * np.eye(dim), m2, b**2 * np.eye(dim)) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("zero_variances, rel", [(0, 1e-12), (5, 1e-8)])
def test_commuting_covariances(zero_variances, rel):
  """Q D1 Q^T and Q D2 Q^T (a shared random rotation Q): |m1 - m2|^2 + sum (sqrt(d1) - sqrt(d2))^2. Zero variances
  are ill-conditioned: the 1e-16 rounding of Q D Q^T moves their square roots by 1e-8 (scipy's sqrtm as much)."""
  dim = 48
  rng = np.random.default_rng(1)
  rotation, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
  d1, d2 = rng.uniform(0, 3, dim), rng.uniform(0, 3, dim)
  d1[:zero_variances] = 0.0
  m1, m2 = rng.standard_normal(dim), rng.standard_normal(dim)
  expected = np.sum((m1 - m2) ** 2) + np.sum((np.sqrt(d1) - np.sqrt(d2)) ** 2)
  actual = frechet_distance(m1, rotation @ np.diag(d1) @ rotation.T, m2, rotation @ np.diag(d2) @ rotation.T)
  assert actual == pytest.approx(expected, rel=rel)


@pytest.mark.parametrize("samples", [10, 1000])
def test_distance_to_itself_is_zero(samples):
  rng = np.random.default_rng(samples)
  features = gaussian_features(rng, samples, 64, shift=1.0)
  mu, sigma = features.mean(0), np.cov(features, rowvar=False)
  assert abs(frechet_distance(mu, sigma, mu, sigma)) < 1e-12 * np.trace(sigma)


def test_mismatched_statistics_are_refused():
  with pytest.raises(ValueError, match=r"statistics do not match: mu \(3,\) vs \(4,\)"):
    frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


def test_streaming_statistics_match_numpy():
  """Chunks of uneven sizes, split over two merged accumulators (two hosts), against np.mean and np.cov."""
  rng = np.random.default_rng(2)
  features = gaussian_features(rng, 1000, 24, shift=3.0).astype(np.float32)
  first, second = FeatureStatistics(24), FeatureStatistics(24)
  for start, stop in ((0, 7), (7, 300), (300, 301)):
    first.update(features[start:stop])
  second.update(features[301:])
  mean, covariance = first.merge(second).mean_and_covariance()
  assert first.count == 1000
  whole = features.astype(np.float64)
  np.testing.assert_allclose(mean, whole.mean(0), rtol=1e-12)
  np.testing.assert_allclose(covariance, np.cov(whole, rowvar=False), rtol=1e-9, atol=1e-12)


def test_streaming_statistics_errors():
  statistics = FeatureStatistics(8)
  with pytest.raises(ValueError, match=r"features must be \(n, 8\), got \(4, 7\)"):
    statistics.update(np.zeros((4, 7)))
  with pytest.raises(ValueError, match="at least 2 features, got 1"):
    statistics.update(np.zeros((1, 8))).mean_and_covariance()
  with pytest.raises(ValueError, match="cannot merge statistics of 4-d features into 8-d"):
    statistics.merge(FeatureStatistics(4))
