"""`model.prediction`: the head predicts the velocity (the original) or the clean image (JiT's x-prediction)."""

import flax
import jax
import jax.numpy as jnp
import numpy as np

from configs import base
from pixelhdm_jax import flow
from pixelhdm_jax.models.pixelhdm import PixelHDM


def _constant_head(prediction):
  """(model, params, inputs) of the tiny network whose output head emits the constant (0.3, -0.2, 0.1)."""
  config = base.get_config("tiny")
  config.model.update(compute_dtype="float32", prediction=prediction)
  model = PixelHDM.from_config(config.model)
  keys = jax.random.split(jax.random.key(0), 3)
  inputs = (jax.random.normal(keys[0], (4, 32, 32, 3)), jnp.array([0.0, 0.3, 0.9, 1.0]),
            jax.random.normal(keys[1], (4, 5, 64)), jnp.ones((4, 5), bool), jax.random.normal(keys[2], (4, 64)))
  params = flax.core.meta.unbox(jax.jit(model.init)(jax.random.key(1), *inputs)["params"])
  head = {"kernel": jnp.zeros_like(params["output_proj"]["kernel"]), "bias": jnp.array([0.3, -0.2, 0.1])}
  return model, {**params, "output_proj": head}, inputs


def test_x_prediction_velocity_denoises_to_the_head_output():
  """The flow's own one-step estimate z + (1 - t) v of the returned velocity is the head's clean image wherever
  1 - t >= 0.05; at t = 1 the division is capped and the velocity stays finite."""
  model, params, inputs = _constant_head("x")
  velocity = jax.jit(lambda p: model.apply({"params": p}, *inputs).velocity)(params)
  z, t = inputs[0], inputs[1]
  x_hat = flow.clean_from_velocity(z, t, velocity)
  np.testing.assert_allclose(x_hat[:3], np.broadcast_to([0.3, -0.2, 0.1], x_hat[:3].shape), atol=1e-5)
  np.testing.assert_allclose(velocity[3], (np.array([0.3, -0.2, 0.1]) - z[3]) / 0.05, rtol=1e-5)


def test_velocity_prediction_returns_the_head_output():
  model, params, inputs = _constant_head("velocity")
  velocity = jax.jit(lambda p: model.apply({"params": p}, *inputs).velocity)(params)
  np.testing.assert_allclose(velocity, np.broadcast_to([0.3, -0.2, 0.1], velocity.shape), atol=1e-6)

