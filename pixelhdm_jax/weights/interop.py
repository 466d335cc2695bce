"""Checkpoint files in and out of PixelHDM-JAX: the original's `.pt`, Orbax inference checkpoints, safetensors.

Import (`launch/convert.py import-original`): an original training checkpoint (a `.pt` dict with `model`,
`ema` {shadow, ...}, `config`, ...; docs/original.md §7), a bare state dict, or an export
of ours (a folder with `model.safetensors` + `config.json`) -> config, params, notes -> an inference
checkpoint (`save_for_inference`). Export (`launch/export.py`): a training workdir or inference checkpoint
-> an inference checkpoint of the EMA (or raw) weights, and/or `model.safetensors` with the original's
parameter names and (out, in) Linear layout plus `config.json` with the original's config fields.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Mapping, Sequence

import jax
import ml_collections
import numpy as np
import safetensors
import safetensors.numpy
from etils import epath

from pixelhdm_jax import storage
from pixelhdm_jax.config import validate
from pixelhdm_jax.encoders.hf_checkpoint import CONFIG_FILE, SAFETENSORS_FILE, SafetensorsCheckpoint
from pixelhdm_jax.models.pixelhdm import PixelHDM, abstract_params
from pixelhdm_jax.weights.inference import load_for_inference, save_for_inference
from pixelhdm_jax.weights.original import export_state_dict, import_state_dict
from pixelhdm_jax.weights.original_config import config_from_original, original_config
from pixelhdm_jax.weights.original_shapes import original_fields_from_shapes

EXPORT_FORMATS = ("orbax", "safetensors")


class ConversionError(ValueError):
  """A checkpoint file cannot be read or written as asked: the message names the file and the fix."""


@dataclasses.dataclass
class OriginalCheckpoint:
  """The network weights of an original checkpoint (or of our safetensors export) as read from disk."""
  state_dict: Mapping[str, Any]
  config: dict[str, Any] | None  # the original's config fields; None for a bare state dict
  step: int
  notes: list[str]


@dataclasses.dataclass
class ImportedCheckpoint:
  """Our config and network params for an original checkpoint, with notes on what was dropped or not mapped."""
  config: ml_collections.ConfigDict
  params: dict
  step: int
  notes: list[str]


def _read_safetensors(path: epath.Path) -> OriginalCheckpoint:
  file = path / SAFETENSORS_FILE if path.is_dir() else path
  if not file.is_file():
    raise ConversionError(f"{file} does not exist: pass a .pt file, a .safetensors file or a folder holding "
                          f"{SAFETENSORS_FILE}")
  with safetensors.safe_open(str(file), framework="np") as f:
    metadata = f.metadata() or {}
  config_file = file.parent / CONFIG_FILE
  config = json.loads(config_file.read_text()) if config_file.is_file() else None
  return OriginalCheckpoint(SafetensorsCheckpoint([file]), config, int(metadata.get("step", 0)),
                            [f"read {file}" + (f" and {config_file}" if config else " (no config.json beside it)")])


def _read_torch(path: epath.Path, use_ema: bool) -> OriginalCheckpoint:
  try:
    import torch
  except ImportError as error:
    raise ConversionError(f"reading {path} needs torch: pip install -e '.[torch]'") from error
  if not path.is_file():
    raise ConversionError(f"{path} does not exist")
  try:
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
  except Exception as error:  # torch raises several types; re-raised with the path
    raise ConversionError(f"{path} cannot be read with torch.load(weights_only=True): {error}") from error
  if not isinstance(checkpoint, Mapping):
    raise ConversionError(f"{path} holds a {type(checkpoint).__name__}, not a checkpoint dict or a state dict")
  if not isinstance(checkpoint.get("model"), Mapping):
    if not all(hasattr(v, "shape") for v in checkpoint.values()):
      raise ConversionError(f"{path} is neither an original training checkpoint (a dict with `model`) nor a state "
                            f"dict of tensors: its keys are {sorted(checkpoint)[:10]}")
    return OriginalCheckpoint(checkpoint, None, 0, [f"{path} is a bare state dict"])
  shadow = checkpoint.get("ema", {}).get("shadow") if isinstance(checkpoint.get("ema"), Mapping) else None
  if use_ema and shadow:
    state_dict, notes = shadow, ["imported the EMA weights (ema.shadow)"]
  else:
    state_dict = checkpoint["model"]
    notes = ["imported the raw weights (model)" if not use_ema else "the checkpoint has no EMA: imported `model`"]
  step = checkpoint.get("state", {}).get("step", 0) if isinstance(checkpoint.get("state"), Mapping) else 0
  return OriginalCheckpoint(state_dict, checkpoint.get("config"), int(step), notes)


def read_original(path: str | os.PathLike, *, use_ema: bool = True) -> OriginalCheckpoint:
  """Reads an original `.pt` (EMA weights if present and `use_ema`) or a safetensors export of ours (local, or
  copied from cloud storage to a temporary folder first)."""
  path = storage.location(path)
  path = storage.local_copy(path) if path.exists() else path  # a missing one is named below
  if path.is_dir() or path.suffix == ".safetensors":
    return _read_safetensors(path)
  return _read_torch(path, use_ema)


def import_original(original: OriginalCheckpoint, base: ml_collections.ConfigDict) -> ImportedCheckpoint:
  """Our config and params for `original`. `base` (a preset) gives every field the original's config does not
  set; a bare state dict's network is read off its shapes. Raises naming unknown, missing or mis-shaped tensors."""
  notes = list(original.notes)
  if original.config is None:
    fields = original_fields_from_shapes(original.state_dict, base)
    config, _ = config_from_original(fields, base)
    notes.append("no config in the checkpoint: its network was read off the tensor shapes (" +
                 ", ".join(f"{k}={v}" for k, v in fields.items() if not k.startswith("mrope")) +
                 f"); model.mrope_split={tuple(base.model.mrope_split)} and model.mrope_theta="
                 f"{base.model.mrope_theta} come from --config, as nothing in the weights shows them")
  else:
    config, config_notes = config_from_original(original.config, base)
    notes += config_notes
  validate(config)
  model = PixelHDM.from_config(config.model)
  params, weight_notes = import_state_dict(original.state_dict, abstract_params(model),
                                           scan_layers=config.model.scan_layers)
  return ImportedCheckpoint(config, params, original.step, notes + weight_notes)


def write_original_safetensors(directory: str | os.PathLike, config: ml_collections.ConfigDict, params: Any,
                               step: int) -> list[epath.Path]:
  """`model.safetensors` (the original's names, (out, in) Linear weights, float32) and `config.json` (the
  original's config fields) in `directory`; returns both paths."""
  if config.model.pixel_adaln != "pre":
    raise ConversionError(f"model.pixel_adaln={config.model.pixel_adaln!r} has no counterpart in the original "
                          "(its pixel blocks pre-modulate): export with --format=orbax")
  directory = storage.location(directory)
  state_dict = export_state_dict(params)
  directory.mkdir(parents=True, exist_ok=True)
  weights, config_file = directory / SAFETENSORS_FILE, directory / CONFIG_FILE
  weights.write_bytes(safetensors.numpy.save(state_dict, metadata={"format": "pt", "step": str(step)}))
  config_file.write_text(json.dumps(original_config(config), indent=2) + "\n")
  return [weights, config_file]


def export(source: str | os.PathLike, output: str | os.PathLike, *, formats: Sequence[str] = ("orbax",),
           use_ema: bool = True, step: int | None = None) -> list[epath.Path]:
  """Exports the network weights of `source` (a training workdir or an inference checkpoint; EMA unless
  `use_ema=False`; latest step unless `step`) into `output`: `orbax` writes an inference checkpoint
  (`output/<step>/{model,config}`), `safetensors` writes `model.safetensors` + `config.json`. Returns the
  paths written. Never overwrites: an existing target is an error."""
  unknown = sorted(set(formats) - set(EXPORT_FORMATS))
  if unknown or not formats:
    raise ConversionError(f"export formats {list(formats)}: choose from {EXPORT_FORMATS}")
  config, params, step = load_for_inference(source, use_ema=use_ema, step=step)
  params = jax.tree.map(np.asarray, jax.device_get(params))
  output = storage.location(output)
  targets = {"orbax": [output / str(step)], "safetensors": [output / SAFETENSORS_FILE, output / CONFIG_FILE]}
  existing = [str(p) for f in formats for p in targets[f] if p.exists()]
  if existing:
    raise ConversionError(f"{', '.join(existing)} already exist: choose a new output folder")
  written = []
  if "safetensors" in formats:  # first: it fails (naming the tensor) for networks the original cannot hold
    written += write_original_safetensors(output, config, params, step)
  if "orbax" in formats:
    save_for_inference(output, config, params, step)
    written.append(output / str(step))
  return written
