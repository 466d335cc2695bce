"""The training loss and its gradients equal the original's on its fixtures (REPA off, its own t and noise).

The tiny fixture keeps the gradients of a few parameters spread over the network; the micro one of all.
"""

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pixelhdm_jax import flow
from pixelhdm_jax.losses import training_loss
from pixelhdm_jax.weights.original import original_names
from tests.helpers import original_config, original_inputs, original_model_and_params


@pytest.mark.parametrize("fixture", ["original_tiny", "original_micro"])
def test_loss_and_gradients_match_original(request, fixture):
  spec, arrays = request.getfixturevalue(fixture)
  model, params = original_model_and_params(spec, arrays)
  config = original_config(spec)
  config.loss.freq_transform = "original"  # the original's block transform (D X D; docs/deviations.md)
  x_clean, noise, t = (jnp.asarray(arrays[k]) for k in ("in/x_clean", "in/noise", "in/t"))
  z_t = flow.interpolate(x_clean, noise, t)
  np.testing.assert_allclose(z_t, arrays["in/x_t"], rtol=1e-6, atol=1e-6)
  _, _, text, mask, pooled = original_inputs(arrays)

  def loss_fn(p):
    out = model.apply({"params": p}, z_t, t, text, mask, pooled)
    return training_loss(config.loss, v_pred=out.velocity, x_clean=x_clean, noise=noise, gamma_l2=out.gamma_l2)

  grads = jax.grad(lambda p: loss_fn(p).total)(params)
  terms = loss_fn(params)
  for ours, theirs in ((terms.total, "loss/total"), (terms.velocity, "loss/vloss"),
                       (terms.frequency, "loss/freq_loss"), (terms.gamma_l2, "loss/gamma_l2")):
    np.testing.assert_allclose(ours, arrays[theirs], rtol=1e-5)
  compared = 0
  for path, ours in flax.traverse_util.flatten_dict(grads).items():
    for name, layer in original_names(path, ours.shape):
      if f"grad/{name}" not in arrays:
        continue  # the tiny fixture keeps a few gradients only
      theirs = arrays[f"grad/{name}"]
      ours_layer = np.asarray(ours if layer is None else ours[layer])
      ours_layer = ours_layer.T if path[-1] == "kernel" else ours_layer  # Flax (in, out), torch (out, in)
      error = np.max(np.abs(ours_layer - theirs)) / max(np.max(np.abs(theirs)), 1e-12)
      assert error <= 3e-5, (name, error)  # measured <= 1.2e-5
      compared += 1
  assert compared == len([k for k in arrays if k.startswith("grad/")])
