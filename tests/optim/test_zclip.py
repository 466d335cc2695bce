"""ZClip step by step against plain-Python transcriptions of the published algorithm and of the original's variant."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pixelhdm_jax.optim import zclip
from tests.helpers import global_norm


class PublishedZClip:
  """The official `zclip/zclip.py` (bluorion-com/ZClip), transcribed with a list buffer, in float64."""

  def __init__(self, alpha=0.97, z_thresh=2.5, max_grad_norm=None, eps=1e-6, warmup_steps=25, mode="zscore",
               clip_option="adaptive_scaling", clip_factor=1.0, skip_update_on_spike=False):
    self.alpha, self.z_thresh, self.max_grad_norm, self.eps = alpha, z_thresh, max_grad_norm, eps
    self.warmup_steps, self.mode, self.clip_option = warmup_steps, mode, clip_option
    self.clip_factor, self.skip_update_on_spike = clip_factor, skip_update_on_spike
    self.buffer, self.initialized, self.mean, self.var = [], False, None, None

  def _clip_val(self, g):
    std = self.var ** 0.5
    if self.mode == "percentile":
      threshold = self.mean + self.z_thresh * std
      return threshold if g > threshold else None
    z = (g - self.mean) / (std + self.eps)
    if z > self.z_thresh:
      if self.clip_option == "adaptive_scaling":
        return (self.mean + self.z_thresh * std / (z / self.z_thresh)) * self.clip_factor
      return self.mean
    return None

  def step(self, g):
    """Returns (scale applied to the gradients, spike detected)."""
    if not self.initialized:
      self.buffer.append(g)
      if len(self.buffer) >= self.warmup_steps:
        self.mean = sum(self.buffer) / len(self.buffer)
        self.var = sum((x - self.mean) ** 2 for x in self.buffer) / len(self.buffer)
        self.initialized, self.buffer = True, []
      if self.max_grad_norm is None:
        return 1.0, False
      return min(1.0, self.max_grad_norm / (g + 1e-6)), False  # torch clip_grad_norm_
    clip_val = self._clip_val(g)
    effective = clip_val if clip_val is not None else g
    if self.max_grad_norm is not None:
      effective = min(effective, self.max_grad_norm)
    scale = effective / (g + 1e-6) if g > effective else 1.0
    if not (clip_val is not None and self.skip_update_on_spike):
      v = clip_val if clip_val is not None else g
      self.mean = self.alpha * self.mean + (1 - self.alpha) * v
      self.var = self.alpha * self.var + (1 - self.alpha) * (v - self.mean) ** 2
    return scale, clip_val is not None


class OriginalZClip:
  """The original's `ZClip.__call__` + `clip_grad_norm_with_zclip` (docs/original.md §7)."""

  def __init__(self, threshold=2.5, ema_decay=0.99, max_norm=1.0):
    self.threshold, self.d, self.max_norm = threshold, ema_decay, max_norm
    self.mean, self.var = None, None

  def step(self, g):
    spike = False
    if self.mean is None:
      self.mean, self.var = g, 0.0
      adaptive = g
    else:
      delta = g - self.mean
      self.mean = self.d * self.mean + (1 - self.d) * g
      delta2 = g - self.mean
      self.var = max(0.0, self.d * self.var + (1 - self.d) * delta * delta2)
      std = max(math.sqrt(self.var + 1e-8), 0.01)
      spike = delta2 / std > self.threshold
      adaptive = self.mean + self.threshold * std if spike else g
    limit = adaptive if self.max_norm is None else min(self.max_norm, adaptive)
    return min(1.0, limit / (g + 1e-6)), spike


def _norm_stream(seed=0):
  """Warm-up noise around 5, then spikes (x100, x3, x8) among ordinary norms, and a downward dip."""
  rng = np.random.default_rng(seed)
  norms = list(5.0 + 0.5 * rng.standard_normal(40))
  norms[30] = 500.0
  norms[33] = 15.0
  norms[36] = 0.5
  norms += [40.0] + list(5.0 + 0.5 * rng.standard_normal(5))
  return norms


def _grads_with_norm(norm, seed):
  """A two-leaf gradient tree of global norm `norm`."""
  rng = np.random.default_rng(seed)
  tree = {"a": rng.standard_normal((3, 4)), "b": rng.standard_normal(5)}
  total = math.sqrt(sum(np.sum(x ** 2) for x in tree.values()))
  return {k: jnp.asarray(v * norm / total, jnp.float32) for k, v in tree.items()}


def _run(tx, reference, norms):
  state = tx.init(None)
  update = jax.jit(tx.update)
  for step, norm in enumerate(norms):
    grads = _grads_with_norm(norm, step)
    clipped, state = update(grads, state)
    scale, spike = reference.step(norm)
    assert int(state.clipped) == int(spike), (step, norm)
    np.testing.assert_allclose(state.grad_norm, norm, rtol=1e-6)
    np.testing.assert_allclose(state.clipped_norm, norm * scale, rtol=2e-6, err_msg=f"step {step}")
    np.testing.assert_allclose(global_norm(clipped), norm * scale, rtol=2e-6)
    if reference.mean is not None:
      np.testing.assert_allclose(state.mean, reference.mean, rtol=2e-6, err_msg=f"step {step}")
      np.testing.assert_allclose(state.var, reference.var, rtol=2e-4, atol=1e-6, err_msg=f"step {step}")
  return state


@pytest.mark.parametrize("kwargs", [
    {},
    {"max_grad_norm": 8.0},
    {"max_grad_norm": 4.0, "warmup_steps": 12},
    {"clip_option": "mean", "alpha": 0.9, "z_threshold": 2.0},
    {"mode": "percentile"},
    {"clip_factor": 0.7, "skip_update_on_spike": True, "warmup_steps": 10},
])
def test_published_zclip_matches_transcription(kwargs):
  reference_kwargs = {("z_thresh" if k == "z_threshold" else k): v for k, v in kwargs.items()}
  state = _run(zclip.zclip(**kwargs), PublishedZClip(**reference_kwargs), _norm_stream())
  assert int(state.num_clipped) >= 2
  assert int(state.count) == len(_norm_stream())


def test_spike_is_scaled_to_the_reciprocal_rule_and_feeds_the_ema():
  norms = _norm_stream()
  tx = zclip.zclip()
  state = tx.init(None)
  for step, norm in enumerate(norms[:30]):
    _, state = tx.update(_grads_with_norm(norm, step), state)
  mean, std = float(state.mean), math.sqrt(float(state.var))
  _, after = tx.update(_grads_with_norm(500.0, 30), state)
  z = (500.0 - mean) / (std + 1e-6)
  expected = mean + 2.5 ** 2 * std / z
  np.testing.assert_allclose(after.z, z, rtol=1e-5)
  np.testing.assert_allclose(after.clipped_norm, expected * 500.0 / (500.0 + 1e-6), rtol=1e-5)
  np.testing.assert_allclose(after.mean, 0.97 * mean + 0.03 * expected, rtol=1e-6)  # the clipped value
  assert int(after.clipped) == 1


def test_max_grad_norm_caps_warmup_and_dominates_large_norms():
  tx = zclip.zclip(max_grad_norm=1.0, warmup_steps=3)
  state = tx.init(None)
  for step, norm in enumerate([4.0, 5.0, 6.0, 5.0, 4.5]):
    _, state = tx.update(_grads_with_norm(norm, step), state)
    np.testing.assert_allclose(state.clipped_norm, norm / (norm + 1e-6), rtol=1e-6)
    assert int(state.clipped) == 0


@pytest.mark.parametrize("max_grad_norm", [None, 10.0])
def test_constant_stream_never_clips(max_grad_norm):
  tx = zclip.zclip(max_grad_norm=max_grad_norm)
  state = tx.init(None)
  grads = _grads_with_norm(3.7, 0)
  update = jax.jit(tx.update)
  for _ in range(60):
    out, state = update(grads, state)
    assert int(state.clipped) == 0
    for leaf, original in zip(jax.tree.leaves(out), jax.tree.leaves(grads)):
      np.testing.assert_array_equal(leaf, original)
  assert int(state.num_clipped) == 0


def test_constant_stream_never_spikes_in_the_original_variant():
  """The original always rescales by limit / (g + 1e-6), so only the spike flag is exact here."""
  tx = zclip.pixelhdm_zclip(max_grad_norm=None)
  state = tx.init(None)
  for _ in range(60):
    _, state = tx.update(_grads_with_norm(3.7, 0), state)
    assert int(state.clipped) == 0
    np.testing.assert_allclose(state.clipped_norm, 3.7, rtol=1e-6)


@pytest.mark.parametrize("max_norm", [1.0, None])
def test_original_variant_matches_transcription(max_norm):
  state = _run(zclip.pixelhdm_zclip(max_grad_norm=max_norm), OriginalZClip(max_norm=max_norm), _norm_stream(1))
  assert int(state.count) == len(_norm_stream(1))


def test_max_norm_clip_and_state_is_checkpointable_scalars():
  tx = zclip.max_norm_clip(2.0)
  state = tx.init(None)
  _, state = tx.update(_grads_with_norm(8.0, 0), state)
  np.testing.assert_allclose(state.clipped_norm, 8.0 * 2.0 / (8.0 + 1e-6), rtol=1e-6)
  for leaf in jax.tree.leaves(state):
    assert leaf.shape == () and leaf.dtype in (jnp.float32, jnp.int32)
  with pytest.raises(ValueError, match="warmup_steps must be >= 1"):
    zclip.zclip(warmup_steps=0)
