"""Fine-tuning: a new run's network and EMA weights from a workdir, an export or an imported original checkpoint.

Only the weights move: the optimizer, its step and the REPA projector start fresh, so a fine-tune is a new run
(step 0) with its own learning-rate schedule. The weights are restored straight into the state's shardings.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from absl import logging

from pixelhdm_jax.train.checkpoint import differences
from pixelhdm_jax.train.state import TrainState
from pixelhdm_jax.weights.inference import config_json, load_network_weights


def initialize_from(state: TrainState, path: str, config) -> TrainState:
  """`state` with the network weights of checkpoint `path` (and their EMA, where the checkpoint has one; an
  export or import has only one set of weights, which then starts the EMA too)."""
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                          state.params["model"])
  saved, weights, step = load_network_weights(path, abstract)
  model = weights["model"]
  # Never the same buffers twice: the train step donates both the weights and their EMA.
  ema = weights["ema"] if "ema" in weights else jax.tree.map(jnp.copy, model)
  encoders = differences(config_json(saved).get("text", {}), config_json(config).get("text", {}), "text.")
  if encoders:
    logging.warning("the weights of %s were trained with another text encoder setting (%s): fine-tuning starts "
                    "from text features they have not seen", path, "; ".join(encoders))
  logging.info("network weights%s from %s (its step %d); fresh optimizer at step 0",
               " and EMA" if "ema" in weights else " (also the EMA's start)", path, step)
  return state.replace(params={**state.params, "model": model}, ema=ema)
