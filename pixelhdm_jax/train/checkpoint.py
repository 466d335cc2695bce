"""Orbax checkpoints of a whole training run (inference checkpoints: `weights/inference.py`).

A workdir's `checkpoints/<step>/` holds the items
  model        the network parameters (float32)
  ema          their exponential moving average (what sampling uses by default)
  train_state  step, iREPA projector, optimizer state (with ZClip), skip counters, the base RNG key
  data         the Grain iterator state (one file per process)
  config       the run's config as JSON
Saves are asynchronous and atomic (a step directory appears only when complete; an interrupted save leaves
`<step>.orbax-checkpoint-tmp*`, which the next run removes); `keep` bounds how many stay. A restore goes
straight into the abstract sharded state, so it works on a different mesh. An unreadable newest checkpoint is
renamed `<step>.corrupt` and the previous one restored (an error when strict); one written for another
network is an error naming its path: training never silently starts afresh over an existing checkpoint.
"""

from __future__ import annotations

import os
from typing import Any

import grain
import jax
import ml_collections
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

from pixelhdm_jax import storage
from pixelhdm_jax.train.state import TrainState
from pixelhdm_jax.weights.inference import (
  CheckpointError,
  UnreadableCheckpointError,
  config_json,
  quiet_failed_restore,
  short_reason,
)

# Settings that do not change what the weights mean: a run may resume with other values (another kernel or
# precision on another accelerator, more or less remat, encoder weights moved to another folder).
RESUMABLE_WITH_OTHER = frozenset({"attention", "remat_policy", "scan_layers", "compute_dtype", "path", "hub_id",
                                  "allow_download"})
# What Orbax appends to the directory of a save in progress (`<step>.orbax-checkpoint-tmp-<time>`).
UNFINISHED_SUFFIX = ".orbax-checkpoint-tmp"


def differences(saved: dict, current: dict, prefix: str = "") -> list[str]:
  """'field: checkpoint X, this run Y' for each setting of two config sections (as JSON) that differs, apart
  from those in `RESUMABLE_WITH_OTHER`."""
  out = []
  for key in sorted((set(saved) | set(current)) - RESUMABLE_WITH_OTHER):
    a, b = saved.get(key, "<absent>"), current.get(key, "<absent>")
    if isinstance(a, dict) and isinstance(b, dict):
      out += differences(a, b, f"{prefix}{key}.")
    elif a != b and not (isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) and list(a) == list(b)):
      out.append(f"{prefix}{key}: checkpoint {a!r}, this run {b!r}")
  return out


def remove_unfinished_saves(directory: str | os.PathLike) -> None:
  """Removes the temporary directories of saves that were interrupted (Orbax renames a save's directory to
  `<step>` only once it is complete, so these hold nothing a run can use)."""
  directory = epath.Path(directory)
  if not directory.is_dir():
    return
  for path in sorted(directory.glob(f"*{UNFINISHED_SUFFIX}*")):
    logging.warning("removing %s, the unfinished save of an interrupted run", path)
    path.rmtree()


def _set_aside(path: epath.Path) -> epath.Path:
  """Renames checkpoint `path` to `<step>.corrupt` (`.corrupt-2`, ... if taken): kept for inspection, never
  deleted, and no longer a step for Orbax."""
  target, n = path.with_name(f"{path.name}.corrupt"), 1
  while target.exists():
    n += 1
    target = path.with_name(f"{path.name}.corrupt-{n}")
  path.rename(target)
  return target


class RunCheckpoints:
  """The Orbax `CheckpointManager` of one training workdir."""

  def __init__(self, directory: str | os.PathLike, *, keep: int, async_save: bool = True):
    self.directory = storage.location(directory)
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=async_save, create=True)
    handlers = {name: ocp.StandardCheckpointHandler() for name in ("model", "ema", "train_state")}
    handlers["data"] = grain.checkpoint.CheckpointHandler()
    handlers["config"] = ocp.JsonCheckpointHandler()
    self.manager = ocp.CheckpointManager(self.directory, options=options, item_handlers=handlers)

  def latest_step(self) -> int | None:
    """The newest complete checkpoint, None for a new run; raises if the directory holds only broken ones."""
    step = self.manager.latest_step()
    if step is None and self.directory.exists():  # cloud storage has no empty directories
      leftovers = [p.name for p in self.directory.iterdir() if p.name.split(".")[0].isdigit()]
      if leftovers:
        raise CheckpointError(f"{self.directory} holds {sorted(leftovers)} but no complete checkpoint: "
                              "they are unfinished or broken saves; move them away to start a new run")
    return step

  def save(self, step: int, state: TrainState, rng: jax.Array, data_iterator: Any,
           config: ml_collections.ConfigDict, *, force: bool = False) -> bool:
    """Starts an (asynchronous) save labelled `step` (optimizer steps); returns whether a save was started."""
    train_state = {**state.checkpointed(), "rng": jax.random.key_data(rng)}
    args = ocp.args.Composite(model=ocp.args.StandardSave(state.params["model"]),
                              ema=ocp.args.StandardSave(state.ema),
                              train_state=ocp.args.StandardSave(train_state),
                              data=grain.checkpoint.CheckpointSave(data_iterator),
                              config=ocp.args.JsonSave(config_json(config)))
    return self.manager.save(step, args=args, force=force)

  def restore_newest(self, config: ml_collections.ConfigDict, abstract: TrainState, *,
                     strict: bool) -> tuple[int, TrainState, jax.Array]:
    """(step, train state, base rng) of the newest checkpoint that restores, after `check_config`. An
    unreadable one is renamed `<step>.corrupt` with a warning and the previous one tried; with `strict` (which
    the loop also sets on several processes, since they could disagree on the step) it is an error instead."""
    steps = sorted(self.manager.all_steps(), reverse=True)
    for index, step in enumerate(steps):
      try:
        self.check_config(step, config)
        return (step, *self.restore(step, abstract))
      except UnreadableCheckpointError as error:
        earlier = steps[index + 1] if index + 1 < len(steps) else None
        if strict or earlier is None:
          way = f"resume from step {earlier}" if earlier is not None else "start a new run (no earlier checkpoint)"
          raise CheckpointError(f"{error}. Move {self.directory / str(step)} away to {way}") from error
        corrupt = _set_aside(self.directory / str(step))
        logging.warning("%s; renamed it %s and resuming from step %d", error, corrupt.name, earlier)
        self.manager.reload()
    raise CheckpointError(f"{self.directory} holds no checkpoint")

  def check_config(self, step: int, config: ml_collections.ConfigDict) -> None:
    """Raises if checkpoint `step` was written for a different network or text/teacher encoder (settings in
    `RESUMABLE_WITH_OTHER` may differ)."""
    saved = self.restore_config(step)
    current = config_json(config)
    problems = []
    for section in ("model", "text", "dino"):
      problems += differences(saved.get(section, {}), current.get(section, {}), f"{section}.")
    if problems:
      raise CheckpointError(f"checkpoint {self.directory / str(step)} was written for another model: "
                            + "; ".join(problems) + ". Use a new --workdir or the checkpoint's settings")

  def restore_config(self, step: int) -> dict:
    return self._restore(step, config=ocp.args.JsonRestore())["config"]

  def restore(self, step: int, abstract: TrainState) -> tuple[TrainState, jax.Array]:
    """(train state, base rng) of checkpoint `step`, in the shardings of `abstract`."""
    key_data = jax.eval_shape(lambda: jax.random.key_data(jax.random.key(0)))  # depends on the PRNG impl
    rng = jax.ShapeDtypeStruct(key_data.shape, key_data.dtype, sharding=abstract.step.sharding)
    abstract_train_state = {**abstract.checkpointed(), "rng": rng}
    restored = self._restore(step, model=ocp.args.StandardRestore(abstract.params["model"]),
                             ema=ocp.args.StandardRestore(abstract.ema),
                             train_state=ocp.args.StandardRestore(abstract_train_state))
    saved = restored["train_state"]
    state = TrainState.from_checkpoint(saved, restored["model"], restored["ema"])
    return state, jax.random.wrap_key_data(saved["rng"])

  def restore_data(self, step: int, data_iterator: Any) -> bool:
    """Restores the Grain iterator of checkpoint `step` in place; False when its saved state does not fit
    this loader (Grain's state depends on the worker and process counts)."""
    try:
      self.manager.restore(step, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(data_iterator)))
    except Exception as error:  # noqa: BLE001  (the caller continues exactly from the step: nothing is lost)
      logging.warning("the data iterator state of %s does not fit this loader (%s: %s)",
                      self.directory / str(step), type(error).__name__, error)
      return False
    return True

  def _restore(self, step: int, **items) -> Any:
    try:
      with quiet_failed_restore():
        return self.manager.restore(step, args=ocp.args.Composite(**items))
    except Exception as error:  # re-raised with the path: a broken checkpoint must be loud
      raise UnreadableCheckpointError(f"cannot restore {', '.join(items)} from checkpoint "
                                      f"{self.directory / str(step)}: {short_reason(error)}") from error

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.close()
