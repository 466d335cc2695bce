"""A tiny training config that compiles once: one 32x32 bucket, batch 8 over the 8 simulated devices."""

import pytest
from absl import flags

from configs import base


def tiny_run_config(**train_overrides):
  config = base.get_config("tiny")
  config.data.max_resolution = 32  # a single 32x32 bucket: one compiled program
  config.train.update({"log_every": 1, "checkpoint_every": 3, "sample_prompts": (), **train_overrides})
  return config


@pytest.fixture(autouse=True, scope="session")
def _absl_flags():
  flags.FLAGS.mark_as_parsed()
