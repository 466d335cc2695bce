"""Maps an original PyTorch PixelHDM `state_dict` onto our Flax parameters (and back).

Names follow the original (see `../shared/fixtures/original_micro/params.json`): Linear weights are
(out, in) and become Flax kernels (in, out); per-block tensors `patch_blocks.{i}.*` are stacked along a
leading `layers` axis when the network scans its blocks. The original registers every attention projection
twice (e.g. `attention.q_proj.weight` is an alias of `attention.qkv_proj.q_proj.weight`); aliases are
accepted and must agree. Anything unknown, missing or mis-shaped is an error that names the tensor.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

import flax
import jax
import numpy as np

# Per-block names: original suffix -> path inside our block (last element `kernel` = transposed Linear).
_ATTENTION = {
    "qkv_proj.q_proj.weight": ("q_proj", "kernel"),
    "qkv_proj.k_proj.weight": ("k_proj", "kernel"),
    "qkv_proj.v_proj.weight": ("v_proj", "kernel"),
    "out_proj_layer.out_proj.weight": ("out_proj", "kernel"),
    "q_norm.weight": ("q_norm", "scale"),
    "k_norm.weight": ("k_norm", "scale"),
    "gate.proj.weight": ("gate", "kernel"),
}
_ATTENTION_ALIASES = {
    "q_proj.weight": "qkv_proj.q_proj.weight",
    "k_proj.weight": "qkv_proj.k_proj.weight",
    "v_proj.weight": "qkv_proj.v_proj.weight",
    "out_proj.weight": "out_proj_layer.out_proj.weight",
    "gate_proj.weight": "gate.proj.weight",
}
_MLP = {f"mlp.{n}_proj.weight": ("mlp", f"{n}_proj", "kernel") for n in ("gate", "up", "down")}
_PATCH_BLOCK = {
    **{f"{n}.weight": (n, "scale") for n in ("pre_attn_norm", "post_attn_norm", "pre_mlp_norm", "post_mlp_norm")},
    **{f"attention.{k}": ("attention",) + v for k, v in _ATTENTION.items()},
    **_MLP,
    "adaln.proj.1.weight": ("adaln", "proj", "kernel"),
    "adaln.proj.1.bias": ("adaln", "proj", "bias"),
}
_PIXEL_BLOCK = {
    "adaln.cond_expand.weight": ("adaln", "cond_expand", "kernel"),
    "adaln.param_gen.1.weight": ("adaln", "param_gen", "kernel"),
    "adaln.param_gen.1.bias": ("adaln", "param_gen", "bias"),
    "adaln.norm.weight": ("adaln", "norm", "scale"),
    "compaction.compress.weight": ("compaction", "compress", "kernel"),
    "compaction.norm.weight": ("compaction", "norm", "scale"),
    "compaction.post_norm.weight": ("compaction", "post_norm", "scale"),
    "compaction.expand.weight": ("compaction", "expand", "kernel"),
    **{f"compaction.attention.{k}": ("compaction", "attention") + v for k, v in _ATTENTION.items()},
    **_MLP,
}
_TOP_LEVEL = {
    "patch_embed.proj_down.weight": ("patch_embed", "proj_down", "kernel"),
    "patch_embed.proj_up.weight": ("patch_embed", "proj_up", "kernel"),
    "pixel_embed.proj.weight": ("pixel_embed", "proj", "kernel"),
    "pixel_embed.proj.bias": ("pixel_embed", "proj", "bias"),
    "time_embed.mlp.0.weight": ("time_embed", "fc1", "kernel"),
    "time_embed.mlp.0.bias": ("time_embed", "fc1", "bias"),
    "time_embed.mlp.2.weight": ("time_embed", "fc2", "kernel"),
    "time_embed.mlp.2.bias": ("time_embed", "fc2", "bias"),
    "output_norm.weight": ("output_norm", "scale"),
    "output_proj.proj.weight": ("output_proj", "kernel"),
    "output_proj.proj.bias": ("output_proj", "bias"),
}
# Keys of the original's checkpoints that are not part of the network: frozen encoders and an unused projector.
IGNORED_PREFIXES = ("_dino_encoder.", "_dino_projector.", "_text_encoder.", "text_encoder.", "dino_encoder.")

_BLOCK_KEY = re.compile(r"^(patch_blocks|pixel_blocks)\.(\d+)\.(.+)$")


class OriginalWeightsError(ValueError):
  """The state dict does not fit the network: names the offending tensors."""


def _canonical(name: str) -> str:
  """Resolves the original's attention aliases to the canonical name."""
  for alias, target in _ATTENTION_ALIASES.items():
    for scope in ("attention.", "compaction.attention."):
      marker = "." + scope + alias
      if name.endswith(marker) and _BLOCK_KEY.match(name):
        return name[: -len(alias)] + target
  return name


def _flax_path(name: str, scan_layers: bool) -> tuple[tuple[str, ...], int | None]:
  """(path in our params, layer index if the tensor belongs to a scanned block)."""
  if name in _TOP_LEVEL:
    return _TOP_LEVEL[name], None
  match = _BLOCK_KEY.match(name)
  table = {"patch_blocks": _PATCH_BLOCK, "pixel_blocks": _PIXEL_BLOCK}.get(match.group(1)) if match else None
  if table is None or match.group(3) not in table:
    raise KeyError(name)
  stack, index, suffix = match.group(1), int(match.group(2)), match.group(3)
  if scan_layers:
    return (stack,) + table[suffix], index
  return (f"{stack}_{index}",) + table[suffix], None


def _to_numpy(value: Any) -> np.ndarray:
  if hasattr(value, "detach"):  # a torch tensor; torch stays an optional dependency
    value = value.detach().cpu().float().numpy()
  return np.asarray(value, np.float32)


def import_state_dict(state_dict: Mapping[str, Any], abstract_params: Mapping[str, Any], *,
                      scan_layers: bool = True) -> tuple[dict, list[str]]:
  """Returns (Flax params shaped like `abstract_params`, notes on the keys that were dropped).

  `abstract_params` is the `params` collection of `jax.eval_shape(model.init, ...)` (boxed or not).
  """
  expected = flax.traverse_util.flatten_dict(flax.core.meta.unbox(dict(abstract_params)))
  collected: dict[tuple[str, ...], dict[int | None, np.ndarray]] = {}
  canonical_source: dict[str, str] = {}
  unknown, notes, shape_errors = [], [], []
  for name, value in state_dict.items():
    if name.startswith(IGNORED_PREFIXES):
      notes.append(f"dropped {name} (not part of the PixelHDM network)")
      continue
    canonical = _canonical(name)
    try:
      path, layer = _flax_path(canonical, scan_layers)
    except KeyError:
      unknown.append(name)
      continue
    array = _to_numpy(value)
    if path[-1] == "kernel":
      array = array.T
    slot = collected.setdefault(path, {})
    if layer in slot:
      if not np.array_equal(slot[layer], array):
        raise OriginalWeightsError(f"{name} is an alias of {canonical_source[canonical]} but holds different values")
      continue
    canonical_source[canonical] = name
    slot[layer] = array
  params, mis_shaped = {}, set()
  for path, spec in expected.items():
    if path not in collected:
      continue
    slot = collected.pop(path)
    if None in slot:
      array = slot[None]
    else:
      layers = spec.shape[0]
      missing = sorted(set(range(layers)) - set(slot))
      if missing or len(slot) != layers:
        raise OriginalWeightsError(f"{'/'.join(path)}: layers {missing or sorted(set(slot) - set(range(layers)))} "
                                   f"missing or extra in the state dict (the network has {layers})")
      array = np.stack([slot[i] for i in range(layers)])
    if array.shape != tuple(spec.shape):
      mis_shaped.add(path)
      shape_errors.append(f"{'/'.join(path)}: state dict gives {array.shape}, the network expects {tuple(spec.shape)}")
      continue
    params[path] = array
  missing = ["/".join(p) for p in expected if p not in params and p not in mis_shaped]
  unknown += ["/".join(p) for p in collected]
  problems = []
  if unknown:
    problems.append("unknown tensors: " + ", ".join(sorted(unknown)))
  if shape_errors:
    problems.append("shape mismatches: " + "; ".join(shape_errors))
  if missing:
    problems.append("missing parameters: " + ", ".join(sorted(missing)))
  if problems:
    raise OriginalWeightsError("the state dict does not fit the network: " + " | ".join(problems))
  return flax.traverse_util.unflatten_dict(jax.tree.map(np.asarray, params)), notes
