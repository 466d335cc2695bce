"""The pure train step `(state, frozen, batch, rng) -> (state, metrics)` and its compiled, sharded form.

One step: frozen text encoder (or the cached encodings of `text.cache`) -> DINOv3 features of the clean image (only
while REPA is on; or the batch's cached ones, `dino.cache`) -> logit-normal t and noise from `fold_in(rng, step)` ->
network -> losses (float32) -> gradients -> ZClip -> AdamW -> EMA.
A step whose loss or gradients are not finite changes nothing but the skip counters. REPA on/off is static:
two programs, switched once at `loss.repa_early_stop`. `frozen` holds the encoder weights ({"text": Qwen3 (absent
with the text cache), "dino": DINOv3}), placed once; unlike the state it is not donated, so the same arrays serve
every step.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

from pixelhdm_jax import flow
from pixelhdm_jax.data import teacher_cache
from pixelhdm_jax.data.images import images_to_model_range
from pixelhdm_jax.encoders.qwen3 import TextEncoding
from pixelhdm_jax.encoders.teacher import DinoTeacher
from pixelhdm_jax.encoders.text import TextEncoder
from pixelhdm_jax.losses import training_loss
from pixelhdm_jax.optim.ema import update_ema
from pixelhdm_jax.optim.optimizer import after_skipped_update, optimizer_metrics, step_applied
from pixelhdm_jax.train.state import Networks, TrainState

BATCH_KEYS = ("images", "token_ids", "token_mask")
CACHED_TEXT_KEYS = ("images", "text_hidden", "text_mask", "text_pooled")  # text.cache=True: no Qwen3 in the step
TEACHER_FEATURES = teacher_cache.FEATURES  # cached DINOv3 patch features (B, L, C): the REPA step then runs no DINOv3


def batch_keys(text_cached: bool) -> tuple[str, ...]:
  """The keys of a train batch: tokens for the live text encoder, or cached encodings (`data/text_cache.py`)."""
  return CACHED_TEXT_KEYS if text_cached else BATCH_KEYS


def _all_finite(tree) -> jax.Array:
  return jnp.all(jnp.asarray([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def _select(keep_new: jax.Array, new, old):
  return jax.tree.map(lambda n, o: jnp.where(keep_new, n, o), new, old)


def train_step(state: TrainState, frozen: dict[str, Any], batch: dict[str, jax.Array], rng: jax.Array, *,
               config: ml_collections.ConfigDict, networks: Networks, text_encoder: TextEncoder | None,
               teacher: DinoTeacher | None) -> tuple[TrainState, dict]:
  """One micro-step; `teacher` None means REPA is off, `text_encoder` None that the batch holds cached encodings
  (`CACHED_TEXT_KEYS`); a batch with `TEACHER_FEATURES` brings the REPA targets. Pure: every input is an argument."""
  model, projector, optimizer = networks
  x_clean = images_to_model_range(batch["images"])
  batch_size, height, width, _ = x_clean.shape
  grid = (height // model.patch_size, width // model.patch_size)
  if text_encoder is None:
    text = TextEncoding(batch["text_hidden"], batch["text_mask"], batch["text_pooled"])
  else:
    text = jax.lax.stop_gradient(text_encoder.encode(frozen["text"], batch["token_ids"], batch["token_mask"]))
  target_features = None
  if teacher is not None and TEACHER_FEATURES in batch:
    target_features = batch[TEACHER_FEATURES]
  elif teacher is not None:
    target_features = jax.lax.stop_gradient(teacher.features(frozen["dino"], x_clean))

  time_rng, noise_rng = jax.random.split(jax.random.fold_in(rng, state.step))
  f = config.flow
  shift = flow.shift_for(f.time_shift_mode, f.time_shift, height, width)  # static: one value per bucket shape
  t = flow.sample_time(time_rng, batch_size, p_mean=f.p_mean, p_std=f.p_std, t_eps=f.t_eps, shift=shift)
  noise = jax.random.normal(noise_rng, x_clean.shape, jnp.float32)
  z_t = flow.interpolate(x_clean, noise, t)

  def loss_fn(params):
    out = model.apply({"params": params["model"]}, z_t, t, text.hidden, text.mask, text.pooled)
    projected = None
    if teacher is not None:
      projected = projector.apply({"params": params["repa_projector"]}, out.repa_features, grid)
    terms = training_loss(config.loss, v_pred=out.velocity, x_clean=x_clean, noise=noise, gamma_l2=out.gamma_l2,
                          repa_projected=projected, repa_teacher=target_features)
    return terms.total, terms

  (_, terms), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  finite = _all_finite(terms) & jnp.isfinite(optax.tree.norm(grads))
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  ema = update_ema(state.ema, params["model"], config.optim.ema_decay)
  ema = _select(step_applied(opt_state), ema, state.ema)
  nonfinite = jnp.where(finite, 0, state.nonfinite + 1)
  new_state = TrainState(step=state.step + 1, params=_select(finite, params, state.params),
                         opt_state=_select(finite, opt_state, after_skipped_update(state.opt_state, opt_state)),
                         ema=_select(finite, ema, state.ema),
                         nonfinite=nonfinite.astype(jnp.int32),
                         nonfinite_total=state.nonfinite_total + (~finite).astype(jnp.int32))
  metrics = {"loss": terms.total, "loss_velocity": terms.velocity, "loss_frequency": terms.frequency,
             "loss_repa": terms.repa, "loss_gamma_l2": terms.gamma_l2, "finite": finite,
             "nonfinite": new_state.nonfinite, "nonfinite_total": new_state.nonfinite_total,
             **optimizer_metrics(new_state.opt_state)}
  return new_state, metrics


def jit_train_step(config: ml_collections.ConfigDict, networks: Networks, text_encoder: TextEncoder | None,
                   teacher: DinoTeacher | None, state_shardings: TrainState, frozen_shardings: Any,
                   batch_sharding: Any, rng_sharding: Any):
  """`jax.jit` of the step with explicit shardings and the state (only) donated; `.lower(...)` compiles a
  bucket. `teacher` None is the program without REPA, which leaves `frozen["dino"]` (if any) unread;
  `text_encoder` None the program on cached text encodings. Every batch array is split along its first axis."""
  step = functools.partial(train_step, config=config, networks=networks, text_encoder=text_encoder, teacher=teacher)
  return jax.jit(step, in_shardings=(state_shardings, frozen_shardings, batch_sharding, rng_sharding),
                 out_shardings=(state_shardings, rng_sharding), donate_argnums=0)
