"""Flow-matching ODE solvers from noise (t = 0) to the clean image (t = 1).

A solver sees only `velocity_fn(z, t) -> v` (t a 0-d array; guidance lives inside `velocity_fn`) and a
time grid t_0 < ... < t_N = 1 (`time_grid`). Each loop is one `lax.scan`, so `sample` is jit-able for a
static (solver, num_steps) and never syncs with the host. Update rules follow
DPM-Solver++ (Lu et al., arXiv 2211.01095) and Adams-Bashforth, written for alpha_t = t, sigma_t = 1 - t,
lambda_t = log(t / (1 - t)) (the original's DPM++ is wrong: docs/deviations.md S2). Every solver
lands on t = 1 with a clean estimate (dpmpp_2m's extrapolated from its last two); none evaluates the network
at t = 1.

Network evaluations (NFE) for N steps, doubled by classifier-free guidance:
  euler     N        first order.
  heun      2N - 1   second order; Euler on the last step (it lands on t = 1, where Euler gives x_hat).
  dpmpp_2m  N        second order; DPM-Solver++(2M) with x_hat extrapolated in q = -(1 - t)^2 / 2 rather than in
                     lambda, whose steps stay O(1) next to t = 0 and t = 1 (an O(log N / N^2) error, non-monotone
                     on shifted grids); first order on the first step, which has no previous evaluation.
  dpmpp_2s  2N - 2   second order; DPM-Solver++(2S), midpoint in lambda; first order on the first step
                     (lambda(0) = -inf) and on the last (lambda(1) = +inf); 1 NFE when N = 1.
  ab2       N        second order; Adams-Bashforth 2 on v (variable-step form), Euler first.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections

from pixelhdm_jax import flow

VelocityFn = Callable[[jax.Array, jax.Array], jax.Array]
Solver = Callable[[VelocityFn, jax.Array, jax.Array], jax.Array]


def time_grid(num_steps: int, *, t_start: float | jax.Array = 0.0, shift: float = 1.0,
              dtype: jnp.dtype = jnp.float32) -> jax.Array:
  """num_steps + 1 times from t_start to exactly 1, uniform before `flow.time_shift(., shift)`.

  The unshifted grid starts at the pre-image of t_start, so an image-to-image grid is the tail of the
  text-to-image density of steps (shift > 1 spends more steps near noise).
  """
  if num_steps < 1:
    raise ValueError(f"num_steps must be a positive integer, got {num_steps}")
  if isinstance(t_start, (int, float)) and not 0.0 <= t_start < 1.0:
    raise ValueError(f"t_start must be in [0, 1) (0 = pure noise), got {t_start}")
  t_start = jnp.asarray(t_start, dtype)
  u = jnp.linspace(flow.time_shift(t_start, 1.0 / shift), 1.0, num_steps + 1, dtype=dtype)
  return flow.time_shift(u, shift).at[0].set(t_start).at[-1].set(1.0)


def _velocity(velocity_fn: VelocityFn, z: jax.Array, t: jax.Array) -> jax.Array:
  return velocity_fn(z, t).astype(z.dtype)


def _clean(velocity_fn: VelocityFn, z: jax.Array, t: jax.Array) -> jax.Array:
  """x_hat = z + (1 - t) v: every first-order step that lands on t = 1."""
  return flow.clean_from_velocity(z, t, _velocity(velocity_fn, z, t))


def _dpm_first_order(z: jax.Array, t: jax.Array, t_next: jax.Array, x_hat: jax.Array) -> jax.Array:
  """DPM-Solver++(1): (sigma'/sigma) z + alpha' (1 - e^-h) x_hat, written to stay finite at t = 0."""
  ratio = (1.0 - t_next) / (1.0 - t)
  return ratio * z + (t_next - t * ratio) * x_hat


def euler(velocity_fn: VelocityFn, z: jax.Array, ts: jax.Array) -> jax.Array:
  """z' = z + h v (N NFE)."""
  def step(z, times):
    t, t_next = times
    return z + (t_next - t) * _velocity(velocity_fn, z, t), None

  z, _ = jax.lax.scan(step, z, (ts[:-1], ts[1:]))
  return z


def heun(velocity_fn: VelocityFn, z: jax.Array, ts: jax.Array) -> jax.Array:
  """Heun's trapezoid on every step but the last, which is Euler onto t = 1 (2N - 1 NFE)."""
  def step(z, times):
    t, t_next = times
    h = t_next - t
    v = _velocity(velocity_fn, z, t)
    v_next = _velocity(velocity_fn, z + h * v, t_next)
    return z + 0.5 * h * (v + v_next), None

  z, _ = jax.lax.scan(step, z, (ts[:-2], ts[1:-1]))
  return _clean(velocity_fn, z, ts[-2])


def dpmpp_2m(velocity_fn: VelocityFn, z: jax.Array, ts: jax.Array) -> jax.Array:
  """DPM-Solver++(2M): the first-order update driven by D = x_hat + r (x_hat - x_hat_prev) (N NFE).

  The exact step is z' = (sigma'/sigma) z + sigma' int_t^t' x_hat(tau) / (1 - tau)^2 dtau (sigma = 1 - t). Lu et
  al. extrapolate x_hat linearly in lambda, whose steps stay O(1) next to t = 0 and t = 1 on any grid: an
  O(log N / N^2) error. Along the ODE d x_hat / dt = (1 - t) dv/dt, so in q = -(1 - t)^2 / 2 the slope
  d x_hat / dq = dv/dt stays bounded on all of [0, 1]; integrating x_hat linear in q through the last two
  evaluations exactly gives r = h sigma / (h_prev (sigma + sigma_prev)), h = t' - t (Lu et al.'s
  h_lambda / (2 h_lambda_prev) as the steps shrink). r <= h / (2 h_prev) stays finite on the last step onto
  t = 1 (lambda = +inf), so only the first step, which has no previous evaluation, is first order.
  """
  x_hat = _clean(velocity_fn, z, ts[0])
  z = _dpm_first_order(z, ts[0], ts[1], x_hat)

  def step(carry, times):
    z, x_prev = carry
    t_prev, t, t_next = times
    x_hat = _clean(velocity_fn, z, t)
    r = (t_next - t) * (1.0 - t) / ((t - t_prev) * ((1.0 - t) + (1.0 - t_prev)))
    return (_dpm_first_order(z, t, t_next, x_hat + r * (x_hat - x_prev)), x_hat), None

  (z, _), _ = jax.lax.scan(step, (z, x_hat), (ts[:-2], ts[1:-1], ts[2:]))
  return z


def dpmpp_2s(velocity_fn: VelocityFn, z: jax.Array, ts: jax.Array) -> jax.Array:
  """DPM-Solver++(2S): x_hat at the lambda-midpoint drives the first-order update (2N - 2 NFE)."""
  if ts.shape[0] == 2:
    return _clean(velocity_fn, z, ts[0])
  z = _dpm_first_order(z, ts[0], ts[1], _clean(velocity_fn, z, ts[0]))

  def step(z, times):
    t, t_next = times
    t_mid = 1.0 / (1.0 + jnp.sqrt((1.0 - t) * (1.0 - t_next) / (t * t_next)))
    u = _dpm_first_order(z, t, t_mid, _clean(velocity_fn, z, t))
    return _dpm_first_order(z, t, t_next, _clean(velocity_fn, u, t_mid)), None

  z, _ = jax.lax.scan(step, z, (ts[1:-2], ts[2:-1]))
  return _clean(velocity_fn, z, ts[-2])


def ab2(velocity_fn: VelocityFn, z: jax.Array, ts: jax.Array) -> jax.Array:
  """Adams-Bashforth 2: z' = z + h ((1 + c) v - c v_prev), c = h / (2 h_prev); Euler first (N NFE).

  On a uniform grid c = 1/2 (PixelDiT's 1.5 v - 0.5 v_prev); the variable-step c keeps order 2 on
  shifted grids.
  """
  v = _velocity(velocity_fn, z, ts[0])
  z = z + (ts[1] - ts[0]) * v

  def step(carry, times):
    z, v_prev = carry
    t_prev, t, t_next = times
    h = t_next - t
    c = h / (2.0 * (t - t_prev))
    v = _velocity(velocity_fn, z, t)
    return (z + h * ((1.0 + c) * v - c * v_prev), v), None

  (z, _), _ = jax.lax.scan(step, (z, v), (ts[:-2], ts[1:-1], ts[2:]))
  return z


SOLVERS: dict[str, Solver] = {
    "euler": euler,
    "heun": heun,
    "dpmpp_2m": dpmpp_2m,
    "dpmpp_2s": dpmpp_2s,
    "ab2": ab2,
}


def get_solver(name: str) -> Solver:
  """The solver registered under `name` (`sample.solver`)."""
  if name not in SOLVERS:
    raise ValueError(f"unknown solver {name!r}: choose one of {', '.join(SOLVERS)}")
  return SOLVERS[name]


def num_evaluations(name: str, num_steps: int) -> int:
  """Velocity evaluations of one sample (each is two network passes under classifier-free guidance)."""
  get_solver(name)
  if name == "heun":
    return 2 * num_steps - 1
  if name == "dpmpp_2s":
    return max(1, 2 * num_steps - 2)
  return num_steps


def shift_for(sample_config: ml_collections.ConfigDict, height: int, width: int) -> float:
  """The time-grid shift of `config.sample` for an image size (`flow.SHIFT_MODES`)."""
  return flow.shift_for(sample_config.time_shift_mode, sample_config.time_shift, height, width)


def sample(velocity_fn: VelocityFn, z: jax.Array, *, solver: str = "heun", num_steps: int = 50,
           t_start: float | jax.Array = 0.0, shift: float = 1.0) -> jax.Array:
  """Integrates dz/dt = velocity_fn(z, t) from z at t_start (noise at 0) to t = 1; returns the clean image.

  `solver` and `num_steps` are static under jit. The state and time grid are at least float32 (the
  model may compute in bfloat16 inside `velocity_fn`).
  """
  integrate = get_solver(solver)
  dtype = jnp.promote_types(z.dtype, jnp.float32)
  ts = time_grid(num_steps, t_start=t_start, shift=shift, dtype=dtype)
  return integrate(velocity_fn, z.astype(dtype), ts)
