"""The training loss and its gradients equal the original's on its micro fixture (REPA off, its own t and noise)."""

import flax
import jax
import jax.numpy as jnp
import numpy as np

from pixelhdm_jax import flow
from pixelhdm_jax.losses import training_loss
from pixelhdm_jax.weights.original import import_state_dict
from tests.models.original_micro import micro_config, micro_inputs, micro_model_and_params


def test_loss_and_gradients_match_original(original_micro):
  spec, arrays = original_micro
  model, params = micro_model_and_params(spec, arrays)
  config = micro_config(spec)
  config.loss.freq_transform = "original"  # the original's block transform (D X D; docs/deviations.md)
  x_clean, noise, t = (jnp.asarray(arrays[k]) for k in ("in/x_clean", "in/noise", "in/t"))
  z_t = flow.interpolate(x_clean, noise, t)
  np.testing.assert_allclose(z_t, arrays["in/x_t"], rtol=1e-6, atol=1e-6)
  _, _, text, mask, pooled = micro_inputs(arrays)

  def loss_fn(p):
    out = model.apply({"params": p}, z_t, t, text, mask, pooled)
    return training_loss(config.loss, v_pred=out.velocity, x_clean=x_clean, noise=noise, gamma_l2=out.gamma_l2)

  grads = jax.grad(lambda p: loss_fn(p).total)(params)
  terms = loss_fn(params)
  for ours, theirs in ((terms.total, "loss/total"), (terms.velocity, "loss/vloss"),
                       (terms.frequency, "loss/freq_loss"), (terms.gamma_l2, "loss/gamma_l2")):
    np.testing.assert_allclose(ours, arrays[theirs], rtol=1e-5)
  abstract = jax.eval_shape(model.init, jax.random.key(0), *micro_inputs(arrays))["params"]
  expected, _ = import_state_dict({k[len("grad/"):]: arrays[k] for k in arrays if k.startswith("grad/")}, abstract)
  flat_ours = flax.traverse_util.flatten_dict(grads)
  for path, theirs in flax.traverse_util.flatten_dict(expected).items():
    ours = np.asarray(flat_ours[path])
    scale = max(np.max(np.abs(theirs)), 1e-12)
    error = np.max(np.abs(ours - theirs)) / scale
    assert error <= 3e-5, ("/".join(path), error)  # measured <= 1.2e-5
