"""Maps an original PyTorch PixelHDM `state_dict` onto our Flax parameters, and back.

Names follow the original (`tests/fixtures/original_tiny/params.json` lists them): Linear weights are
(out, in) and become Flax kernels (in, out); per-block tensors `patch_blocks.{i}.*` are stacked along a
leading `layers` axis when the network scans its blocks. The original registers every attention projection
twice (e.g. `attention.q_proj.weight` is an alias of `attention.qkv_proj.q_proj.weight`); aliases are
accepted, must agree, and are dropped with a note, like the frozen encoders' weights. Anything unknown,
missing or mis-shaped is an error that names the tensor. `export_state_dict` is the inverse (canonical
names only), built from the same tables.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

import flax
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
# Keys of the original's checkpoints that are not part of the network, with what they hold.
IGNORED_PREFIXES = {
    "_dino_encoder.": "the frozen DINOv3 encoder",
    "dino_encoder.": "the frozen DINOv3 encoder",
    "_dino_projector.": "the original's unused (never trained) DINO MLP projector",
    "_text_encoder.": "the frozen Qwen3 text encoder",
    "text_encoder.": "the frozen Qwen3 text encoder",
}

_BLOCK_KEY = re.compile(r"^(patch_blocks|pixel_blocks)\.(\d+)\.(.+)$")
_UNROLLED_BLOCK = re.compile(r"^(patch_blocks|pixel_blocks)_(\d+)$")
_TOP_LEVEL_NAMES = {path: name for name, path in _TOP_LEVEL.items()}
_BLOCK_NAMES = {stack: {path: suffix for suffix, path in table.items()}
                for stack, table in (("patch_blocks", _PATCH_BLOCK), ("pixel_blocks", _PIXEL_BLOCK))}


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


def original_names(path: tuple[str, ...], shape: tuple[int, ...]) -> list[tuple[str, int | None]]:
  """The original's tensors that make up our parameter `path` of `shape`: (name, index on the stacked
  `layers` axis, or None). KeyError if the original has no counterpart (e.g. our `text_proj`)."""
  if path in _TOP_LEVEL_NAMES:
    return [(_TOP_LEVEL_NAMES[path], None)]
  unrolled = _UNROLLED_BLOCK.match(path[0])
  stack = unrolled.group(1) if unrolled else path[0]
  suffix = _BLOCK_NAMES.get(stack, {}).get(path[1:])
  if suffix is None:
    raise KeyError("/".join(path))
  if unrolled:
    return [(f"{stack}.{unrolled.group(2)}.{suffix}", None)]
  return [(f"{stack}.{i}.{suffix}", i) for i in range(shape[0])]


def _to_numpy(value: Any) -> np.ndarray:
  if hasattr(value, "detach"):  # a torch tensor; torch stays an optional dependency
    value = value.detach().cpu().float().numpy()
  return np.asarray(value, np.float32)


def _original_layout(path: tuple[str, ...], array: np.ndarray) -> np.ndarray:
  """Flax kernels (in, out) <-> PyTorch Linear weights (out, in); everything else unchanged."""
  return array.T if path[-1] == "kernel" else array


def _collect(state_dict: Mapping[str, Any]) -> tuple[dict[str, np.ndarray], dict[str, str], list[str]]:
  """(canonical name -> array, canonical name -> the key it came from, notes on the dropped keys)."""
  tensors, sources, aliases = {}, {}, []
  dropped: dict[str, list[str]] = {}
  for name, value in state_dict.items():
    prefix = next((p for p in IGNORED_PREFIXES if name.startswith(p)), None)
    if prefix is not None:
      dropped.setdefault(prefix, []).append(name)
      continue
    canonical = _canonical(name)
    array = _to_numpy(value)
    if canonical in tensors:
      if not np.array_equal(tensors[canonical], array):
        raise OriginalWeightsError(f"{name} is an alias of {sources[canonical]} but holds different values")
      aliases.append(name if canonical != name else sources[canonical])
      continue
    tensors[canonical], sources[canonical] = array, name
  notes = [f"dropped {len(names)} tensor{'s' if len(names) > 1 else ''} under {prefix}* "
           f"({IGNORED_PREFIXES[prefix]}), e.g. {names[0]}" for prefix, names in dropped.items()]
  if aliases:
    notes.append(f"dropped {len(aliases)} attention alias keys (the original registers each projection twice; "
                 f"the copies are identical), e.g. {aliases[0]}")
  return tensors, sources, notes


def import_state_dict(state_dict: Mapping[str, Any], abstract_params: Mapping[str, Any], *,
                      scan_layers: bool = True) -> tuple[dict, list[str]]:
  """Returns (Flax params shaped like `abstract_params`, notes on the keys that were dropped).

  `abstract_params` is the `params` collection of `jax.eval_shape(model.init, ...)` (boxed or not) of a
  network built with `scan_layers`.
  """
  expected = flax.traverse_util.flatten_dict(flax.core.meta.unbox(dict(abstract_params)))
  if any(p[0] in _BLOCK_NAMES for p in expected) != scan_layers:
    raise ValueError(f"abstract_params {'do not ' if scan_layers else ''}stack the blocks, but scan_layers="
                     f"{scan_layers}")
  tensors, sources, notes = _collect(state_dict)
  layout, ours_only = {}, []  # original name -> (our path, stacked index, shape in the original's layout)
  for path, spec in expected.items():
    try:
      names = original_names(path, spec.shape)
    except KeyError:
      ours_only.append("/".join(path))
      continue
    shape = tuple(spec.shape[1:] if names[0][1] is not None else spec.shape)
    for name, index in names:
      layout[name] = (path, index, shape[::-1] if path[-1] == "kernel" else shape)
  unknown, shape_errors, arrays = [], [], {}
  for name, array in tensors.items():
    if name not in layout:
      unknown.append(sources[name])
      continue
    path, index, shape = layout[name]
    if array.shape != shape:
      shape_errors.append(f"{sources[name]}: {array.shape} in the state dict, the network expects {shape}")
      continue
    arrays.setdefault(path, {})[index] = _original_layout(path, array)
  missing = [name for name in layout if name not in tensors]
  missing += [f"{path} (no counterpart in the original network)" for path in ours_only]
  problems = []
  if unknown:
    problems.append("unknown tensors: " + ", ".join(sorted(unknown)))
  if shape_errors:
    problems.append("shape mismatches: " + "; ".join(sorted(shape_errors)))
  if missing:
    problems.append("missing tensors: " + ", ".join(sorted(missing)))
  if problems:
    raise OriginalWeightsError("the state dict does not fit the network: " + " | ".join(problems))
  params = {path: slot[None] if None in slot else np.stack([slot[i] for i in range(len(slot))])
            for path, slot in arrays.items()}
  return flax.traverse_util.unflatten_dict(params), notes


def export_state_dict(params: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """Our network params (scanned or not) -> the original's state dict: canonical names, Linear weights
  (out, in), float32. Raises OriginalWeightsError naming parameters the original cannot hold."""
  state_dict, ours_only = {}, []
  for path, value in flax.traverse_util.flatten_dict(flax.core.meta.unbox(dict(params))).items():
    array = np.asarray(value, np.float32)
    try:
      names = original_names(path, array.shape)
    except KeyError:
      ours_only.append("/".join(path))
      continue
    for name, index in names:
      state_dict[name] = np.ascontiguousarray(_original_layout(path, array if index is None else array[index]))
  if ours_only:
    raise OriginalWeightsError(
        f"parameters without a counterpart in the original network: {', '.join(sorted(ours_only))} (text_proj "
        "exists when model.text_dim != model.hidden_dim; the original feeds text unprojected)")
  return state_dict
