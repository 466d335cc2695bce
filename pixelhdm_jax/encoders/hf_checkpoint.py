"""Local Hugging Face checkpoints of the frozen encoders, read into Flax parameter trees.

A checkpoint is a directory with `config.json` and either `model.safetensors` or a sharded set listed in
`model.safetensors.index.json`. Each encoder module (`qwen3.py`, `dinov3.py`) names its tensors with
`TensorRule`s and calls `load_params`; tensors are memory-mapped and read one at a time, transposed from the
torch layout and cast to float32. Every problem a user can hit (missing file, wrong architecture, missing or
unexpected tensors, shape mismatch) raises `EncoderCheckpointError` naming the file, the tensor and the fix.
Nothing is downloaded unless a config allows it (`resolve_checkpoint`). `SafetensorsCheckpoint` also reads
this project's own safetensors exports (`weights/interop.py`).
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any, Callable, Iterator, Mapping, Sequence

import flax.linen as nn
import jax
import ml_collections
import ml_dtypes
import numpy as np

CONFIG_FILE = "config.json"
SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
_SAFETENSORS_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_,
}
# How a torch tensor becomes a Flax parameter: Linear (out, in) -> kernel (in, out); Conv2d OIHW -> HWIO.
_LAYOUTS: dict[str, tuple[int, ...] | None] = {"copy": None, "linear": (1, 0), "conv": (2, 3, 1, 0)}


class EncoderCheckpointError(ValueError):
  """A local encoder checkpoint (weights, config or tokenizer) is missing, of the wrong model or the wrong shape."""


def resolve_checkpoint(section: ml_collections.ConfigDict, field: str, what: str) -> pathlib.Path:
  """The local path of `config.<field>`: `path` if set, else a download of `hub_id` if `allow_download`.

  Raises `EncoderCheckpointError` telling the user which field to set when neither is possible.
  """
  if section.path:
    path = pathlib.Path(section.path).expanduser()
    if not path.exists():
      raise EncoderCheckpointError(f"{field}.path={section.path!r} does not exist: point --config.{field}.path at a "
                                   f"local copy of {what}")
    return path
  if section.hub_id and section.allow_download:
    from huggingface_hub import snapshot_download
    return pathlib.Path(snapshot_download(section.hub_id, allow_patterns=["*.json", "*.safetensors", "*.txt"]))
  download = (f", or pass --config.{field}.allow_download=True to fetch {section.hub_id} from the Hugging Face "
              "hub" if section.hub_id else "")
  raise EncoderCheckpointError(f"{field}.path is empty: set --config.{field}.path to a local copy of {what}{download}")


def read_config(directory: pathlib.Path | str, model_type: str, architectures: Sequence[str]) -> dict[str, Any]:
  """`config.json` of a checkpoint directory, checked to describe `model_type` with a known architecture."""
  directory = pathlib.Path(directory)
  if not directory.is_dir():
    raise EncoderCheckpointError(f"checkpoint directory {str(directory)!r} does not exist or is not a directory")
  path = directory / CONFIG_FILE
  if not path.is_file():
    raise EncoderCheckpointError(f"{CONFIG_FILE} is missing in {str(directory)!r}: expected a Hugging Face "
                                 f"checkpoint directory ({CONFIG_FILE} plus *.safetensors)")
  config = json.loads(path.read_text())
  found_archs = config.get("architectures") or []
  if config.get("model_type") != model_type or (found_archs and not set(found_archs) & set(architectures)):
    raise EncoderCheckpointError(
        f"wrong architecture in {str(path)!r}: model_type={config.get('model_type')!r}, "
        f"architectures={found_archs}; expected model_type={model_type!r} with one of {list(architectures)}")
  return config


class SafetensorsCheckpoint(Mapping[str, np.ndarray]):
  """The tensors of one or more safetensors files, memory-mapped and read lazily by name.

  Not `safetensors.numpy`: numpy has no bfloat16, so the library's numpy path cannot return the bf16 tensors
  that Qwen3 and DINOv3 ship ("data type 'bfloat16' not understood"), and its torch path would make torch a
  dependency. The file format is an 8-byte header size, a JSON header of dtypes, shapes and byte offsets, then
  the raw little-endian data, which `np.memmap` views as `ml_dtypes.bfloat16` (or any listed dtype) one tensor
  at a time, so a multi-GB checkpoint is never read whole.
  """

  def __init__(self, files: Sequence[pathlib.Path]):
    self._entries: dict[str, tuple[pathlib.Path, int, dict[str, Any]]] = {}
    for path in files:
      with open(path, "rb") as f:
        header_size = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(header_size))
      header.pop("__metadata__", None)
      for name, info in header.items():
        self._entries[name] = (path, 8 + header_size, info)

  def __getitem__(self, name: str) -> np.ndarray:
    path, data_start, info = self._entries[name]
    if info["dtype"] not in _SAFETENSORS_DTYPES:
      raise EncoderCheckpointError(f"tensor {name!r} in {str(path)!r} has unsupported dtype {info['dtype']}")
    dtype = np.dtype(_SAFETENSORS_DTYPES[info["dtype"]])
    begin, end = info["data_offsets"]
    if begin == end:
      return np.zeros(info["shape"], dtype)
    raw = np.memmap(path, dtype=np.uint8, mode="r", offset=data_start + begin, shape=(end - begin,))
    return raw.view(dtype).reshape(info["shape"])

  def __iter__(self) -> Iterator[str]:
    return iter(self._entries)

  def __len__(self) -> int:
    return len(self._entries)


def open_safetensors(directory: pathlib.Path | str) -> SafetensorsCheckpoint:
  """The weights of a checkpoint directory: sharded (index.json) or a single `model.safetensors`."""
  directory = pathlib.Path(directory)
  index = directory / SAFETENSORS_INDEX
  if index.is_file():
    names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    files = [directory / name for name in names]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
      raise EncoderCheckpointError(f"{SAFETENSORS_INDEX} in {str(directory)!r} lists shard files that are missing: "
                                   f"{missing}")
    return SafetensorsCheckpoint(files)
  single = directory / SAFETENSORS_FILE
  if single.is_file():
    return SafetensorsCheckpoint([single])
  raise EncoderCheckpointError(f"no weights in {str(directory)!r}: expected {SAFETENSORS_FILE} or {SAFETENSORS_INDEX} "
                               "with its shards")


@dataclasses.dataclass(frozen=True)
class TensorRule:
  """One Flax parameter and the checkpoint tensor(s) it comes from.

  `name` may contain `{i}`: the tensors of layers 0..n-1 are then stacked on a leading (scan) axis.
  """
  path: tuple[str, ...]
  name: str
  layout: str = "copy"  # copy | linear | conv (see _LAYOUTS)

  def names(self, num_layers: int) -> list[str]:
    return [self.name.format(i=i) for i in range(num_layers)] if "{i}" in self.name else [self.name]


def _torch_shape(flax_shape: tuple[int, ...], layout: str) -> tuple[int, ...]:
  axes = _LAYOUTS[layout]
  if axes is None:
    return flax_shape
  shape = [0] * len(axes)
  for flax_axis, torch_axis in enumerate(axes):
    shape[torch_axis] = flax_shape[flax_axis]
  return tuple(shape)


def _read(source: Mapping[str, np.ndarray], name: str, layout: str, shape: tuple[int, ...],
          where: str) -> np.ndarray:
  tensor = np.asarray(source[name])
  expected = _torch_shape(shape, layout)
  if tuple(tensor.shape) != expected:
    raise EncoderCheckpointError(f"shape mismatch for tensor {name!r} in {where}: the checkpoint has "
                                 f"{tuple(tensor.shape)}, the model built from its config expects {expected}")
  axes = _LAYOUTS[layout]
  return (tensor if axes is None else tensor.transpose(axes)).astype(np.float32)


def load_params(abstract: Any, rules: Sequence[TensorRule], source: Mapping[str, np.ndarray], *,
                num_layers: int, known: set[str], where: str,
                rename: Callable[[str], str | None] = lambda name: name) -> dict[str, Any]:
  """Fills the float32 parameter tree shaped like `abstract` (`jax.eval_shape` of init) from `source`.

  `rename` maps a checkpoint name to the canonical name the rules use, or None for a tensor that is
  never needed (an LM head, a mask token). `known` holds every canonical name of the full architecture;
  names in it that the rules skip (layers beyond a `hidden_layer` cut) are dropped silently, any other
  checkpoint tensor is unexpected. Missing and unexpected tensors are all named in one error.
  """
  canonical = {}
  for name in source:
    renamed = rename(name)
    if renamed is not None:
      canonical[renamed] = name
  needed = [n for rule in rules for n in rule.names(num_layers)]
  missing = [n for n in needed if n not in canonical]
  unexpected = sorted(canonical[n] for n in canonical if n not in known)
  if missing or unexpected:
    raise EncoderCheckpointError(f"checkpoint {where} does not match the model built from its config: "
                                 f"missing tensors {missing}, unexpected tensors {unexpected}")

  shapes = {tuple(k.key for k in path): leaf.shape
            for path, leaf in jax.tree_util.tree_flatten_with_path(nn.unbox(abstract))[0]}
  if set(shapes) != {rule.path for rule in rules}:
    raise RuntimeError(f"name rules do not cover the parameters: {sorted(set(shapes) ^ {r.path for r in rules})}")
  params: dict[str, Any] = {}
  for rule in rules:
    shape = shapes[rule.path]
    if "{i}" in rule.name:
      value = np.stack([_read(source, canonical[n], rule.layout, shape[1:], where) for n in rule.names(num_layers)])
    else:
      value = _read(source, canonical[rule.name], rule.layout, shape, where)
    node = params
    for key in rule.path[:-1]:
      node = node.setdefault(key, {})
    node[rule.path[-1]] = value
  return params
