"""Improved precision and recall (Kynkaanniemi et al., 2019): k-nearest-neighbour manifolds of two feature sets.

Each set's manifold is the union of balls around its points, each ball reaching the point's k-th nearest
neighbour within the set. Precision is the share of generated points inside the real manifold (are the samples
realistic?), recall the share of real points inside the generated manifold (do the samples cover the data?).
"""

from __future__ import annotations

import numpy as np

NEIGHBOURS = 3  # k, as the paper's evaluation
_ROWS = 1024  # rows of the distance matrix computed at once


def _squared_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """(len(a), len(b)) squared Euclidean distances, float64, never negative."""
  d = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
  return np.maximum(d, 0.0)


def knn_radii(points: np.ndarray, k: int = NEIGHBOURS) -> np.ndarray:
  """Distance from each point to its k-th nearest other point of the same set."""
  points = np.asarray(points, np.float64)
  if len(points) <= k:
    raise ValueError(f"a k-NN manifold with k={k} needs more than {k} points, got {len(points)}")
  radii = np.empty(len(points))
  for start in range(0, len(points), _ROWS):
    d = _squared_distances(points[start:start + _ROWS], points)
    radii[start:start + _ROWS] = np.sqrt(np.partition(d, k, axis=1)[:, k])  # column 0 of the order is the point
  return radii


def coverage(queries: np.ndarray, manifold: np.ndarray, radii: np.ndarray) -> float:
  """Share of `queries` within the ball of at least one point of `manifold` (radius `radii`)."""
  queries, manifold = np.asarray(queries, np.float64), np.asarray(manifold, np.float64)
  inside = 0
  for start in range(0, len(queries), _ROWS):
    d = _squared_distances(queries[start:start + _ROWS], manifold)
    inside += int(np.any(d <= np.square(radii)[None, :], axis=1).sum())
  return inside / len(queries)


def precision_recall(real: np.ndarray, generated: np.ndarray, k: int = NEIGHBOURS) -> tuple[float, float]:
  """(precision, recall) of `generated` features against `real` ones, both (N, C)."""
  precision = coverage(generated, real, knn_radii(real, k))
  recall = coverage(real, generated, knn_radii(generated, k))
  return precision, recall
