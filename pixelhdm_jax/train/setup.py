"""Everything a training run needs before its first step, shared by the loop, the benchmark and tests.

`build_trainer(config, mesh, rules)` builds the frozen encoders (their weights placed sharded, in the compute
dtype; no text encoder with `text.cache=True`, whose batches hold the encodings), the networks, the state
shardings and the jitted train steps (REPA on and off); call it inside `jax.set_mesh(mesh)` and
`nn.logical_axis_rules(rules)`. With `with_encoder_params=False` nothing is allocated: the encoder weights are shapes
only, for ahead-of-time compiles (`pixelhdm_jax/perf/aot.py`) on devices that may not exist here.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import ml_collections
import numpy as np
from absl import logging
from jax.sharding import Mesh

from pixelhdm_jax import parallel
from pixelhdm_jax.encoders.teacher import DinoTeacher, build_dino_teacher
from pixelhdm_jax.encoders.text import TextEncoder, build_text_encoder
from pixelhdm_jax.encoders.transformer import place_frozen
from pixelhdm_jax.models.pixelhdm import PixelHDM
from pixelhdm_jax.models.repa_projector import RepaProjector
from pixelhdm_jax.optim.optimizer import make_optimizer
from pixelhdm_jax.train.state import (
  Networks,
  TrainState,
  abstract_state,
  create_train_state,
  replicated,
  state_shardings,
)
from pixelhdm_jax.train.step import TEACHER_FEATURES, batch_keys, jit_train_step


class Trainer(NamedTuple):
  """Everything the loop, the benchmark and the AOT compile need around the two jitted train steps."""
  config: ml_collections.ConfigDict
  mesh: Mesh
  rules: parallel.Rules
  networks: Networks
  text_encoder: TextEncoder | None  # None with text.cache=True: the step reads cached encodings
  teacher: DinoTeacher | None  # None when REPA is off for the whole run (loss.repa_lambda = 0)
  # The frozen encoder weights {"text", "dino"}, placed once in their compute dtype (ShapeDtypeStructs when built
  # without encoder params): the second argument of every step, never donated, never checkpointed.
  frozen: dict[str, Any]
  shardings: TrainState
  repa_step: Any  # the jitted step with REPA (None without a teacher)
  plain_step: Any  # the jitted step without REPA (after loss.repa_early_stop, or no teacher at all)

  @property
  def has_teacher(self) -> bool:
    """Whether the run has a DINOv3 teacher, so that `step_fn(repa=True)` exists (loss.repa_lambda > 0)."""
    return self.teacher is not None

  def step_fn(self, repa: bool) -> Any:
    """The jitted train step with REPA on or off (two programs: DINOv3 runs only in the first)."""
    if repa and not self.has_teacher:
      raise ValueError("REPA needs the DINOv3 teacher, which a run with loss.repa_lambda=0 does not build")
    return self.repa_step if repa else self.plain_step

  def new_state(self, rng: jax.Array) -> TrainState:
    return create_train_state(self.networks, self.shardings, rng)

  def abstract_state(self) -> TrainState:
    return abstract_state(self.networks, self.shardings)

  def global_batch(self, local_batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    """This process's slice of a batch (host arrays) -> the train step's global sharded batch."""
    keys = batch_keys(self.text_encoder is None) + ((TEACHER_FEATURES,) if TEACHER_FEATURES in local_batch else ())
    return parallel.global_batch({key: local_batch[key] for key in keys}, self.mesh, self.rules)

  def prompt_encoder(self) -> tuple[TextEncoder, Any]:
    """The text encoder and its placed weights for prompts (sample grids, evaluations): the step's, or with
    `text.cache=True` one built and placed now (the caller keeps it)."""
    if self.text_encoder is not None:
      return self.text_encoder, self.frozen["text"]
    encoder, host_params = build_text_encoder(self.config)
    return encoder, place_frozen(encoder, host_params, self.mesh, self.rules)


REPLICATED_WARNING = 0.01  # share of the parameter bytes a sharded run may replicate without a warning


def log_param_sharding(trainer: Trainer) -> float:
  """Logs the share of the trainable parameter bytes that the mesh splits and returns it; warns, naming the
  largest replicated parameters, when the weights are meant to be split (fsdp x tensor > 1) but more than
  `REPLICATED_WARNING` of them are not. Pure data parallelism replicates them on purpose."""
  abstract, shardings = trainer.abstract_state().params, trainer.shardings.params
  share = parallel.sharded_fraction(abstract, shardings)
  mesh = trainer.mesh
  if mesh.size == 1:
    logging.info("parameters: on one device")
  else:
    logging.info("parameters: %.1f%% of their bytes are split over the mesh %s", 100 * share, dict(mesh.shape))
  weight_devices = mesh.shape["fsdp"] * mesh.shape["tensor"]
  if weight_devices > 1 and 1 - share > REPLICATED_WARNING:
    largest = ", ".join(path for path, _ in parallel.replicated_params(abstract, shardings)[:3])
    logging.warning("%.1f%% of the parameter bytes are whole on each of the %d fsdp x tensor devices (largest: %s): "
                    "check that mesh.logical_axis_rules maps their logical axes onto mesh axes that divide them",
                    100 * (1 - share), weight_devices, largest)
  return share


def build_trainer(config: ml_collections.ConfigDict, mesh: Mesh, rules: parallel.Rules, *,
                  with_encoder_params: bool = True) -> Trainer:
  """The `Trainer` of `config` on `mesh` (see the module docstring)."""
  text_encoder, frozen = None, {}
  if not config.text.cache:
    text_encoder, text_params = build_text_encoder(config, with_params=with_encoder_params)
    # The host params are placed (or replaced by their shapes) here and dropped: nothing keeps a host copy.
    frozen["text"] = place_frozen(text_encoder, text_params, mesh, rules)
  teacher = None
  if config.loss.repa_lambda > 0:
    teacher, dino_params = build_dino_teacher(config, with_params=with_encoder_params)
    teacher.check_repa_grid(config.model.patch_size)
    frozen["dino"] = place_frozen(teacher, dino_params, mesh, rules)
  frozen_shardings = jax.tree.map(lambda x: x.sharding, frozen)
  model = PixelHDM.from_config(config.model)
  networks = Networks(model, RepaProjector(teacher.feature_dim if teacher else 1), make_optimizer(config))
  shardings = state_shardings(networks, mesh, rules)
  batch_sharding = parallel.batch_sharding(mesh, rules)

  def jitted(step_teacher: DinoTeacher | None):
    return jit_train_step(config, networks, text_encoder, step_teacher, shardings, frozen_shardings, batch_sharding,
                          replicated(mesh))
  return Trainer(config, mesh, rules, networks, text_encoder, teacher, frozen, shardings,
                 repa_step=jitted(teacher) if teacher is not None else None, plain_step=jitted(None))
