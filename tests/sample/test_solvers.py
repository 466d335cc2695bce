"""Solvers on a Gaussian flow with a closed-form velocity: endpoint, order of convergence, NFE, jit.

Data x ~ N(mu, diag s^2) and noise eps ~ N(0, I) give, per dimension, V_t = t^2 s^2 + (1 - t)^2 and
E[x - eps | z_t = z] = mu + (t s^2 - (1 - t)) (z - t mu) / V_t. The ODE from z_0 = eps follows
z_t = t mu + sqrt(V_t) eps, so its exact endpoint is mu + s eps.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pixelhdm_jax import flow
from pixelhdm_jax.sample import solvers

STEPS = (256, 512, 1024, 2048)  # past the pre-asymptotic range of every solver
ORDER = {"euler": 1, "heun": 2, "dpmpp_2m": 2, "dpmpp_2s": 2, "ab2": 2}
BAND = {1: (0.8, 1.2), 2: (1.7, 2.4)}


def _gaussian_flow(xp=np, seed=0, dim=8, batch=4):
  rng = np.random.default_rng(seed)
  mu, s = rng.normal(size=dim), rng.uniform(0.3, 1.5, size=dim)
  eps = rng.normal(size=(batch, dim))

  def velocity(z, t):
    var = t * t * s * s + (1 - t) ** 2
    return mu + (t * s * s - (1 - t)) * (z - t * mu) / var

  def trajectory(t):
    return t * mu + xp.sqrt(t * t * s * s + (1 - t) ** 2) * eps

  return velocity, trajectory, eps


@functools.cache
def _sampler(solver, num_steps):
  """`solvers.sample` on the Gaussian flow, compiled once per (solver, steps): the shift is an input."""
  velocity, _, _ = _gaussian_flow()
  return jax.jit(lambda z, shift: solvers.sample(velocity, z, solver=solver, num_steps=num_steps, shift=shift))


def _errors(solver, steps, shift=1.0):
  """Max-abs endpoint errors in float64 for each step count."""
  with jax.enable_x64(True):
    _, trajectory, eps = _gaussian_flow(jnp)
    errors = [float(jnp.max(jnp.abs(_sampler(solver, n)(jnp.asarray(eps), shift) - trajectory(1.0)))) for n in steps]
  return np.asarray(errors)


def _slope(steps, errors):
  return -np.polyfit(np.log(steps), np.log(errors), 1)[0]


@pytest.mark.parametrize("shift", [1.0, 3.0])
@pytest.mark.parametrize("solver", list(ORDER))
def test_converges_at_theoretical_order(solver, shift):
  errors = _errors(solver, STEPS, shift)
  assert errors[-1] < (1e-2 if ORDER[solver] == 1 else 1e-3)
  lo, hi = BAND[ORDER[solver]]
  assert lo <= _slope(STEPS, errors) <= hi, errors


@pytest.mark.parametrize("shift", [1.0, 3.0, flow.resolution_shift(64, 64), flow.resolution_shift(512, 512)])
def test_dpmpp_2m_is_second_order_from_few_steps_on_shifted_grids(shift):
  # Shifts 1 and 3, and the resolution shifts of 64x64 and 512x512 images (0.25 and 2). Extrapolating x_hat in
  # lambda, whose steps stay O(1) next to t = 0 and t = 1, gave orders 0.87-1.71 between 32 and 128 steps here.
  errors = _errors("dpmpp_2m", (8, 16, 32, 64, 128), shift)
  assert np.all(np.diff(errors) < 0), errors
  assert np.all(np.log2(errors[2:-1] / errors[3:]) >= 1.7), errors


def _original_dpmpp(velocity, z, ts):
  """The original's DPMPPSampler (docs/original.md §9), alpha-ratio bug included."""
  lam = lambda t: np.log(t / (1 - t))
  x_prev = None
  for i in range(len(ts) - 1):
    t, t_next = ts[i], ts[i + 1]
    x_hat = z + (1 - t) * velocity(z, t)
    d = x_hat
    if i:
      r = (lam(t) - lam(ts[i - 1])) / (lam(t_next) - lam(t) + 1e-8)
      d = x_hat + r / (1 + r) * (x_hat - x_prev)
    z = (t_next / t) * z + ((1 - t_next) - (1 - t) * t_next / t) * d
    x_prev = x_hat
  return z


def test_original_dpmpp_update_does_not_converge():
  velocity, trajectory, _ = _gaussian_flow()
  errors = [np.abs(_original_dpmpp(velocity, trajectory(0.05), np.linspace(0.05, 0.95, n + 1))
                   - trajectory(0.95)).max() for n in (10, 40, 160)]
  assert min(errors) > 1.0 and errors[-1] > 0.5 * errors[0]


@pytest.mark.parametrize("solver", list(ORDER))
def test_straight_flow_is_exact_from_any_start(solver):
  # A constant velocity field: every solver lands exactly on z + (1 - t_start) c.
  z = jnp.linspace(-1.0, 1.0, 12).reshape(2, 6)
  c = jnp.arange(12.0).reshape(2, 6) / 7
  out = solvers.sample(lambda z, t: c, z, solver=solver, num_steps=5, t_start=0.3, shift=2.0)
  np.testing.assert_allclose(out, z + 0.7 * c, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("num_steps", [1, 2, 5])
@pytest.mark.parametrize("solver", list(ORDER))
def test_evaluation_count_and_times(solver, num_steps):
  calls = []

  def velocity(z, t):
    jax.debug.callback(lambda t: calls.append(float(t)), t)
    return -z

  jax.block_until_ready(jax.jit(lambda z: solvers.sample(velocity, z, solver=solver, num_steps=num_steps))(
      jnp.ones((2, 3))))
  assert len(calls) == solvers.num_evaluations(solver, num_steps)
  assert min(calls) == 0.0 and max(calls) < 1.0


def test_time_grid():
  np.testing.assert_allclose(solvers.time_grid(4), [0.0, 0.25, 0.5, 0.75, 1.0])
  shifted = solvers.time_grid(4, shift=3.0)
  assert shifted[0] == 0.0 and shifted[-1] == 1.0 and bool(jnp.all(jnp.diff(shifted) > 0))
  assert shifted[1] < 0.25  # s > 1 spends more steps near noise
  tail = solvers.time_grid(3, t_start=0.4, shift=3.0)
  np.testing.assert_allclose(tail[0], 0.4, rtol=1e-6)
  assert tail[-1] == 1.0 and bool(jnp.all(jnp.diff(tail) > 0))
  with pytest.raises(ValueError, match="num_steps"):
    solvers.time_grid(0)
  with pytest.raises(ValueError, match=r"t_start must be in \[0, 1\)"):
    solvers.time_grid(4, t_start=1.0)


def test_unknown_solver_names_the_choices():
  with pytest.raises(ValueError, match="unknown solver 'dpm_pp'.*heun"):
    solvers.sample(lambda z, t: z, jnp.zeros((1, 2)), solver="dpm_pp")


def test_deterministic_under_jit_and_float32_state():
  velocity, _, _ = _gaussian_flow()
  noise = jax.random.normal(jax.random.key(0), (4, 8), jnp.bfloat16)
  run = jax.jit(lambda z: solvers.sample(velocity, z, solver="heun", num_steps=7, shift=2.0))
  first, second = run(noise), run(noise)
  assert first.dtype == jnp.float32
  np.testing.assert_array_equal(first, second)

