"""Learning-rate schedules as Optax schedules of the optimizer step k = 0, 1, ... (the lr of step k).

All start with the same linear warm-up, lr(k) = peak (k + 1) / warmup_steps for k < warmup_steps, then:
  constant                 peak.
  cosine                   min_lr + (peak - min_lr) (1 + cos(pi s / T)) / 2, s = k - warmup_steps capped at
                           T = total_steps - warmup_steps (min_lr afterwards; torch's CosineAnnealingLR).
  stepped_cosine_restart   the original's SteppedCosineRestartScheduler (docs/original.md §7):
                           cycle n = s // T_0 and T_cur = s % T_0,
                           peak_n = max(global_min, peak decay^n), min_n = min(peak_n, max(global_min,
                           cycle_min decay^n)), lr = min_n + (peak_n - min_n) (1 + cos(pi T_cur / T_0)) / 2.

Deviation: the original's stepped scheduler starts its warm-up one step ahead (torch's LRScheduler steps once
at construction, so its first lr is peak 2/warmup); here warm-up step k uses (k + 1)/warmup as its docs say.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import optax


def _with_warmup(peak: float, warmup_steps: int, after: optax.Schedule) -> optax.Schedule:
  """Linear warm-up to `peak` over `warmup_steps`, then `after(k - warmup_steps)`."""
  def schedule(count: jax.Array) -> jax.Array:
    k = jnp.asarray(count, jnp.int32)
    if warmup_steps == 0:
      return after(k)
    warm = peak * (k + 1).astype(jnp.float32) / warmup_steps
    return jnp.where(k < warmup_steps, warm, after(jnp.maximum(k - warmup_steps, 0)))
  return schedule


def constant(peak: float, warmup_steps: int = 0) -> optax.Schedule:
  """Warm-up, then constant `peak`."""
  return _with_warmup(peak, warmup_steps, lambda s: jnp.full((), peak, jnp.float32))


def cosine(peak: float, total_steps: int, min_lr: float, warmup_steps: int = 0) -> optax.Schedule:
  """Warm-up, then a half cosine from `peak` to `min_lr` at `total_steps`, flat afterwards."""
  decay_steps = max(total_steps - warmup_steps, 1)

  def after(s: jax.Array) -> jax.Array:
    progress = jnp.minimum(s, decay_steps).astype(jnp.float32) / decay_steps
    return min_lr + (peak - min_lr) * 0.5 * (1.0 + jnp.cos(jnp.pi * progress))
  return _with_warmup(peak, warmup_steps, after)


def stepped_cosine_restart(peak: float, cycle_steps: int, cycle_min_lr: float, decay_rate: float,
                           global_min_lr: float, warmup_steps: int = 0) -> optax.Schedule:
  """Warm-up, then cosine cycles of `cycle_steps` whose peak and trough both decay by `decay_rate` per cycle."""
  def after(s: jax.Array) -> jax.Array:
    cycle = (s // cycle_steps).astype(jnp.float32)
    t_cur = (s % cycle_steps).astype(jnp.float32)
    decay = jnp.power(jnp.float32(decay_rate), cycle)
    cycle_peak = jnp.maximum(global_min_lr, peak * decay)
    cycle_min = jnp.minimum(jnp.maximum(global_min_lr, cycle_min_lr * decay), cycle_peak)
    return cycle_min + (cycle_peak - cycle_min) * 0.5 * (1.0 + jnp.cos(jnp.pi * t_cur / cycle_steps))
  return _with_warmup(peak, warmup_steps, after)


# `optim.schedule` -> the schedule it builds from the config (steps are optimizer steps).
SCHEDULES = {
    "constant": lambda c: constant(c.optim.learning_rate, c.optim.warmup_steps),
    "cosine": lambda c: cosine(c.optim.learning_rate, c.train.num_steps, c.optim.min_lr, c.optim.warmup_steps),
    "stepped_cosine_restart": lambda c: stepped_cosine_restart(
        c.optim.learning_rate, c.optim.restart_cycle_steps, c.optim.restart_cycle_min_lr,
        c.optim.restart_decay_rate, c.optim.min_lr, c.optim.warmup_steps),
}


def from_config(config: ml_collections.ConfigDict) -> optax.Schedule:
  """The schedule named by `config.optim.schedule` (`SCHEDULES`; cosine ends at train.num_steps)."""
  name = config.optim.schedule
  if name not in SCHEDULES:
    raise ValueError(f"optim.schedule={name!r} is unknown: choose one of {tuple(SCHEDULES)}")
  return SCHEDULES[name](config)
