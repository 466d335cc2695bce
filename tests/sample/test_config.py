"""The `config.sample` section: defaults and validation messages."""

import pytest

from configs import base
from pixelhdm_jax import config as config_lib
from pixelhdm_jax.errors import ConfigError
from pixelhdm_jax.sample import guidance, solvers


def test_defaults():
  config = config_lib.validate(base.get_config("tiny"))
  assert (config.sample.solver, config.sample.num_steps, config.sample.guidance_scale) == ("heun", 50, 4.0)
  assert guidance.Guidance.from_config(base.get_config("default").sample) == guidance.Guidance(scale=4.0)
  assert guidance.Guidance.from_config(config.sample) == guidance.Guidance(scale=4.0, interval=(0.0, 0.3))
  assert solvers.shift_for(config.sample, 512, 512) == 1.0  # the original's uniform grid
  config.sample.update(time_shift_mode="resolution")
  assert solvers.shift_for(config.sample, 512, 512) == 2.0 and solvers.shift_for(config.sample, 128, 128) == 0.5
  config.sample.update(time_shift_mode="fixed", time_shift=3.0)
  assert solvers.shift_for(config.sample, 512, 512) == 3.0
  default = base.get_config("default").flow
  assert (default.time_shift_mode, default.time_shift) == ("fixed", 1.0)  # training: no shift, as the original
  assert (config.flow.time_shift_mode, config.flow.time_shift) == ("fixed", 3.0)  # tiny: more noisy times


def test_unknown_training_shift_mode_is_named():
  config = base.get_config("tiny")
  config.flow.time_shift_mode = "dynamic"
  with pytest.raises(ConfigError, match=r"flow.time_shift_mode='dynamic' is unknown: choose one of "
                                        r"\('resolution', 'fixed'\)"):
    config_lib.validate(config)


@pytest.mark.parametrize("field, value, message", [
    ("solver", "dpm_pp", "sample.solver='dpm_pp' is unknown"),
    ("num_steps", 0, "sample.num_steps must be a positive integer"),
    ("time_shift_mode", "dynamic", "sample.time_shift_mode='dynamic' is unknown"),
    ("time_shift", 0.0, "sample.time_shift must be positive"),
    ("guidance_scale", -1.0, "sample.guidance_scale=-1.0"),
    ("guidance_rescale", 1.5, r"sample.guidance_rescale=1.5 must be in \[0, 1\]"),
    ("guidance_interval", (0.6, 0.2), r"sample.guidance_interval=\(0.6, 0.2\) must be"),
    ("guidance_interval", (0.0, 1.5), r"0 <= lo < hi <= 1"),
    ("guidance_schedule", "exp", "sample.guidance_schedule='exp' is unknown"),
])
def test_rejects_bad_settings(field, value, message):
  config = base.get_config("tiny")
  config.sample[field] = value
  with pytest.raises(ConfigError, match=message):
    config_lib.validate(config)
