"""The pure train step: sharded equals unsharded, non-finite steps change nothing, REPA trains the projector."""

import contextlib
import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pixelhdm_jax import parallel
from pixelhdm_jax.data.pipeline import build_train_loader
from pixelhdm_jax.train.setup import build_trainer, log_param_sharding
from tests.helpers import tiny_run_config


@contextlib.contextmanager
def _fresh_run(mesh_shape, devices, grad_accum_steps=1, flow=None):
  """(trainer, data iterator, initial state, rng) of the tiny run on a mesh over `devices` (`flow`: overrides)."""
  config = tiny_run_config()
  config.flow.update(flow or {})
  config.mesh.shape = mesh_shape
  config.optim.grad_accum_steps = grad_accum_steps
  mesh = parallel.create_mesh(config.mesh, devices)
  rules = parallel.logical_rules(config.mesh)
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    trainer = build_trainer(config, mesh, rules)
    init_rng, rng = jax.random.split(jax.random.key(config.seed))
    yield trainer, build_train_loader(config, trainer.text_encoder.tokenizer), trainer.new_state(init_rng), rng


def _run_steps(mesh_shape, devices, num_steps=2):
  """(initial params, final params and EMA, metrics) as numpy after `num_steps` steps."""
  with _fresh_run(mesh_shape, devices) as (trainer, loader, state, rng):
    initial = jax.device_get(state.params)
    for _ in range(num_steps):
      state, metrics = trainer.step_fn(repa=True)(state, trainer.frozen, trainer.global_batch(next(loader)), rng)
    return initial, jax.device_get((state.params, state.ema)), jax.device_get(metrics)


@pytest.fixture(scope="module")
def unsharded():
  return _run_steps((1, 1, 1), jax.devices()[:1])


def test_sharded_step_equals_unsharded(unsharded):
  _, (params, ema), metrics = _run_steps((2, 2, 2), jax.devices())
  _, (ref_params, ref_ema), ref_metrics = unsharded
  np.testing.assert_allclose(metrics["loss"], ref_metrics["loss"], rtol=1e-5)
  # Adam's first steps move every weight by ~lr = 1e-3 whatever its gradient's size, so float32 reduction
  # order (sharded sums) shows up at ~1e-5 on weights whose gradients are near zero.
  for a, b in zip(jax.tree.leaves((params, ema)), jax.tree.leaves((ref_params, ref_ema))):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=3e-5)


def test_repa_projector_is_trained(unsharded):
  initial, (params, _), metrics = unsharded
  assert metrics["loss_repa"] > 0
  moved = jax.tree.map(lambda a, b: not np.array_equal(a, b), params["repa_projector"], initial["repa_projector"])
  assert all(jax.tree.leaves(moved)), "the iREPA projector must be optimised (the original never trained it)"


def test_frozen_weights_are_an_argument_not_state():
  """The encoder weights stay valid across steps (not donated) and are no part of the state or its checkpoint."""
  with _fresh_run((1, 8, 1), jax.devices()) as (trainer, loader, state, rng):
    assert set(trainer.frozen) == {"text", "dino"}
    assert not any("encoder" in field.name for field in dataclasses.fields(state))
    frozen_before = jax.device_get(trainer.frozen)
    for _ in range(2):
      state, _ = trainer.step_fn(repa=True)(state, trainer.frozen, trainer.global_batch(next(loader)), rng)
    assert not any(leaf.is_deleted() for leaf in jax.tree.leaves(trainer.frozen))
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(trainer.frozen), frozen_before)
    saved_shapes = {leaf.shape for leaf in jax.tree.leaves((state.checkpointed(), state.params, state.ema))}
    assert trainer.frozen["text"]["embed_tokens"]["embedding"].shape not in saved_shapes  # (264, 64): Qwen3's


@pytest.mark.parametrize("shape, devices, split", [((1, 8, 1), 8, True), ((8, 1, 1), 8, False), ((1, 1, 1), 1, False)])
def test_start_up_reports_the_sharded_share_of_the_parameters(caplog, shape, devices, split):
  """Split over fsdp, the tiny network leaves ~4% of its bytes whole on every device (e.g. the patch embedding,
  whose axes no rule maps): logged, and warned about with the largest names. Pure data parallelism and one device
  replicate everything on purpose: logged, no warning."""
  config = tiny_run_config()
  config.mesh.shape = shape
  mesh = parallel.create_mesh(config.mesh, jax.devices()[:devices])
  rules = parallel.logical_rules(config.mesh)
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules), caplog.at_level("INFO"):
    share = log_param_sharding(build_trainer(config, mesh, rules, with_encoder_params=False))
  assert (0.9 < share < 0.99) if split else share == 0.0
  logged = f"{100 * share:.1f}% of their bytes are split over the mesh" if devices > 1 else "parameters: on one device"
  assert logged in caplog.text
  assert ("whole on each of the 8 fsdp x tensor devices (largest: ['model']['patch_embed']" in caplog.text) == split


def test_nonfinite_step_changes_nothing():
  with _fresh_run((1, 1, 1), jax.devices()[:1]) as (trainer, loader, state, rng):
    model = state.params["model"]
    poisoned = {**model, "output_proj": {**model["output_proj"],
                                         "bias": model["output_proj"]["bias"].at[0].set(jnp.nan)}}
    state = state.replace(params={**state.params, "model": poisoned})
    before = jax.device_get((state.params, state.opt_state, state.ema))
    for expected in (1, 2):
      state, metrics = trainer.step_fn(repa=True)(state, trainer.frozen, trainer.global_batch(next(loader)), rng)
      assert not metrics["finite"] and int(metrics["nonfinite"]) == expected
    after = jax.device_get((state.params, state.opt_state, state.ema))
    assert int(state.step) == 2 and int(state.nonfinite_total) == 2
  for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after)):
    np.testing.assert_array_equal(a, b)


def test_ema_follows_optimizer_steps_only():
  """With 2 micro-steps per optimizer step the EMA moves once, after the second, by the EMA formula."""
  with _fresh_run((1, 1, 1), jax.devices()[:1], grad_accum_steps=2) as (trainer, loader, state, rng):
    decay = trainer.config.optim.ema_decay
    ema0 = jax.device_get(state.ema)
    state, _ = trainer.step_fn(repa=True)(state, trainer.frozen, trainer.global_batch(next(loader)), rng)
    params1, ema1 = jax.device_get((state.params["model"], state.ema))
    state, _ = trainer.step_fn(repa=True)(state, trainer.frozen, trainer.global_batch(next(loader)), rng)
    params2, ema2 = jax.device_get((state.params["model"], state.ema))
  for p0, p1 in zip(jax.tree.leaves(params1), jax.tree.leaves(ema0)):
    np.testing.assert_array_equal(p0, p1)  # a micro-step changes neither the params nor the EMA
  for e0, e1 in zip(jax.tree.leaves(ema0), jax.tree.leaves(ema1)):
    np.testing.assert_array_equal(e0, e1)
  moved = False
  for e0, p, e2 in zip(jax.tree.leaves(ema0), jax.tree.leaves(params2), jax.tree.leaves(ema2)):
    np.testing.assert_allclose(e2, decay * e0 + (1 - decay) * p, rtol=1e-6, atol=1e-7)
    moved |= not np.array_equal(e0, e2)
  assert moved


def test_resolution_time_shift_trains_at_the_bucket_shift():
  """`flow.time_shift_mode=resolution` draws t with the bucket's sqrt(H W) / 256 (32x32: 0.125): the same step as
  that fixed shift, another than no shift (the default)."""
  losses = {}
  for name, flow in {"resolution": {"time_shift_mode": "resolution"}, "fixed": {"time_shift": 0.125},
                     "default": {}}.items():
    with _fresh_run((1, 1, 1), jax.devices()[:1], flow=flow) as (trainer, loader, state, rng):
      _, metrics = trainer.step_fn(repa=False)(state, trainer.frozen, trainer.global_batch(next(loader)), rng)
      losses[name] = float(metrics["loss_velocity"])
  assert losses["resolution"] == losses["fixed"] != losses["default"]
