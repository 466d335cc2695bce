"""Inference checkpoints: the network weights and config of a training workdir or an export, read and written.

A training workdir's `checkpoints/<step>/` (`train/checkpoint.py`) and an inference checkpoint both hold the
Orbax items `model` (and `ema` in a workdir) and `config`; `load_for_inference` reads either, so sampling and
exports never depend on the training code. `config_json` is the JSON form of a config that every checkpoint
stores.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import traceback
from typing import Any, Iterator

import jax
import ml_collections
import orbax.checkpoint as ocp
from etils import epath

from pixelhdm_jax import parallel, storage
from pixelhdm_jax.models.pixelhdm import PixelHDM, abstract_params


class CheckpointError(RuntimeError):
  """A checkpoint exists but cannot be used: the message names the path and what is wrong."""


class UnreadableCheckpointError(CheckpointError):
  """A checkpoint's files cannot be read (damaged or incomplete), as opposed to one that does not fit."""


def short_reason(error: BaseException, limit: int = 300) -> str:
  """`Type: first line of the message`, at most `limit` characters: the cause of a failed restore without the
  TensorStore spec dumps that follow it."""
  lines = str(error).strip().splitlines()
  reason = f"{type(error).__name__}: {lines[0] if lines else ''}"
  return reason if len(reason) <= limit else reason[:limit - 3] + "..."


def _drop_closed_loop_callbacks(previous):
  def hook(unraisable):
    if not (isinstance(unraisable.exc_value, RuntimeError) and str(unraisable.exc_value) == "Event loop is closed"):
      previous(unraisable)
  return hook


class _DropOrphanedReadErrors(logging.Filter):
  """Drops asyncio's '... exception was never retrieved' reports of exceptions raised inside Orbax: the other array
  reads that failed with the first one, whose tasks nobody awaits once the restore has raised."""

  def filter(self, record: logging.LogRecord) -> bool:
    message = record.getMessage()
    if not (message.startswith(("Task exception was never retrieved", "Future exception was never retrieved"))
            and record.exc_info and record.exc_info[2]):
      return True
    return not any("orbax" in frame.filename for frame in traceback.extract_tb(record.exc_info[2]))


_ORPHANED_READS = _DropOrphanedReadErrors()


@contextlib.contextmanager
def quiet_failed_restore() -> Iterator[None]:
  """Around an Orbax restore: when one array fails to read, the reads still in flight finish into the restore's
  closed asyncio loop ('Event loop is closed') or fail unawaited ('Task exception was never retrieved'), each
  printing a traceback (hundreds of lines that bury the real error). Those alone are dropped, for the rest of
  the process once a restore failed (they arrive late, when the tasks are collected)."""
  previous = sys.unraisablehook
  asyncio_logger = logging.getLogger("asyncio")
  kept = _ORPHANED_READS in asyncio_logger.filters  # from an earlier failed restore
  sys.unraisablehook = _drop_closed_loop_callbacks(previous)
  asyncio_logger.addFilter(_ORPHANED_READS)
  yield  # a failed restore raises here and leaves both in place
  sys.unraisablehook = previous
  if not kept:
    asyncio_logger.removeFilter(_ORPHANED_READS)


# Config fields renamed after checkpoints were written with the old name: old -> new (`sample.sampler` was the
# ODE solver, `data.sampler` the example order).
RENAMED_FIELDS = {"sample.sampler": "sample.solver", "data.sampler": "data.order"}
# Fields added after checkpoints were written without them: the value such a checkpoint gets (its behaviour then).
ADDED_FIELDS = {"train.eval_every": 0, "train.eval_num_images": 2_000, "train.init_from": "",
                "train.profile_steps": (), "evaluation.inception_weights": "",
                "evaluation.inception_resize": "pytorch_fid", "evaluation.reference": "", "evaluation.batch_size": 64,
                "data.allow_upscale": True, "model.pixel_adaln": "pre",
                "flow.time_shift_mode": "fixed"}


def config_json(config: ml_collections.ConfigDict) -> dict:
  """The config as plain JSON values (tuples become lists)."""
  return json.loads(config.to_json())


def config_from_json(saved: dict) -> ml_collections.ConfigDict:
  """The config stored in a checkpoint, with fields renamed since it was written under their new names and
  fields added since at `ADDED_FIELDS`."""
  saved = json.loads(json.dumps(saved))  # a deep copy
  for old, new in RENAMED_FIELDS.items():
    (section, old_field), (_, new_field) = old.split("."), new.split(".")
    if old_field in saved.get(section, {}):
      saved[section].setdefault(new_field, saved[section].pop(old_field))
  for name, value in ADDED_FIELDS.items():
    section, field = name.split(".")
    saved.setdefault(section, {}).setdefault(field, value)
  return ml_collections.ConfigDict(saved)


def checkpoint_directory(path: str | os.PathLike) -> epath.Path:
  """A training workdir (`<workdir>/checkpoints`) or a checkpoint directory itself (e.g. an export)."""
  path = storage.location(path)
  if (path / "checkpoints").is_dir():
    path = path / "checkpoints"
  if not path.is_dir():
    raise CheckpointError(f"{path} is not a training workdir or a checkpoint directory")
  return path


def load_for_inference(path: str | os.PathLike, *, use_ema: bool = True, step: int | None = None,
                       sharding: jax.sharding.Sharding | None = None) -> tuple[ml_collections.ConfigDict, Any, int]:
  """(config, network params, step) from a workdir or an exported checkpoint; EMA weights when present and
  `use_ema`. Params are placed with `sharding` (default: replicated on the first local device). When the
  checkpoint cannot be read, the error names the newest earlier one that can."""
  sharding = sharding or jax.sharding.SingleDeviceSharding(jax.local_devices()[0])

  def wanted(config, items):
    item = "ema" if use_ema and "ema" in items else "model"
    network = parallel.strip_boxes(abstract_params(PixelHDM.from_config(config.model)))
    return {item: parallel.abstract_arrays(network, sharding)}

  config, weights, step = _read_network(path, step, wanted)
  return config, next(iter(weights.values())), step


def load_network_weights(path: str | os.PathLike, abstract_network: Any, *, step: int | None = None
                         ) -> tuple[ml_collections.ConfigDict, dict[str, Any], int]:
  """(saved config, {"model": params, "ema": params (workdirs only)}, step) of a workdir or an inference
  checkpoint, restored straight into the shapes and shardings of `abstract_network` (`ShapeDtypeStruct`s with
  shardings). A checkpoint of another network is a `CheckpointError` naming each parameter whose shape differs."""

  def wanted(config, items):
    saved = parallel.strip_boxes(abstract_params(PixelHDM.from_config(config.model)))
    problems = _shape_differences(saved, abstract_network)
    if problems:
      raise CheckpointError(f"the weights in {path} do not fit this run's network ({len(problems)} parameters "
                            f"differ, e.g. {'; '.join(problems[:3])}): use a checkpoint of the same model "
                            "settings or change model.* to the checkpoint's")
    return {item: abstract_network for item in ("model", "ema") if item in items}

  return _read_network(path, step, wanted)


def _shape_differences(saved: Any, current: Any) -> list[str]:
  """'path: checkpoint SHAPE, this run SHAPE' for every parameter that is absent from one tree or differs."""
  shapes = [{jax.tree_util.keystr(p): tuple(x.shape) for p, x in jax.tree_util.tree_leaves_with_path(tree)}
            for tree in (saved, current)]
  return [f"{name}: checkpoint {shapes[0].get(name, 'absent')}, this run {shapes[1].get(name, 'absent')}"
          for name in sorted(set(shapes[0]) | set(shapes[1])) if shapes[0].get(name) != shapes[1].get(name)]


def _read_network(path, step, wanted) -> tuple[ml_collections.ConfigDict, dict[str, Any], int]:
  """(config, weights, step): the network items that `wanted(saved config, items present)` maps to abstract
  trees, from checkpoint `step` (default: the newest)."""
  directory = checkpoint_directory(path)
  handlers = {"model": ocp.StandardCheckpointHandler(), "ema": ocp.StandardCheckpointHandler(),
              "config": ocp.JsonCheckpointHandler()}
  manager = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(read_only=True),
                                  item_handlers=handlers)
  try:
    step = manager.latest_step() if step is None else step
    if step is None:
      raise CheckpointError(f"{directory} holds no complete checkpoint")
    try:
      config, weights = _restore_network(manager, directory, step, wanted)
    except UnreadableCheckpointError as error:
      earlier = _newest_loadable(manager, directory, [s for s in manager.all_steps() if s < step], wanted)
      raise UnreadableCheckpointError(f"{error}. The newest earlier checkpoint that loads: "
                                      + (f"step {earlier} (--step={earlier})" if earlier is not None else "none")
                                      ) from error
  finally:
    manager.close()
  return config, weights, step


def _restore_network(manager: ocp.CheckpointManager, directory: epath.Path, step: int, wanted
                     ) -> tuple[ml_collections.ConfigDict, dict[str, Any]]:
  """(config, weights) of checkpoint `step`, or `UnreadableCheckpointError` naming it."""
  items = [item for item in ("model", "ema") if (directory / str(step) / item).is_dir()]
  try:
    config = config_from_json(manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"])
    abstract = wanted(config, items)
    with quiet_failed_restore():
      weights = manager.restore(step, args=ocp.args.Composite(**{item: ocp.args.StandardRestore(tree)
                                                                 for item, tree in abstract.items()}))
  except CheckpointError:
    raise
  except Exception as error:  # re-raised with the path
    raise UnreadableCheckpointError(f"cannot load the network weights ({', '.join(items)}) of checkpoint "
                                    f"{directory / str(step)}: {short_reason(error)}") from error
  return config, {item: weights[item] for item in abstract}


def _newest_loadable(manager, directory, steps, wanted) -> int | None:
  """The newest of `steps` whose network weights load (a full load: a damaged array shows only when read)."""
  for step in sorted(steps, reverse=True):
    try:
      _restore_network(manager, directory, step, wanted)
    except UnreadableCheckpointError:
      continue
    return step
  return None


def save_for_inference(directory: str | os.PathLike, config: ml_collections.ConfigDict, params: Any,
                       step: int = 0) -> epath.Path:
  """Writes an inference checkpoint (items `model` and `config`) that `load_for_inference` reads."""
  directory = storage.location(directory)
  handlers = {"model": ocp.StandardCheckpointHandler(), "config": ocp.JsonCheckpointHandler()}
  with ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(enable_async_checkpointing=False),
                             item_handlers=handlers) as manager:
    manager.save(step, args=ocp.args.Composite(model=ocp.args.StandardSave(params),
                                               config=ocp.args.JsonSave(config_json(config))))
  return directory
