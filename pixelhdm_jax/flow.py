"""Flow-matching math shared by training and sampling (t = 0 pure noise, t = 1 clean image).

z_t = t x + (1 - t) eps, velocity v = dz/dt = x - eps; alpha_t = t, sigma_t = 1 - t.
From a velocity estimate at (z, t) the clean image is x_hat = z + (1 - t) v (the solvers' last step).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp


def _per_sample(t: jax.Array, like: jax.Array) -> jax.Array:
  """Broadcasts t (B,) against an image batch (B, ...)."""
  t = jnp.asarray(t, like.dtype)
  return t.reshape(t.shape + (1,) * (like.ndim - t.ndim))


def time_shift(t: jax.Array, shift: float) -> jax.Array:
  """Shifted time t / (t + s (1 - t)): s > 1 spends more of [0, 1] near noise (SD3's shift for sigma = 1 - t)."""
  return t / (t + shift * (1.0 - t))


def resolution_shift(height: int, width: int, base: int = 256) -> float:
  """The SD3 resolution rule s = sqrt(H W / base^2) (s = 1 at base x base)."""
  return math.sqrt(height * width) / base


# A time shift's mode -> the shift for (the configured fixed shift, height, width); training (`flow`) and sampling
# (`sample`) each choose one with `time_shift_mode` and `time_shift`.
SHIFT_MODES = {
    "resolution": lambda fixed, height, width: resolution_shift(height, width),  # SD3: sqrt(H W) / 256
    "fixed": lambda fixed, height, width: fixed,
}


def shift_for(mode: str, fixed: float, height: int, width: int) -> float:
  """The time shift of `mode` (`SHIFT_MODES`) for an image size; `fixed` is the configured `time_shift`."""
  return SHIFT_MODES[mode](fixed, height, width)


def time_range(t_eps: float) -> tuple[float, float]:
  """The interval that training draws t from: [t_eps, 1 - t_eps] (the solvers evaluate the network inside it)."""
  return t_eps, 1.0 - t_eps


def sample_time(rng: jax.Array, batch: int, *, p_mean: float = 0.0, p_std: float = 1.0, t_eps: float = 0.0,
                shift: float = 1.0) -> jax.Array:
  """Logit-normal t = sigmoid(p_mean + p_std u), optionally shifted, then mapped onto `time_range(t_eps)`."""
  t = jax.nn.sigmoid(p_mean + p_std * jax.random.normal(rng, (batch,), jnp.float32))
  if shift != 1.0:
    t = time_shift(t, shift)
  low, high = time_range(t_eps)
  return low + (high - low) * t


def interpolate(x: jax.Array, noise: jax.Array, t: jax.Array) -> jax.Array:
  """z_t = t x + (1 - t) noise."""
  t = _per_sample(t, x)
  return t * x + (1.0 - t) * noise


def velocity_target(x: jax.Array, noise: jax.Array) -> jax.Array:
  """v = x - noise, the time derivative of z_t."""
  return x - noise


def clean_from_velocity(z: jax.Array, t: jax.Array, v: jax.Array) -> jax.Array:
  """x_hat = z + (1 - t) v."""
  return z + (1.0 - _per_sample(t, z)) * v
