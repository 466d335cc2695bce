"""Sample grids for the fixed validation prompts of `config.train.sample_prompts` (written during training)."""

from __future__ import annotations


def write_sample_grid(config, ema_params, text_encoder, workdir, step, writer) -> None:
  """Placeholder until the sampling pipeline lands."""
  del config, ema_params, text_encoder, workdir, step, writer
