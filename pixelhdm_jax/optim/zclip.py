"""ZClip adaptive gradient clipping as an Optax `GradientTransformation` (arXiv 2504.02507).

`zclip` is the published algorithm (the paper and its official code, `bluorion-com/ZClip`), per optimizer
step with g the global gradient norm:
  warm-up   the first `warmup_steps` norms are only collected (mean and population variance) and capped by
            `max_grad_norm` if set;
  then      z = (g - mean) / (std + eps); a spike is z > z_threshold (mode `zscore`) and lowers the limit
            to c = (mean + z_thr std / (z / z_thr)) clip_factor (`adaptive_scaling`) or c = mean (`mean`);
            mode `percentile` clips to c = mean + z_thr std when g exceeds it;
            the limit e = min(c if spike else g, max_grad_norm) scales the gradients by e / (g + 1e-6) when
            g > e; the EMA is updated with v = c if spike else g (the clipped value):
            mean <- a mean + (1 - a) v, var <- a var + (1 - a) (v - mean_new)^2
            (skipped on spikes when `skip_update_on_spike`).
The warm-up statistics use Welford's running mean and variance (equal to the official buffer's mean and
population variance, without its cancellation-prone sum of squares).

`pixelhdm_zclip` is the original PixelHDM's variant (docs/original.md §7): no warm-up, EMA
updated with the unclipped norm before the test, std floored at 0.01, limit mean + thr std, then capped by
max_grad_norm and applied as torch's clip_grad_norm_.

The state (`ZClipState`) is float32/int32 scalars, checkpointed with the optimizer state; it also carries the
last step's statistics for logging. Non-finite gradients poison the statistics: the train step must skip
such steps (keep the old optimizer state).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

CLIP_EPS = 1e-6  # in the clip coefficient e / (g + CLIP_EPS), as torch and the official code
MODES = ("zscore", "percentile")  # `optim.zclip.mode`
CLIP_OPTIONS = ("adaptive_scaling", "mean")  # `optim.zclip.clip_option` (zscore mode)


class ZClipState(NamedTuple):
  """ZClip statistics; `grad_norm` .. `clipped` describe the last step (for logging)."""
  count: jax.Array  # int32, optimizer steps seen
  mean: jax.Array  # float32, EMA (or warm-up running) mean of the gradient norm
  var: jax.Array  # float32, EMA (or warm-up running population) variance of the gradient norm
  grad_norm: jax.Array  # float32, norm before clipping
  clipped_norm: jax.Array  # float32, norm after clipping (ZClip and the max-norm cap)
  z: jax.Array  # float32, z-score of the last norm (0 during warm-up)
  clipped: jax.Array  # int32, 1 when the last step was a spike (the z-score rule lowered the limit)
  num_clipped: jax.Array  # int32, spikes so far


def _init(params) -> ZClipState:
  del params
  zero = jnp.zeros((), jnp.float32)
  izero = jnp.zeros((), jnp.int32)
  return ZClipState(izero, zero, zero, zero, zero, zero, izero, izero)


def _scale(updates, scale: jax.Array):
  return jax.tree.map(lambda u: (u * scale.astype(u.dtype)).astype(u.dtype), updates)


def _scale_to(limit, g: jax.Array) -> jax.Array:
  """The factor that brings a gradient of norm g down to `limit` (1 when it is below)."""
  return jnp.minimum(1.0, limit / (g + CLIP_EPS))


def _capped(limit: jax.Array, max_grad_norm: float | None) -> jax.Array:
  return limit if max_grad_norm is None else jnp.minimum(limit, max_grad_norm)


def zclip(alpha: float = 0.97, z_threshold: float = 2.5, warmup_steps: int = 25,
          max_grad_norm: float | None = None, mode: str = "zscore", clip_option: str = "adaptive_scaling",
          clip_factor: float = 1.0, skip_update_on_spike: bool = False,
          eps: float = 1e-6) -> optax.GradientTransformation:
  """The published ZClip (defaults as the official code, except max_grad_norm None: pure ZClip)."""
  if mode not in MODES or clip_option not in CLIP_OPTIONS:
    raise ValueError(f"ZClip mode={mode!r}, clip_option={clip_option!r}: choose from {MODES} and {CLIP_OPTIONS}")
  if warmup_steps < 1:
    raise ValueError(f"ZClip warmup_steps must be >= 1 (the statistics start from its norms), got {warmup_steps}")

  def update(updates, state: ZClipState, params=None):
    del params
    g = optax.tree.norm(updates)
    in_warmup = state.count < warmup_steps

    # Warm-up: Welford running mean and population variance of the norms; only the max-norm cap applies.
    n = (state.count + 1).astype(jnp.float32)
    delta = g - state.mean
    warm_mean = state.mean + delta / n
    warm_var = state.var + (delta * (g - warm_mean) - state.var) / n
    warm_scale = 1.0 if max_grad_norm is None else _scale_to(max_grad_norm, g)

    # After warm-up: z-score test, clip value, EMA update with the clipped value.
    std = jnp.sqrt(state.var)
    z = (g - state.mean) / (std + eps)
    if mode == "percentile":
      clip_value = state.mean + z_threshold * std
      spike = g > clip_value
    else:
      spike = z > z_threshold
      if clip_option == "adaptive_scaling":
        eta = jnp.maximum(z / z_threshold, 1.0)  # z / z_thr, > 1 on spikes; the floor keeps other lanes finite
        clip_value = (state.mean + z_threshold * std / eta) * clip_factor
      else:
        clip_value = state.mean
    value = jnp.where(spike, clip_value, g)
    limit = _capped(value, max_grad_norm)
    active_scale = jnp.where(g > limit, limit / (g + CLIP_EPS), 1.0)
    ema_mean = alpha * state.mean + (1.0 - alpha) * value
    ema_var = alpha * state.var + (1.0 - alpha) * jnp.square(value - ema_mean)
    if skip_update_on_spike:
      ema_mean = jnp.where(spike, state.mean, ema_mean)
      ema_var = jnp.where(spike, state.var, ema_var)

    spike = spike & ~in_warmup
    scale = jnp.where(in_warmup, warm_scale, active_scale)
    new_state = ZClipState(
        count=state.count + 1,
        mean=jnp.where(in_warmup, warm_mean, ema_mean),
        var=jnp.where(in_warmup, warm_var, ema_var),
        grad_norm=g,
        clipped_norm=g * scale,
        z=jnp.where(in_warmup, 0.0, z),
        clipped=spike.astype(jnp.int32),
        num_clipped=state.num_clipped + spike.astype(jnp.int32))
    return _scale(updates, scale), new_state

  return optax.GradientTransformation(_init, update)


def pixelhdm_zclip(threshold: float = 2.5, ema_decay: float = 0.99,
                   max_grad_norm: float | None = 1.0) -> optax.GradientTransformation:
  """The original PixelHDM's clipping (`gradient_clip.py` with `clip_grad_norm_with_zclip`)."""
  def update(updates, state: ZClipState, params=None):
    del params
    g = optax.tree.norm(updates)
    first = state.count == 0
    delta = g - state.mean
    mean = ema_decay * state.mean + (1.0 - ema_decay) * g
    delta2 = g - mean
    var = jnp.maximum(0.0, ema_decay * state.var + (1.0 - ema_decay) * delta * delta2)
    std = jnp.maximum(jnp.sqrt(var + 1e-8), 0.01)
    z = delta2 / std
    spike = (z > threshold) & ~first
    limit = _capped(jnp.where(spike, mean + threshold * std, g), max_grad_norm)
    scale = _scale_to(limit, g)
    new_state = ZClipState(
        count=state.count + 1,
        mean=jnp.where(first, g, mean),
        var=jnp.where(first, 0.0, var),
        grad_norm=g,
        clipped_norm=g * scale,
        z=jnp.where(first, 0.0, z),
        clipped=spike.astype(jnp.int32),
        num_clipped=state.num_clipped + spike.astype(jnp.int32))
    return _scale(updates, scale), new_state

  return optax.GradientTransformation(_init, update)


def max_norm_clip(max_grad_norm: float | None) -> optax.GradientTransformation:
  """Plain global-norm capping (ZClip off) with the same state, so logging and checkpoints do not change."""
  def update(updates, state: ZClipState, params=None):
    del params
    g = optax.tree.norm(updates)
    if max_grad_norm is None:
      scale = jnp.ones((), jnp.float32)
    else:
      scale = _scale_to(max_grad_norm, g)  # torch clip_grad_norm_
    return _scale(updates, scale), state._replace(count=state.count + 1, grad_norm=g, clipped_norm=g * scale)

  return optax.GradientTransformation(_init, update)
