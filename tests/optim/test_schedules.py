"""Learning-rate schedules against plain-Python transcriptions of the original's formulas (optimizer steps)."""

import math

import jax.numpy as jnp
import numpy as np
import pytest

from configs import base
from pixelhdm_jax import config as config_lib
from pixelhdm_jax.errors import ConfigError
from pixelhdm_jax.optim import schedules


def _warmup(k, peak, warmup):
  return peak * (k + 1) / warmup


def constant_reference(k, peak, warmup):
  return _warmup(k, peak, warmup) if k < warmup else peak


def cosine_reference(k, peak, total, min_lr, warmup):
  """Trainer warm-up, then torch CosineAnnealingLR(T_max = total - warmup, eta_min) held at eta_min after T_max."""
  if k < warmup:
    return _warmup(k, peak, warmup)
  t_max = total - warmup
  t = min(k - warmup, t_max)
  return min_lr + (peak - min_lr) * (1 + math.cos(math.pi * t / t_max)) / 2


class SteppedCosineRestart:
  """The original's SteppedCosineRestartScheduler stepping (docs/original.md §7), T_mult = 1.

  `lr()` after k `step()`s is the lr of optimizer step k. The original also steps once in its constructor, which
  only shifts its warm-up (first lr 2/warmup): the one documented deviation, absent when warmup = 0.
  """

  def __init__(self, t0, base_lr, cycle_min_lr, decay_rate, global_min_lr, warmup):
    self.t0, self.base, self.cycle_min, self.decay = t0, base_lr, cycle_min_lr, decay_rate
    self.global_min, self.warmup = global_min_lr, warmup
    self.t_cur, self.cycle, self.steps = 0, 0, 0

  def lr(self):
    if self.steps < self.warmup:
      return _warmup(self.steps, self.base, self.warmup)
    peak = max(self.global_min, self.base * self.decay ** self.cycle)
    trough = min(max(self.global_min, self.cycle_min * self.decay ** self.cycle), peak)
    return trough + (peak - trough) * 0.5 * (1 + math.cos(math.pi * self.t_cur / self.t0))

  def step(self):
    self.steps += 1
    if self.steps > self.warmup:
      self.t_cur += 1
      if self.t_cur >= self.t0:
        self.cycle, self.t_cur = self.cycle + 1, 0


def _ours(schedule, n):
  return np.asarray(schedule(jnp.arange(n, dtype=jnp.int32)), np.float64)


@pytest.mark.parametrize("warmup", [0, 7])
def test_constant_and_cosine(warmup):
  n = 120
  np.testing.assert_allclose(_ours(schedules.constant(3e-4, warmup), n),
                             [constant_reference(k, 3e-4, warmup) for k in range(n)], rtol=1e-6)
  np.testing.assert_allclose(_ours(schedules.cosine(3e-4, 100, 1e-5, warmup), n),
                             [cosine_reference(k, 3e-4, 100, 1e-5, warmup) for k in range(n)], rtol=1e-5)


@pytest.mark.parametrize("kwargs", [
    dict(t0=10, base_lr=1e-4, cycle_min_lr=5e-5, decay_rate=0.9, global_min_lr=1e-5, warmup=0),  # the YAML
    dict(t0=7, base_lr=2e-4, cycle_min_lr=1.2e-4, decay_rate=0.5, global_min_lr=3e-5, warmup=5),  # floors hit
])
def test_stepped_cosine_restart(kwargs):
  reference = SteppedCosineRestart(**kwargs)
  expected = []
  for _ in range(80):
    expected.append(reference.lr())
    reference.step()
  ours = schedules.stepped_cosine_restart(kwargs["base_lr"], kwargs["t0"], kwargs["cycle_min_lr"],
                                          kwargs["decay_rate"], kwargs["global_min_lr"], kwargs["warmup"])
  np.testing.assert_allclose(_ours(ours, 80), expected, rtol=1e-5)
  if kwargs["warmup"] == 0:
    # Each cycle n runs from base 0.9^n down towards cycle_min 0.9^n; the first lr is base.
    assert expected[0] == kwargs["base_lr"]
    np.testing.assert_allclose(expected[kwargs["t0"]], kwargs["base_lr"] * 0.9)


@pytest.mark.parametrize("name", list(schedules.SCHEDULES))
def test_from_config(name):
  config = base.get_config("tiny")
  config.optim.schedule = name
  config_lib.validate(config)
  lr = _ours(schedules.from_config(config), config.train.num_steps + 5)
  warmup = config.optim.warmup_steps
  np.testing.assert_allclose(lr[warmup - 1], config.optim.learning_rate, rtol=1e-6)
  assert np.all(lr > 0) and np.all(lr <= config.optim.learning_rate * (1 + 1e-6))
  if name == "cosine":
    np.testing.assert_allclose(lr[-1], config.optim.min_lr, rtol=1e-5)


@pytest.mark.parametrize("field,value,message", [
    ("schedule", "linear", "optim.schedule='linear' is unknown"),
    ("warmup_steps", -1, "optim.warmup_steps must be an integer >= 0"),
    ("restart_cycle_min_lr", 1.0, "optim.restart_cycle_min_lr=1.0 must be in"),
    ("restart_decay_rate", 0.0, r"optim.restart_decay_rate=0.0 must be in \(0, 1\]"),
    ("restart_cycle_steps", 0, "optim.restart_cycle_steps must be a positive integer"),
])
def test_schedule_config_errors(field, value, message):
  config = base.get_config("tiny")
  config.optim.schedule = "stepped_cosine_restart"
  config.optim[field] = value
  with pytest.raises(ConfigError, match=message):
    config_lib.validate(config)


def test_cosine_needs_steps_after_warmup():
  config = base.get_config("tiny")
  config.optim.update(schedule="cosine", warmup_steps=config.train.num_steps)
  with pytest.raises(ConfigError, match="leaves no cosine decay"):
    config_lib.validate(config)
