"""Training covers sampling: every time at which any solver calls the network lies in the range training draws t
from (first and last steps, image-to-image starts, every resolution shift), for the presets' defaults."""

import functools

import jax
import jax.numpy as jnp
import pytest

from configs import base
from pixelhdm_jax import flow
from pixelhdm_jax.sample import solvers

SIZES = ((32, 32), (64, 64), (256, 256), (512, 512), (1024, 1024), (256, 512))
SHIFTS = sorted({1.0, 3.0} | {flow.resolution_shift(h, w) for h, w in SIZES})  # 0.125 .. 4 (fixed and resolution)
STRENGTHS = (1.0, 0.8, 0.3, 0.05)  # image-to-image starts at t = 1 - strength (1.0: text-to-image)


_RECORDED: list[float] = []  # filled by the compiled loops' callbacks


def _velocity(z, t):
  jax.debug.callback(lambda value: _RECORDED.append(float(value)), t)
  return -z


@functools.cache
def _compiled(solver: str, num_steps: int):
  """One compiled loop per (solver, steps); the shift and the start time are traced."""
  return jax.jit(lambda t_start, shift: solvers.sample(_velocity, jnp.ones((1, 2)), solver=solver,
                                                       num_steps=num_steps, t_start=t_start, shift=shift))


def evaluated_times(solver: str, num_steps: int, shift: float, t_start: float) -> list[float]:
  """The times at which `solver` calls the velocity, reported from inside the compiled loop."""
  _RECORDED.clear()
  _compiled(solver, num_steps)(jnp.float32(t_start), jnp.float32(shift)).block_until_ready()
  jax.effects_barrier()
  return list(_RECORDED)


@pytest.mark.parametrize("solver", solvers.SOLVERS)
def test_every_network_time_of_every_solver_is_a_training_time(solver):
  ranges = {preset: flow.time_range(base.get_config(preset).flow.t_eps) for preset in ("tiny", "default")}
  for num_steps in (1, 2, 5, 50):
    for shift in SHIFTS:
      for strength in STRENGTHS:
        times = evaluated_times(solver, num_steps, shift, 1.0 - strength)
        assert times, (num_steps, shift, strength)
        for preset, (low, high) in ranges.items():
          assert low <= min(times) and max(times) <= high, (preset, num_steps, shift, strength, min(times),
                                                           max(times))


def test_the_check_sees_a_range_that_misses_the_first_step():
  """The original's range [0.05, 0.95] misses the noise end of text-to-image sampling (t = 0)."""
  low, _ = flow.time_range(0.05)
  assert min(evaluated_times("heun", 50, 1.0, 0.0)) < low
