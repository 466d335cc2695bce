"""Everything a training run needs before its first step, shared by the loop, the benchmark and tests.

`build_trainer(config, mesh, rules)` builds the frozen encoders (their weights placed sharded, in the compute
dtype), the networks, the state shardings and the jitted train steps (REPA on and off); call it inside
`jax.set_mesh(mesh)` and `nn.logical_axis_rules(rules)`. With `with_encoder_params=False` nothing is allocated:
the encoder weights are shapes only, for ahead-of-time compiles (`pixelhdm_jax/perf/aot.py`) on devices that may not
exist here.
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
from pixelhdm_jax.encoders.transformer import frozen_shapes, place_frozen
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
from pixelhdm_jax.train.step import BATCH_KEYS, jit_train_step


class Trainer(NamedTuple):
  config: ml_collections.ConfigDict
  mesh: Mesh
  rules: parallel.Rules
  networks: Networks
  text_encoder: TextEncoder
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
    return parallel.global_batch({key: local_batch[key] for key in BATCH_KEYS}, self.mesh, self.rules)


REPLICATED_WARNING = 0.01  # share of the parameter bytes a multi-device run may replicate without a warning


def log_param_sharding(trainer: Trainer) -> float:
  """Logs the share of the trainable parameter bytes that is split over the mesh and returns it; warns, naming
  the largest replicated parameters, when a multi-device run replicates more than `REPLICATED_WARNING`."""
  abstract, shardings = trainer.abstract_state().params, trainer.shardings.params
  share = parallel.sharded_fraction(abstract, shardings)
  logging.info("parameters: %.1f%% of their bytes are split over the mesh %s", 100 * share, dict(trainer.mesh.shape))
  if trainer.mesh.size > 1 and 1 - share > REPLICATED_WARNING:
    leaves = zip(jax.tree_util.tree_leaves_with_path(abstract), jax.tree.leaves(shardings))
    whole = [(leaf.size * leaf.dtype.itemsize, jax.tree_util.keystr(path))
             for (path, leaf), sharding in leaves if sharding.shard_shape(leaf.shape) == tuple(leaf.shape)]
    largest = ", ".join(name for _, name in sorted(whole, reverse=True)[:3])
    logging.warning("%.1f%% of the parameter bytes are replicated on every one of the %d devices (largest: %s): "
                    "check that mesh.logical_axis_rules maps their logical axes onto mesh axes that divide them",
                    100 * (1 - share), trainer.mesh.size, largest)
  return share


def build_trainer(config: ml_collections.ConfigDict, mesh: Mesh, rules: parallel.Rules, *,
                  with_encoder_params: bool = True) -> Trainer:
  encoders = {"text": build_text_encoder(config, with_params=with_encoder_params)}
  if config.loss.repa_lambda > 0:
    encoders["dino"] = build_dino_teacher(config, with_params=with_encoder_params)
  # The host params are placed (or replaced by their shapes) here and dropped: nothing keeps a host copy.
  frozen = {name: frozen_shapes(encoder, mesh, rules) if params is None else place_frozen(encoder, params, mesh, rules)
            for name, (encoder, params) in encoders.items()}
  frozen_shardings = {name: parallel.param_shardings(encoder.abstract_params(), mesh, rules)
                      for name, (encoder, _) in encoders.items()}
  text_encoder, teacher = encoders["text"][0], encoders["dino"][0] if "dino" in encoders else None
  model = PixelHDM.from_config(config.model)
  networks = Networks(model, RepaProjector(teacher.feature_dim if teacher else 1), make_optimizer(config))
  shardings = state_shardings(networks, mesh, rules)
  batch_sharding = parallel.batch_sharding(mesh, rules)
  def jitted(step_teacher: DinoTeacher | None):
    return jit_train_step(config, networks, text_encoder, step_teacher, shardings, frozen_shardings, batch_sharding,
                          replicated(mesh))
  return Trainer(config, mesh, rules, networks, text_encoder, teacher, frozen, shardings,
                 repa_step=jitted(teacher) if teacher is not None else None, plain_step=jitted(None))
