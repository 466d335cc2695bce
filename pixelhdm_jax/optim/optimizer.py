"""The optimizer: ZClip -> AdamW (decay mask) with the configured schedule, gradient accumulation, metrics.

`make_optimizer(config)` builds, per optimizer step,
  clip (ZClip, the original's variant, or the max-norm cap alone; `zclip.py`)
  -> AdamW (beta 0.9/0.999, eps 1e-8, wd 0.01; float32 moments; lr from `schedules.py`)
and wraps the chain in `optax.MultiSteps` when `grad_accum_steps > 1`, so ZClip sees the mean gradient of the
k micro-steps (call `update` once per micro-batch with that micro-batch's gradient; the params change on
every k-th call).

Params may be plain arrays (recommended in the train state: `nn.meta.unbox` after init) or still wrapped in
`nn.LogicallyPartitioned` boxes: the decay mask and every transformation treat both alike. With boxed params
the Adam moments come out boxed too, which lets `nn.get_partition_spec` shard the optimizer state.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import optax

from pixelhdm_jax.optim import schedules, zclip

DECAYED_LEAF_NAMES = ("kernel",)


def _leaf_name(path) -> str:
  """The parameter's own name: the last key of its path, ignoring a box's `.value`."""
  keys = [k for k in path if not (isinstance(k, jax.tree_util.GetAttrKey) and k.name == "value")]
  last = keys[-1] if keys else None
  for attr in ("key", "name", "idx"):
    if hasattr(last, attr):
      return str(getattr(last, attr))
  return str(last)


def weight_decay_mask(params):
  """True where AdamW decays: Dense/Conv `kernel`s (matrices). No decay on norm `scale`s, `bias`es,
  embeddings or scalar gains (anything not named `kernel`, and any leaf with fewer than 2 dimensions)."""
  return jax.tree_util.tree_map_with_path(
      lambda path, leaf: _leaf_name(path) in DECAYED_LEAF_NAMES and leaf.ndim >= 2, params)


# `optim.zclip.variant` -> the clipping it builds from `config.optim` (each capped by `max_grad_norm` if set):
# zclip (the published algorithm), pixelhdm (the original's variant), off (the max-norm cap alone).
CLIPPINGS = {
    "zclip": lambda o: zclip.zclip(alpha=o.zclip.alpha, z_threshold=o.zclip.z_threshold,
                                   warmup_steps=o.zclip.warmup_steps, max_grad_norm=o.max_grad_norm,
                                   mode=o.zclip.mode, clip_option=o.zclip.clip_option,
                                   clip_factor=o.zclip.clip_factor,
                                   skip_update_on_spike=o.zclip.skip_update_on_spike),
    "pixelhdm": lambda o: zclip.pixelhdm_zclip(threshold=o.zclip.z_threshold, ema_decay=o.zclip.alpha,
                                               max_grad_norm=o.max_grad_norm),
    "off": lambda o: zclip.max_norm_clip(o.max_grad_norm),
}


def clipping(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """The gradient clipping named by `config.optim.zclip.variant` (`CLIPPINGS`)."""
  variant = config.optim.zclip.variant
  if variant not in CLIPPINGS:
    raise ValueError(f"optim.zclip.variant={variant!r} is unknown: choose one of {tuple(CLIPPINGS)}")
  return CLIPPINGS[variant](config.optim)


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """ZClip -> AdamW with the schedule and decay mask of `config.optim`, accumulated over grad_accum_steps."""
  o = config.optim
  adamw = optax.inject_hyperparams(optax.adamw, static_args=("mask", "mu_dtype"))(
      learning_rate=schedules.from_config(config), b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=o.weight_decay,
      mu_dtype=jnp.float32, mask=weight_decay_mask)
  tx = optax.chain(clipping(config), adamw)
  if o.grad_accum_steps > 1:
    tx = optax.MultiSteps(tx, every_k_schedule=o.grad_accum_steps)
  return tx


def _find(tree, cls):
  """The single node of type `cls` (a class or a tuple of classes) in an optimizer state."""
  found = [x for x in jax.tree.leaves(tree, is_leaf=lambda x: isinstance(x, cls)) if isinstance(x, cls)]
  if len(found) != 1:
    raise ValueError(f"expected one {cls} in the optimizer state, found {len(found)}")
  return found[0]


def optimizer_metrics(opt_state) -> dict[str, jax.Array]:
  """Scalars for logging (usable inside jit): lr and the clipping statistics of the last optimizer step."""
  clip = _find(opt_state, zclip.ZClipState)
  hyper = _find(opt_state, (optax.InjectHyperparamsState, optax.InjectStatefulHyperparamsState))
  return {
      "lr": hyper.hyperparams["learning_rate"],
      "grad_norm": clip.grad_norm,
      "grad_norm_clipped": clip.clipped_norm,
      "zclip_mean": clip.mean,
      "zclip_std": jnp.sqrt(clip.var),
      "zclip_z": clip.z,
      "zclip_clipped": clip.clipped,
      "zclip_num_clipped": clip.num_clipped,
  }


def step_applied(opt_state) -> jax.Array:
  """Whether the last `update` changed the params (always, unless it was a non-final accumulation micro-step);
  the train step updates the EMA only then."""
  if isinstance(opt_state, optax.MultiStepsState):
    return (opt_state.mini_step == 0) & (opt_state.gradient_step > 0)
  return jnp.ones((), bool)


def after_skipped_update(old_state, new_state):
  """The optimizer state to keep after a skipped (non-finite) micro-step, instead of `new_state`.

  Nothing of that micro-step is learned (the inner optimizer and ZClip keep their state, its gradient is not
  accumulated), but an accumulation window still advances: windows stay aligned with micro-steps, so every
  optimizer step is `optim.grad_accum_steps` micro-steps. A window closed by a skipped micro-step is dropped.
  """
  if not isinstance(new_state, optax.MultiStepsState):
    return old_state
  closed = new_state.mini_step == 0  # the window ended here: its accumulator was reset, keep the reset
  accumulated = jax.tree.map(lambda new, old: jnp.where(closed, new, old), new_state.acc_grads, old_state.acc_grads)
  return new_state._replace(inner_opt_state=old_state.inner_opt_state, acc_grads=accumulated)
