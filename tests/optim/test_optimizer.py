"""The optimizer chain: decay mask on the real params, AdamW semantics, accumulation, metrics, EMA, config checks."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import base
from pixelhdm_jax import config as config_lib
from pixelhdm_jax.errors import ConfigError
from pixelhdm_jax.models.pixelhdm import PixelHDM
from pixelhdm_jax.models.repa_projector import RepaProjector
from pixelhdm_jax.optim import ema, optimizer
from pixelhdm_jax.optim.zclip import ZClipState
from tests.helpers import global_norm


def _config(**optim):
  config = base.get_config("tiny")
  config.optim.update({"schedule": "constant", "warmup_steps": 0, **optim})  # the lr of optax.adamw(learning_rate)
  return config_lib.validate(config)


def _tiny_params():
  """Abstract (boxed) params of the tiny PixelHDM and of an iREPA projector."""
  config = base.get_config("tiny")
  model = PixelHDM.from_config(config.model)
  args = (jnp.zeros((1, 32, 48, 3)), jnp.zeros((1,)), jnp.zeros((1, 4, 64)), jnp.ones((1, 4), bool),
          jnp.zeros((1, 64)))
  model_params = jax.eval_shape(model.init, jax.random.key(0), *args)["params"]
  projector_params = jax.eval_shape(lambda: RepaProjector(32).init(jax.random.key(0), jnp.zeros((1, 6, 64)), (2, 3)))
  return {"model": model_params, "repa_projector": projector_params["params"]}


def _names(tree):
  leaves = jax.tree_util.tree_leaves_with_path(tree)
  return {jax.tree_util.keystr(path).replace(".value", ""): leaf for path, leaf in leaves}


def test_decay_mask_on_the_tiny_model_params():
  boxed = _tiny_params()
  mask = _names(optimizer.weight_decay_mask(boxed))
  unboxed_mask = _names(optimizer.weight_decay_mask(nn.meta.unbox(boxed)))
  assert mask == unboxed_mask
  decayed = {name for name, decays in mask.items() if decays}
  assert decayed == {name for name in mask if name.endswith("['kernel']")}
  assert "['model']['patch_blocks']['attention']['q_proj']['kernel']" in decayed
  assert "['repa_projector']['conv']['kernel']" in decayed
  for kept in ("['model']['patch_blocks']['pre_attn_norm']['scale']",  # scanned norm: 2-D, still no decay
               "['model']['pixel_blocks']['adaln']['param_gen']['bias']", "['model']['output_norm']['scale']",
               "['repa_projector']['conv']['bias']"):
    assert not mask[kept], kept
  assert len(decayed) == 28 and len(mask) - len(decayed) == 19  # 27 + 1 kernels; 18 + 1 norms and biases
  assert not optimizer.weight_decay_mask({"gain": jnp.ones(()), "kernel": jnp.ones(3)})["kernel"]


def _toy_params(boxed=False):
  rng = np.random.default_rng(0)
  params = {"dense": {"kernel": rng.normal(size=(4, 3)), "bias": rng.normal(size=3)},
            "norm": {"scale": rng.normal(size=(2, 4))}, "gain": rng.normal(size=())}
  params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), params)
  if boxed:
    params = jax.tree.map(lambda x: nn.LogicallyPartitioned(x, (None,) * x.ndim), params)
  return params


def _toy_grads(seed):
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), jnp.float32), _toy_params())


def test_weight_decay_only_on_kernels():
  config = _config(weight_decay=0.1, learning_rate=0.5)
  tx = optimizer.make_optimizer(config)
  params = _toy_params()
  zeros = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zeros, tx.init(params), params)
  new = optax.apply_updates(params, updates)
  np.testing.assert_allclose(new["dense"]["kernel"], params["dense"]["kernel"] * (1 - 0.5 * 0.1), rtol=1e-6)
  for path in (("dense", "bias"), ("norm", "scale"), ("gain",)):
    old, now = params, new
    for key in path:
      old, now = old[key], now[key]
    np.testing.assert_array_equal(now, old)


def test_matches_optax_adamw_and_boxed_params_update_alike():
  config = _config(zclip={"variant": "off"})
  tx = optimizer.make_optimizer(config)
  reference = optax.adamw(config.optim.learning_rate, 0.9, 0.999, 1e-8, weight_decay=0.01,
                          mask=optimizer.weight_decay_mask)
  params, boxed = _toy_params(), _toy_params(boxed=True)
  state, boxed_state, reference_state = tx.init(params), tx.init(boxed), reference.init(params)
  for step in range(3):
    grads = _toy_grads(step)
    updates, state = tx.update(grads, state, params)
    boxed_grads = jax.tree.map(lambda b, g: b.replace_boxed(g), boxed, grads,
                               is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
    boxed_updates, boxed_state = tx.update(boxed_grads, boxed_state, boxed)
    reference_updates, reference_state = reference.update(grads, reference_state, params)
    params, boxed = optax.apply_updates(params, updates), optax.apply_updates(boxed, boxed_updates)
    # rtol: optax.adamw rounds its float bias correction 1 - 0.999^t differently (~7e-6 at t = 1).
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5), updates, reference_updates)
  jax.tree.map(np.testing.assert_array_equal, nn.meta.unbox(boxed), params)
  assert isinstance(boxed_state[1].inner_state[0].mu["dense"]["kernel"], nn.LogicallyPartitioned)


def test_accumulation_equals_one_step_on_the_mean_gradient():
  k = 3
  accumulating = optimizer.make_optimizer(_config(grad_accum_steps=k, zclip={"warmup_steps": 1}))
  single = optimizer.make_optimizer(_config(zclip={"warmup_steps": 1}))
  params_a = params_s = _toy_params()
  state_a, state_s = accumulating.init(params_a), single.init(params_s)
  update_a = jax.jit(accumulating.update)
  for step in range(3):
    micro = [_toy_grads(10 * step + i) for i in range(k)]
    for i, grads in enumerate(micro):
      updates, state_a = update_a(grads, state_a, params_a)
      params_a = optax.apply_updates(params_a, updates)
      assert bool(optimizer.step_applied(state_a)) == (i == k - 1)
    mean = jax.tree.map(lambda *g: sum(g) / k, *micro)
    updates, state_s = single.update(mean, state_s, params_s)
    assert bool(optimizer.step_applied(state_s))
    params_s = optax.apply_updates(params_s, updates)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-6, atol=1e-7), params_a, params_s)
  assert int(state_a.gradient_step) == 3  # optax counts the optimizer steps of an accumulation
  np.testing.assert_allclose(optimizer.optimizer_metrics(state_a)["grad_norm"],
                             global_norm(mean), rtol=1e-5)


def test_state_is_float32_and_metrics_are_readable_in_jit():
  config = _config(schedule="stepped_cosine_restart", restart_cycle_steps=4, zclip={"variant": "pixelhdm"},
                   max_grad_norm=1.0)
  tx = optimizer.make_optimizer(config)
  params = _toy_params()
  state = tx.init(params)
  for leaf in jax.tree.leaves(state):
    assert leaf.dtype in (jnp.float32, jnp.int32), leaf.dtype

  @jax.jit
  def step(state, grads):
    _, state = tx.update(grads, state, params)
    return state, optimizer.optimizer_metrics(state)

  for i in range(2):
    state, metrics = step(state, _toy_grads(i))
  assert set(metrics) == {"lr", "grad_norm", "grad_norm_clipped", "zclip_mean", "zclip_std", "zclip_z",
                          "zclip_clipped", "zclip_num_clipped"}
  peak = config.optim.learning_rate
  expected = 5e-5 + (peak - 5e-5) * 0.5 * (1 + np.cos(np.pi * 1 / 4))  # lr of step 1 (the last applied)
  np.testing.assert_allclose(metrics["lr"], expected, rtol=1e-6)
  np.testing.assert_allclose(metrics["grad_norm"], global_norm(_toy_grads(1)), rtol=1e-6)
  np.testing.assert_allclose(metrics["grad_norm_clipped"], 1.0, rtol=1e-5)  # the max-norm cap
  assert isinstance(jax.tree.leaves(state, is_leaf=lambda x: isinstance(x, ZClipState))[0], ZClipState)


def test_ema_formula_copy_and_jit():
  params = _toy_params()
  shadow = ema.init_ema(params)
  assert shadow["dense"]["kernel"].unsafe_buffer_pointer() != params["dense"]["kernel"].unsafe_buffer_pointer()
  new_params = jax.tree.map(lambda p: p + 1.0, params)
  updated = jax.jit(ema.update_ema)(shadow, new_params, 0.999)
  jax.tree.map(lambda e, p, n: np.testing.assert_allclose(e, 0.999 * p + 0.001 * n, rtol=1e-6),
               updated, params, new_params)
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(updated))


@pytest.mark.parametrize("field,value,message", [
    ("ema_decay", 1.0, r"optim.ema_decay=1.0 must be in \[0, 1\)"),
    ("max_grad_norm", -1.0, "optim.max_grad_norm=-1.0 must be positive"),
    ("grad_accum_steps", 0, "optim.grad_accum_steps must be a positive integer"),
    ("b2", 1.0, r"must be in \[0, 1\)"),
    ("learning_rate", 0.0, "optim.learning_rate must be positive"),
    ("zclip.variant", "adaptive", "optim.zclip.variant='adaptive' is unknown"),
    ("zclip.alpha", 1.0, r"optim.zclip.alpha=1.0 must be in \(0, 1\)"),
    ("zclip.warmup_steps", 0, "optim.zclip.warmup_steps must be a positive integer"),
    ("zclip.mode", "fixed", "optim.zclip.mode='fixed' is unknown"),
    ("zclip.clip_option", "max", "optim.zclip.clip_option='max' is unknown"),
])
def test_optim_config_errors(field, value, message):
  config = base.get_config("tiny")
  section = config.optim
  *parents, name = field.split(".")
  for parent in parents:
    section = section[parent]
  section[name] = value
  with pytest.raises(ConfigError, match=message):
    config_lib.validate(config)


def test_skipped_micro_step_keeps_accumulation_windows_aligned():
  """A non-finite micro-step learns nothing, but the window still ends after k micro-steps."""
  k = 2
  tx = optimizer.make_optimizer(_config(grad_accum_steps=k, zclip={"warmup_steps": 1}))
  params = _toy_params()
  state = tx.init(params)
  bad = jax.tree.map(lambda g: g * jnp.nan, _toy_grads(0))
  _, proposed = tx.update(bad, state, params)
  kept = optimizer.after_skipped_update(state, proposed)
  assert int(kept.mini_step) == 1  # the window advanced
  for leaf in jax.tree.leaves(kept.acc_grads):
    assert np.all(np.isfinite(leaf)) and not np.any(leaf)  # nothing of the bad gradient was accumulated
  _assert_same(kept.inner_opt_state, state.inner_opt_state)
  updates, state = tx.update(_toy_grads(1), kept, params)
  assert bool(optimizer.step_applied(state))  # the second micro-step closes the window as usual
  assert all(np.all(np.isfinite(u)) for u in jax.tree.leaves(updates))
  single = optimizer.make_optimizer(_config(grad_accum_steps=1, zclip={"warmup_steps": 1}))
  single_state = single.init(params)
  _, proposed = single.update(bad, single_state, params)
  _assert_same(optimizer.after_skipped_update(single_state, proposed), single_state)


def _assert_same(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)
