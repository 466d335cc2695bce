"""Classifier-free guidance on the velocity: standard, rescaled, interval and scheduled scales.

The conditional and unconditional passes run as ONE network call on a stacked batch (cond first);
`guided_velocity_fn` turns a network into the `velocity_fn(z, t)` the solvers integrate. A request's `Guidance`
splits into its static `GuidanceSpec` (compiled into the loop) and its scale (an input of the loop, so a new
scale does not recompile). A negative prompt is just another unconditional context. Rescaled CFG acts on v, the
network's output, as in Lin et al. (arXiv 2305.08891), diffusers and the original: it is defined at every t and
needs no z, whereas rescaling x_hat = z + (1 - t) v would mix in the statistics of z and divide by 1 - t to
return to v.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections

# Fraction of (scale - min_scale) applied at time t: 1 at t = 0 (noise), 0 at t = 1 (clean) except
# `constant` (the original's `CFGScheduler`, docs/original.md §9).
SCHEDULES: dict[str, Callable[[jax.Array], jax.Array]] = {
    "constant": jnp.ones_like,
    "linear": lambda t: 1.0 - t,
    "cosine": lambda t: 0.5 * (1.0 + jnp.cos(math.pi * t)),
    "quadratic": lambda t: 1.0 - t * t,
}
RESCALE_STD_FLOOR = 1e-5  # std(v_cfg) below this is clamped, so constant velocities stay finite


def _expand(x: jax.Array, like: jax.Array) -> jax.Array:
  """Broadcasts a per-sample (B,) array against a batch (B, ...)."""
  return x.reshape(x.shape + (1,) * (like.ndim - x.ndim))


def _check_schedule(schedule: str) -> None:
  if schedule not in SCHEDULES:
    raise ValueError(f"unknown guidance schedule {schedule!r}: choose one of {', '.join(SCHEDULES)}")


def scheduled_scale(t: jax.Array, scale: float | jax.Array, schedule: str = "constant",
                    min_scale: float = 1.0) -> jax.Array:
  """Guidance scale at t: min_scale + (scale - min_scale) f(t), f from `SCHEDULES` (t's shape)."""
  _check_schedule(schedule)
  return min_scale + (scale - min_scale) * SCHEDULES[schedule](jnp.asarray(t))


def cfg(v_cond: jax.Array, v_uncond: jax.Array, scale: float | jax.Array) -> jax.Array:
  """v_u + w (v_c - v_u); w a scalar or per sample (B,)."""
  scale = _expand(jnp.asarray(scale, v_cond.dtype), v_cond)
  return v_uncond + scale * (v_cond - v_uncond)


def rescale(v_cfg: jax.Array, v_cond: jax.Array, phi: float) -> jax.Array:
  """phi v_cfg std(v_c)/std(v_cfg) + (1 - phi) v_cfg, std per sample over all non-batch dims."""
  axes = tuple(range(1, v_cfg.ndim))
  std_cond = jnp.std(v_cond, axis=axes, keepdims=True)
  std_cfg = jnp.maximum(jnp.std(v_cfg, axis=axes, keepdims=True), RESCALE_STD_FLOOR)
  return phi * v_cfg * (std_cond / std_cfg) + (1.0 - phi) * v_cfg


def in_interval(t: jax.Array, interval: tuple[float, float]) -> jax.Array:
  """Whether t lies in [lo, hi) (Kynkaanniemi et al.: guide the middle of the trajectory only)."""
  lo, hi = interval
  return (t >= lo) & (t < hi)


@dataclasses.dataclass(frozen=True, kw_only=True)
class GuidanceSpec:
  """The static part of classifier-free guidance, compiled into the sampling loop (the scale is an input).

  Attributes:
    rescale: phi of rescaled CFG; 0 is off, 0.7 the paper's choice.
    interval: guide for t in [lo, hi) only; elsewhere the conditional velocity.
    schedule: how w moves from the scale at t = 0 to `min_scale` at t = 1 (`SCHEDULES`).
    min_scale: w at t = 1 for the non-constant schedules.
  """
  rescale: float = 0.0
  interval: tuple[float, float] = (0.0, 1.0)
  schedule: str = "constant"
  min_scale: float = 1.0

  def __post_init__(self):
    _check_schedule(self.schedule)

  def combine(self, v_cond: jax.Array, v_uncond: jax.Array, t: jax.Array, scale: float | jax.Array) -> jax.Array:
    """The guided velocity from both halves at per-sample times t (B,) for the guidance `scale` (w at t = 0)."""
    dtype = jnp.promote_types(v_cond.dtype, jnp.float32)
    v_cond, v_uncond = v_cond.astype(dtype), v_uncond.astype(dtype)
    v = cfg(v_cond, v_uncond, scheduled_scale(t, scale, self.schedule, self.min_scale))
    if self.rescale:
      v = rescale(v, v_cond, self.rescale)
    return jnp.where(_expand(in_interval(t, self.interval), v), v, v_cond)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Guidance(GuidanceSpec):
  """Classifier-free guidance settings of a request: `GuidanceSpec`'s fields and the scale, w at t = 0 (1 is no
  guidance, 0 the unconditional model)."""
  scale: float = 4.0

  @classmethod
  def from_config(cls, sample_config: ml_collections.ConfigDict) -> Guidance:
    """From `config.sample`."""
    return cls(scale=sample_config.guidance_scale, rescale=sample_config.guidance_rescale,
               interval=tuple(sample_config.guidance_interval), schedule=sample_config.guidance_schedule,
               min_scale=sample_config.guidance_min_scale)

  @property
  def is_off(self) -> bool:
    """w = 1 everywhere, so the unconditional pass can be skipped."""
    return self.scale == 1.0 and (self.schedule == "constant" or self.min_scale == 1.0)

  @property
  def spec(self) -> GuidanceSpec | None:
    """The static part for the compiled loop; None when guidance is off (no unconditional pass)."""
    if self.is_off:
      return None
    fields = {field.name: getattr(self, field.name) for field in dataclasses.fields(GuidanceSpec)}
    return GuidanceSpec(**{**fields, "interval": tuple(self.interval)})


def _per_sample_time(t: jax.Array, z: jax.Array) -> jax.Array:
  return jnp.broadcast_to(jnp.asarray(t, jnp.promote_types(z.dtype, jnp.float32)), z.shape[:1])


def guided_velocity_fn(model_fn: Callable[[jax.Array, jax.Array, Any], jax.Array], cond: Any, uncond: Any,
                       spec: GuidanceSpec | None, scale: float | jax.Array = 1.0
                       ) -> Callable[[jax.Array, jax.Array], jax.Array]:
  """The solvers' `velocity_fn(z, t)` from a network `model_fn(z, t, context) -> v`.

  `cond` and `uncond` are context pytrees batched on axis 0 (text embedding, mask, pooled, ...); an
  `uncond` leaf with batch 1 (the cached empty or negative prompt) is broadcast to the batch. Each
  evaluation is one `model_fn` call on [z; z] with context [cond; uncond], combined by `spec` with the
  (possibly traced) `scale`; with `spec` None (guidance off) it is one call on the conditional half only.
  `t` may be a scalar or (B,).
  """
  if spec is None:
    return lambda z, t: model_fn(z, _per_sample_time(t, z), cond)
  context = jax.tree.map(lambda c, u: jnp.concatenate([c, jnp.broadcast_to(u, c.shape)]), cond, uncond)

  def velocity_fn(z, t):
    t = _per_sample_time(t, z)
    v = model_fn(jnp.concatenate([z, z]), jnp.concatenate([t, t]), context)
    v_cond, v_uncond = jnp.split(v, 2)
    return spec.combine(v_cond, v_uncond, t, scale)

  return velocity_fn
