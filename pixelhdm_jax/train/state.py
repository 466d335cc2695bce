"""The train state, its shardings, and its creation directly on the mesh.

`TrainState.params` holds everything the optimizer trains: the network (`model`) and the iREPA projector
(`repa_projector`); `ema` is the exponential moving average of the network weights (what sampling uses). The
frozen text encoder and DINOv3 teacher weights are not train state: they are a separate, never donated
argument of the step (`train/setup.py`), never written to a checkpoint. Shardings come from the logical axis
names of the abstract (boxed) init, so the state is created already sharded by `jax.jit(init, out_shardings=...)`.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from pixelhdm_jax import parallel
from pixelhdm_jax.models.layers import abstract_key
from pixelhdm_jax.models.pixelhdm import PixelHDM, example_inputs
from pixelhdm_jax.models.repa_projector import RepaProjector
from pixelhdm_jax.optim.ema import init_ema


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # int32: train steps (micro-steps) taken; optimizer steps = step // optim.grad_accum_steps
  params: Any  # {"model": network params, "repa_projector": projector params}, float32
  opt_state: Any
  ema: Any  # float32 EMA of params["model"]
  nonfinite: jax.Array  # int32: consecutive skipped steps (non-finite loss or gradients)
  nonfinite_total: jax.Array  # int32: all skipped steps

  def checkpointed(self) -> dict:
    """The `train_state` checkpoint item: all but the network weights and their EMA (items of their own)."""
    return {"step": self.step, "repa_projector": self.params["repa_projector"], "opt_state": self.opt_state,
            "nonfinite": self.nonfinite, "nonfinite_total": self.nonfinite_total}

  @classmethod
  def from_checkpoint(cls, train_state: dict, model: Any, ema: Any) -> "TrainState":
    """The inverse of `checkpointed`."""
    return cls(step=train_state["step"], params={"model": model, "repa_projector": train_state["repa_projector"]},
               opt_state=train_state["opt_state"], ema=ema, nonfinite=train_state["nonfinite"],
               nonfinite_total=train_state["nonfinite_total"])


class Networks(NamedTuple):
  """The trainable modules and the optimizer (static parts of the train step)."""
  model: PixelHDM
  projector: RepaProjector
  optimizer: optax.GradientTransformation


def _init_trainable(networks: Networks, rng: jax.Array):
  """(params, opt_state, ema) with logical-axis boxes on every parameter-shaped leaf."""
  model_rng, projector_rng = jax.random.split(rng)
  model_params = networks.model.init(model_rng, *example_inputs(networks.model))["params"]
  features = jnp.zeros((1, 1, networks.model.hidden_dim))
  projector_params = networks.projector.init(projector_rng, features, (1, 1))["params"]
  params = {"model": model_params, "repa_projector": projector_params}
  return params, networks.optimizer.init(params), init_ema(model_params)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def state_shardings(networks: Networks, mesh: Mesh, rules: parallel.Rules) -> TrainState:
  """The sharding of every leaf of the train state (a `TrainState` of `NamedSharding`s)."""
  abstract = jax.eval_shape(functools.partial(_init_trainable, networks), abstract_key())
  params, opt_state, ema = parallel.param_shardings(abstract, mesh, rules)
  scalar = replicated(mesh)
  return TrainState(step=scalar, params=params, opt_state=opt_state, ema=ema, nonfinite=scalar,
                    nonfinite_total=scalar)


def abstract_state(networks: Networks, shardings: TrainState) -> TrainState:
  """`jax.ShapeDtypeStruct`s (with shardings) of the whole state: the target of a checkpoint restore."""
  params, opt_state, ema = parallel.strip_boxes(jax.eval_shape(functools.partial(_init_trainable, networks),
                                                      abstract_key()))
  scalar = jax.ShapeDtypeStruct((), jnp.int32)
  state = TrainState(step=scalar, params=params, opt_state=opt_state, ema=ema, nonfinite=scalar,
                     nonfinite_total=scalar)
  return parallel.abstract_arrays(state, shardings)


def create_train_state(networks: Networks, shardings: TrainState, rng: jax.Array) -> TrainState:
  """A fresh state, created directly in its shardings (no host copy of the full weights)."""

  def init(rng):
    params, opt_state, ema = nn.meta.unbox(_init_trainable(networks, rng))
    zero = jnp.zeros((), jnp.int32)
    return TrainState(step=zero, params=params, opt_state=opt_state, ema=ema, nonfinite=zero,
                      nonfinite_total=zero)

  return jax.jit(init, out_shardings=shardings)(rng)
