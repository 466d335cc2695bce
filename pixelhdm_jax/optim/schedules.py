"""Learning-rate schedules as Optax schedules of the optimizer step k = 0, 1, ... (the lr of step k).

All start with the same linear warm-up, lr(k) = peak (k + 1) / warmup_steps for k < warmup_steps, then:
  constant                 peak.
  cosine                   min_lr + (peak - min_lr) (1 + cos(pi s / T)) / 2, s = k - warmup_steps capped at
                           T = total_steps - warmup_steps (min_lr afterwards; torch's CosineAnnealingLR).
  stepped_cosine_restart   the original's SteppedCosineRestartScheduler (`reference/original_pytorch.md` §7.4):
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

from pixelhdm_jax.config import LR_SCHEDULES


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


def from_config(config: ml_collections.ConfigDict) -> optax.Schedule:
  """The schedule named by `config.optim.schedule` (steps are optimizer steps; cosine ends at train.num_steps)."""
  o = config.optim
  if o.schedule == "constant":
    return constant(o.learning_rate, o.warmup_steps)
  if o.schedule == "cosine":
    return cosine(o.learning_rate, config.train.num_steps, o.min_lr, o.warmup_steps)
  if o.schedule == "stepped_cosine_restart":
    return stepped_cosine_restart(o.learning_rate, o.restart_cycle_steps, o.restart_cycle_min_lr,
                                  o.restart_decay_rate, o.min_lr, o.warmup_steps)
  raise ValueError(f"optim.schedule={o.schedule!r} is unknown: choose one of {LR_SCHEDULES}")
