"""Rematerialisation policies chosen by name in the config (`model.remat_policy`)."""

from __future__ import annotations

import jax

# `none` means no remat at all; every other name wraps each block in `nn.remat` with its policy.
POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.dots_saveable,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "save_attention": jax.checkpoint_policies.save_only_these_names("attention_out"),
}


def policy(name: str):
  """The `jax.checkpoint` policy of a config name, or None for `none`."""
  if name not in POLICIES:
    raise ValueError(f"unknown remat policy {name!r}: choose one of {list(POLICIES)}")
  return POLICIES[name]
