"""Config validation: one pure function that rejects inconsistent settings with a message naming the fix.

`validate(config)` reads the config only: it never touches devices, files or the network, so launchers
call it before anything expensive. Each section has its own checker below.
"""

from __future__ import annotations

import ml_collections

ATTENTION_KERNELS = ("auto", "xla", "cudnn", "pallas_gpu", "splash")
REMAT_POLICIES = ("none", "full", "dots", "dots_no_batch", "save_attention")
COMPUTE_DTYPES = ("auto", "bfloat16", "float32")


class ConfigError(ValueError):
  """An inconsistent or unsupported configuration setting."""


def _require(condition: bool, message: str) -> None:
  if not condition:
    raise ConfigError(message)


def _positive_ints(section: ml_collections.ConfigDict, prefix: str, names: tuple[str, ...]) -> None:
  for name in names:
    value = section[name]
    _require(isinstance(value, int) and value > 0, f"{prefix}.{name} must be a positive integer, got {value!r}")


def _check_model(config: ml_collections.ConfigDict) -> None:
  m = config.model
  _positive_ints(m, "model", ("hidden_dim", "pixel_dim", "patch_size", "patch_layers", "pixel_layers",
                              "num_heads", "num_kv_heads", "bottleneck_dim", "time_embed_dim", "text_dim",
                              "mrope_max_text_len", "mrope_max_height", "mrope_max_width"))
  _require(m.hidden_dim % m.num_heads == 0,
           f"model.hidden_dim={m.hidden_dim} is not divisible by model.num_heads={m.num_heads}: "
           "choose num_heads that divides hidden_dim (head_dim = hidden_dim / num_heads)")
  _require(m.num_heads % m.num_kv_heads == 0,
           f"model.num_heads={m.num_heads} is not divisible by model.num_kv_heads={m.num_kv_heads}: "
           "GQA needs a whole number of query heads per KV head")
  head_dim = m.hidden_dim // m.num_heads
  split = tuple(m.mrope_split)
  _require(len(split) == 3 and sum(split) == head_dim,
           f"model.mrope_split={split} must be three sizes summing to head_dim={head_dim} "
           f"(hidden_dim / num_heads), e.g. ({head_dim // 4}, {head_dim * 3 // 8}, {head_dim * 3 // 8})")
  _require(all(d > 0 and d % 2 == 0 for d in split),
           f"model.mrope_split={split}: every axis needs a positive even size (RoPE rotates pairs)")
  _require(head_dim % 2 == 0, f"head_dim={head_dim} must be even for RoPE: change model.hidden_dim or num_heads")
  _require(m.mlp_ratio > 0, f"model.mlp_ratio must be positive, got {m.mlp_ratio}")
  _require(m.mrope_theta > 0, f"model.mrope_theta must be positive, got {m.mrope_theta}")
  _require(1 <= m.repa_align_layer <= m.patch_layers,
           f"model.repa_align_layer={m.repa_align_layer} must be in [1, model.patch_layers={m.patch_layers}] "
           "(1-based index of the patch block whose output feeds iREPA)")
  _require(m.compute_dtype in COMPUTE_DTYPES,
           f"model.compute_dtype={m.compute_dtype!r} is unknown: choose one of {COMPUTE_DTYPES}")
  _require(m.attention in ATTENTION_KERNELS,
           f"model.attention={m.attention!r} is not an attention kernel: choose one of {ATTENTION_KERNELS}")
  _require(m.remat_policy in REMAT_POLICIES,
           f"model.remat_policy={m.remat_policy!r} is unknown: choose one of {REMAT_POLICIES}")
  _require(config.text.max_length <= m.mrope_max_text_len,
           f"text.max_length={config.text.max_length} exceeds the mRoPE text table "
           f"(model.mrope_max_text_len={m.mrope_max_text_len}): lower text.max_length or raise the table")
  _require(config.text.max_length > 0, f"text.max_length must be positive, got {config.text.max_length}")


def _check_mesh(config: ml_collections.ConfigDict) -> None:
  shape = tuple(config.mesh.shape)
  _require(len(shape) == 3 and all(isinstance(s, int) for s in shape),
           f"mesh.shape={shape} must be three integers (data, fsdp, tensor)")
  _require(sum(s == -1 for s in shape) <= 1 and all(s == -1 or s >= 1 for s in shape),
           f"mesh.shape={shape}: sizes must be >= 1, with at most one -1 (filled with the remaining devices)")
  names = {rule[0] for rule in config.mesh.logical_axis_rules}
  for needed in ("batch", "activation_batch", "embed", "layers"):
    _require(needed in names, f"mesh.logical_axis_rules has no rule for the logical axis {needed!r}")


def validate(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Checks every cross-field constraint; returns the config unchanged or raises `ConfigError`."""
  _check_model(config)
  _check_mesh(config)
  return config
