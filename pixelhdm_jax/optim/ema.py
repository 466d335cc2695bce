"""Exponential moving average of the weights, as pure functions usable inside jit.

After every optimizer step: ema <- decay * ema + (1 - decay) * params, no warm-up or bias correction, kept
in float32 (docs/original.md §7). Sampling uses the EMA weights.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def init_ema(params):
  """A float32 copy of the params (a copy, so params and EMA can both be donated to the train step)."""
  return jax.tree.map(lambda p: jnp.array(p, jnp.float32, copy=True), params)


def update_ema(ema, params, decay: float | jax.Array):
  """decay * ema + (1 - decay) * params, leaf by leaf, in the EMA's dtype."""
  return jax.tree.map(lambda e, p: (decay * e + (1.0 - decay) * p.astype(e.dtype)).astype(e.dtype), ema, params)
