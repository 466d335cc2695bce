"""Parity with the original PyTorch PixelHDM on its fixtures (weights, inputs, activations, outputs).

`original_tiny` is committed, so every clone checks it; `original_micro` (larger, beside the checkout) when
present. The tiny one has patches of 8 and 4x3 of them, the micro one patches of 16 and 3x2.
"""

import jax.numpy as jnp
import numpy as np
import pytest

from pixelhdm_jax.models.rope import grid_positions, text_positions
from tests.helpers import original_inputs, original_model_and_params

RTOL = 1e-5
FIXTURES = ("original_tiny", "original_micro")


def _close(ours, theirs, name, atol_scale=RTOL):
  ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
  assert ours.shape == theirs.shape, (name, ours.shape, theirs.shape)
  error = np.max(np.abs(ours - theirs)) / max(np.max(np.abs(theirs)), 1e-12)
  assert error < atol_scale, f"{name}: max error relative to max |value| = {error:.2e}"


@pytest.mark.parametrize("fixture", FIXTURES)
def test_outputs_match_original(request, fixture):
  spec, arrays = request.getfixturevalue(fixture)
  model, params = original_model_and_params(spec, arrays)
  out = model.apply({"params": params}, *original_inputs(arrays))
  _close(out.velocity, arrays["out/v"], "out/v")
  _close(out.repa_features, arrays["out/repa_features"], "out/repa_features")
  _close(out.gamma_l2, arrays["out/gamma_l2"], "out/gamma_l2")


@pytest.mark.parametrize("fixture", FIXTURES)
def test_block_activations_match_original(request, fixture):
  spec, arrays = request.getfixturevalue(fixture)
  model, params = original_model_and_params(spec, arrays, scan_layers=False)
  out, state = model.apply({"params": params}, *original_inputs(arrays), capture_intermediates=True,
                           mutable=["intermediates"])
  inter = state["intermediates"]
  text_len = arrays["in/text_embed"].shape[1]
  _close(inter["patch_embed"]["__call__"][0], arrays["act/patch_embed"], "patch_embed")
  _close(inter["time_embed"]["__call__"][0], arrays["act/time_embed"], "time_embed")
  for i in range(spec["config"]["patch_layers"]):
    ours = np.asarray(inter[f"patch_blocks_{i}"]["__call__"][-1][0][0])
    # The original orders the joint sequence text first; ours puts the image tokens first.
    ours = np.concatenate([ours[:, -text_len:], ours[:, :-text_len]], axis=1)
    _close(ours, arrays[f"act/patch_blocks.{i}"], f"patch_blocks.{i}")
  for i in range(spec["config"]["pixel_layers"]):
    _close(inter[f"pixel_blocks_{i}"]["__call__"][-1][0][0], arrays[f"act/pixel_blocks.{i}"], f"pixel_blocks.{i}")
  _close(inter["pixel_embed"]["__call__"][0], arrays["act/pixel_embed"], "pixel_embed")
  _close(inter["output_norm"]["__call__"][0], arrays["act/output_norm"], "output_norm")
  _close(out.velocity, arrays["act/output_proj"], "output_proj")


@pytest.mark.parametrize("fixture", FIXTURES)
def test_position_ids_match_original(request, fixture):
  """Our mRoPE ids, mapped back to the original's text-first order, equal the ids it used."""
  spec, arrays = request.getfixturevalue(fixture)
  mask = arrays["in/text_mask"]
  batch, text_len = mask.shape
  patch = spec["config"]["patch_size"]
  grid_h, grid_w = arrays["in/x_t"].shape[1] // patch, arrays["in/x_t"].shape[2] // patch
  ours = jnp.concatenate([text_positions(batch, text_len),
                          grid_positions(grid_h, grid_w, jnp.sum(jnp.asarray(mask), -1))], axis=1)
  np.testing.assert_array_equal(ours, arrays["in/position_ids"])
  np.testing.assert_array_equal(np.broadcast_to(grid_positions(grid_h, grid_w), (batch, grid_h * grid_w, 3)),
                                arrays["in/pixel_position_ids"])
