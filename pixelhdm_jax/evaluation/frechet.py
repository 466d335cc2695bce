"""The Frechet distance between Gaussians fitted to features (FID, FD-DINOv3) and streaming feature statistics.

Everything is float64 numpy on the host; the reference files that hold the statistics are `reference.py`'s.
"""

from __future__ import annotations

import numpy as np


def _symmetric_sqrt(matrix: np.ndarray) -> np.ndarray:
  """The PSD square root of a symmetric matrix, negative round-off eigenvalues clipped to zero."""
  values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
  return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
  """|mu1 - mu2|^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)), in float64.

  Tr((S1 S2)^(1/2)) is the sum of the singular values of S1^(1/2) S2^(1/2) (their squares are the eigenvalues of
  S1^(1/2) S2 S1^(1/2), similar to S1 S2): no complex `sqrtm`, no eps retry, and no square root of round-off, so
  nearly singular covariances (fewer images than dimensions) stay accurate and FD(x, x) is ~1e-15 of Tr(S).
  """
  mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
  sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
  dim = mu1.shape[0]
  if mu1.shape != (dim,) or mu2.shape != (dim,) or sigma1.shape != (dim, dim) or sigma2.shape != (dim, dim):
    raise ValueError(f"statistics do not match: mu {mu1.shape} vs {mu2.shape}, sigma {sigma1.shape} vs "
                     f"{sigma2.shape} (want (d,) means and (d, d) covariances)")
  trace_sqrt = np.linalg.svd(_symmetric_sqrt(sigma1) @ _symmetric_sqrt(sigma2), compute_uv=False).sum()
  diff = mu1 - mu2
  return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt)


class FeatureStatistics:
  """Streaming mean and covariance of features: a count, a float64 sum and a float64 sum of outer products, so
  chunks (batches, hosts) can be added in any order and merged."""

  def __init__(self, dim: int):
    self.count = 0
    self.total = np.zeros(dim, np.float64)
    self.outer = np.zeros((dim, dim), np.float64)

  def update(self, features) -> FeatureStatistics:
    """Adds a (n, dim) chunk of features."""
    features = np.asarray(features, np.float64)
    if features.ndim != 2 or features.shape[1] != self.total.shape[0]:
      raise ValueError(f"features must be (n, {self.total.shape[0]}), got {features.shape}")
    self.count += features.shape[0]
    self.total += features.sum(axis=0)
    self.outer += features.T @ features
    return self

  def merge(self, other: FeatureStatistics) -> FeatureStatistics:
    """Adds another accumulator's features (e.g. another host's)."""
    if other.total.shape != self.total.shape:
      raise ValueError(f"cannot merge statistics of {other.total.shape[0]}-d features into {self.total.shape[0]}-d")
    self.count += other.count
    self.total += other.total
    self.outer += other.outer
    return self

  def mean_and_covariance(self) -> tuple[np.ndarray, np.ndarray]:
    """The mean and the unbiased covariance (`np.cov(features, rowvar=False)`) of everything added."""
    if self.count < 2:
      raise ValueError(f"a covariance needs at least 2 features, got {self.count}")
    mean = self.total / self.count
    covariance = (self.outer - self.count * np.outer(mean, mean)) / (self.count - 1)
    return mean, (covariance + covariance.T) / 2
