"""Classifier-free guidance: formulas on known inputs, rescale, interval, schedules, batched model calls."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pixelhdm_jax.sample import guidance, solvers


def test_cfg_formula_per_sample_scale():
  v_cond, v_uncond = jnp.full((2, 3), 2.0), jnp.ones((2, 3))
  np.testing.assert_allclose(guidance.cfg(v_cond, v_uncond, 4.0), 5.0)
  np.testing.assert_allclose(guidance.cfg(v_cond, v_uncond, jnp.array([1.0, 0.0])), [[2.0] * 3, [1.0] * 3])


def test_rescale_matches_conditional_std_per_sample():
  v_cond = jnp.array([[1.0, -1.0, 1.0, -1.0], [2.0, 0.0, 2.0, 0.0]])  # stds 1 and 1, means 0 and 1
  v_cfg = guidance.cfg(v_cond, jnp.zeros_like(v_cond), 3.0)
  full = guidance.rescale(v_cfg, v_cond, 1.0)
  np.testing.assert_allclose(full, v_cond, rtol=1e-6)  # std(3 v_c) -> std(v_c): back to v_c here
  np.testing.assert_allclose(guidance.rescale(v_cfg, v_cond, 0.7), 0.7 * v_cond + 0.3 * v_cfg, rtol=1e-6)
  np.testing.assert_allclose(guidance.rescale(v_cfg, v_cond, 0.0), v_cfg)
  zeros = jnp.zeros((1, 4))
  assert bool(jnp.all(jnp.isfinite(guidance.rescale(zeros, zeros, 0.7))))  # std floor


def test_interval_is_half_open_and_falls_back_to_conditional():
  spec = guidance.Guidance(scale=3.0, interval=(0.2, 0.6)).spec
  v_cond, v_uncond = jnp.ones((4, 2)), jnp.zeros((4, 2))
  out = spec.combine(v_cond, v_uncond, jnp.array([0.1, 0.2, 0.5, 0.6]), 3.0)
  np.testing.assert_allclose(out[:, 0], [1.0, 3.0, 3.0, 1.0])


@pytest.mark.parametrize("schedule, expected", [
    ("constant", (4.0, 4.0, 4.0)),
    ("linear", (4.0, 2.5, 1.0)),
    ("cosine", (4.0, 2.5, 1.0)),
    ("quadratic", (4.0, 3.25, 1.0)),
])
def test_schedules_at_noise_middle_clean(schedule, expected):
  np.testing.assert_allclose(guidance.scheduled_scale(jnp.array([0.0, 0.5, 1.0]), 4.0, schedule, 1.0), expected,
                             rtol=1e-6)


def test_unknown_schedule_names_the_choices():
  with pytest.raises(ValueError, match="unknown guidance schedule 'exp'.*cosine"):
    guidance.Guidance(schedule="exp")
  with pytest.raises(ValueError, match="unknown guidance schedule 'exp'"):
    guidance.GuidanceSpec(schedule="exp")


def _model(calls):
  """A toy network: v = context["scale"] z + t + context["bias"], recording each call's batch."""
  def model_fn(z, t, context):
    calls.append(z.shape[0])
    assert t.shape == z.shape[:1]
    return context["scale"][:, None] * z + t[:, None] + context["bias"]
  return model_fn


COND = {"scale": jnp.array([1.0, 2.0]), "bias": jnp.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])}
UNCOND = {"scale": jnp.array([0.5]), "bias": jnp.zeros((1, 3))}  # batch 1: broadcast (cached "" prompt)


def test_one_batched_call_per_evaluation():
  calls = []
  z, t = jnp.ones((2, 3)), 0.3
  v = guidance.guided_velocity_fn(_model(calls), COND, UNCOND, guidance.GuidanceSpec(), 4.0)(z, t)
  assert calls == [4]
  v_cond = COND["scale"][:, None] * z + t + COND["bias"]
  v_uncond = 0.5 * z + t
  np.testing.assert_allclose(v, v_uncond + 4.0 * (v_cond - v_uncond), rtol=1e-6)


def test_negative_prompt_is_the_unconditional_context():
  calls = []
  negative = {"scale": jnp.array([0.0, 0.0]), "bias": jnp.ones((2, 3))}
  v = guidance.guided_velocity_fn(_model(calls), COND, negative, guidance.GuidanceSpec(), 2.0)(jnp.ones((2, 3)), 0.0)
  v_cond = COND["scale"][:, None] + COND["bias"]
  np.testing.assert_allclose(v, 2.0 * v_cond - 1.0, rtol=1e-6)


def test_scale_one_is_no_guidance_and_skips_the_unconditional_pass():
  calls = []
  z, t = jnp.ones((2, 3)), jnp.array([0.2, 0.7])
  assert guidance.Guidance(scale=1.0).spec is None
  assert guidance.Guidance(scale=1.0, rescale=0.7, schedule="cosine").spec is None
  assert guidance.Guidance(scale=1.0, schedule="linear", min_scale=2.0).spec is not None  # w = 2 at t = 1
  skipped = guidance.guided_velocity_fn(_model(calls), COND, UNCOND, None)(z, t)
  assert calls == [2]
  np.testing.assert_allclose(skipped, _model([])(z, t, COND))
  for spec in (guidance.GuidanceSpec(), guidance.GuidanceSpec(rescale=0.7, schedule="cosine")):  # both passes, w = 1
    np.testing.assert_allclose(guidance.guided_velocity_fn(_model([]), COND, UNCOND, spec, jnp.float32(1.0))(z, t),
                               skipped, rtol=1e-6)


def test_guided_sampling_is_deterministic_under_jit():
  z = jax.random.normal(jax.random.key(0), (2, 3))
  spec = guidance.Guidance(scale=3.0, rescale=0.7, interval=(0.1, 1.0), schedule="linear").spec

  @jax.jit
  def run(z, scale):
    velocity_fn = guidance.guided_velocity_fn(_model([]), COND, UNCOND, spec, scale)
    return solvers.sample(velocity_fn, z, solver="dpmpp_2m", num_steps=6)

  first = run(z, 3.0)
  np.testing.assert_array_equal(first, run(z, 3.0))
  assert not np.allclose(first, run(z, 1.0))
