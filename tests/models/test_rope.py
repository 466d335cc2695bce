"""mRoPE: rotations keep norms and attention scores depend only on relative positions per axis."""

import jax
import jax.numpy as jnp
import numpy as np

from pixelhdm_jax.models.rope import apply_rope, grid_positions, rope_tables, text_positions

SPLIT = (4, 6, 6)


def _rotate(x, positions):
  return apply_rope(x, rope_tables(positions, SPLIT, 10000.0))


def test_rotation_keeps_norms():
  x = jax.random.normal(jax.random.key(0), (2, 5, 3, 16))
  positions = jax.random.randint(jax.random.key(1), (2, 5, 3), 0, 100)
  np.testing.assert_allclose(jnp.linalg.norm(_rotate(x, positions), axis=-1), jnp.linalg.norm(x, axis=-1),
                             rtol=1e-5)


def test_scores_depend_only_on_relative_positions():
  q = jax.random.normal(jax.random.key(2), (1, 6, 1, 16))
  k = jax.random.normal(jax.random.key(3), (1, 6, 1, 16))
  pq = jax.random.randint(jax.random.key(4), (1, 6, 3), 0, 50)
  pk = jax.random.randint(jax.random.key(5), (1, 6, 3), 0, 50)

  def scores(offset):
    shift = jnp.asarray(offset)[None, None, :]
    return jnp.einsum("bqhd,bkhd->bqk", _rotate(q, pq + shift), _rotate(k, pk + shift))

  base = scores([0, 0, 0])
  for offset in ([7, 0, 0], [0, 11, 0], [0, 0, 13], [3, 5, 9]):
    np.testing.assert_allclose(scores(offset), base, rtol=1e-4, atol=1e-4)
  moved_key_only = jnp.einsum("bqhd,bkhd->bqk", _rotate(q, pq), _rotate(k, pk + jnp.array([0, 1, 0])))
  assert not np.allclose(moved_key_only, base, atol=1e-3), "a relative move must change the scores"


def test_each_axis_rotates_its_own_slice():
  x = jnp.ones((1, 1, 1, 16))
  for axis, (lo, hi) in enumerate([(0, 4), (4, 10), (10, 16)]):
    positions = jnp.zeros((1, 1, 3), jnp.int32).at[..., axis].set(5)
    rotated = _rotate(x, positions)[0, 0, 0]
    changed = np.flatnonzero(~np.isclose(rotated, 1.0))
    assert changed.min() >= lo and changed.max() < hi, (axis, changed)


def test_position_id_layout():
  np.testing.assert_array_equal(text_positions(1, 3)[0], [[0, 0, 0], [1, 0, 0], [2, 0, 0]])
  ids = grid_positions(2, 3, jnp.array([4, 7]))
  np.testing.assert_array_equal(ids[1], [[7, 0, 0], [7, 0, 1], [7, 0, 2], [7, 1, 0], [7, 1, 1], [7, 1, 2]])
