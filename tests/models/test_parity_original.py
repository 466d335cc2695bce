"""Parity with the original PyTorch PixelHDM on its micro fixture (weights, inputs, activations, outputs)."""

import numpy as np
import pytest

from tests.models.original_micro import micro_inputs, micro_model_and_params

RTOL = 1e-5


def _close(ours, theirs, name, atol_scale=RTOL):
  ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
  assert ours.shape == theirs.shape, (name, ours.shape, theirs.shape)
  error = np.max(np.abs(ours - theirs)) / max(np.max(np.abs(theirs)), 1e-12)
  assert error < atol_scale, f"{name}: max error relative to max |value| = {error:.2e}"


@pytest.fixture(scope="module")
def unrolled_run(original_micro):
  spec, arrays = original_micro
  model, params = micro_model_and_params(spec, arrays, scan_layers=False)
  out, state = model.apply({"params": params}, *micro_inputs(arrays), capture_intermediates=True,
                           mutable=["intermediates"])
  return arrays, out, state["intermediates"]


def test_outputs_match_original(original_micro):
  spec, arrays = original_micro
  model, params = micro_model_and_params(spec, arrays)
  out = model.apply({"params": params}, *micro_inputs(arrays))
  _close(out.velocity, arrays["out/v"], "out/v")
  _close(out.repa_features, arrays["out/repa_features"], "out/repa_features")
  _close(out.gamma_l2, arrays["out/gamma_l2"], "out/gamma_l2")


def test_block_activations_match_original(unrolled_run):
  arrays, out, inter = unrolled_run
  text_len = arrays["in/text_embed"].shape[1]
  _close(inter["patch_embed"]["__call__"][0], arrays["act/patch_embed"], "patch_embed")
  _close(inter["time_embed"]["__call__"][0], arrays["act/time_embed"], "time_embed")
  for i in range(2):
    ours = np.asarray(inter[f"patch_blocks_{i}"]["__call__"][-1][0][0])
    # The original orders the joint sequence text first; ours puts the image tokens first.
    ours = np.concatenate([ours[:, -text_len:], ours[:, :-text_len]], axis=1)
    _close(ours, arrays[f"act/patch_blocks.{i}"], f"patch_blocks.{i}")
    _close(inter[f"pixel_blocks_{i}"]["__call__"][-1][0][0], arrays[f"act/pixel_blocks.{i}"], f"pixel_blocks.{i}")
  _close(inter["pixel_embed"]["__call__"][0], arrays["act/pixel_embed"], "pixel_embed")
  _close(inter["output_norm"]["__call__"][0], arrays["act/output_norm"], "output_norm")
  _close(out.velocity, arrays["act/output_proj"], "output_proj")


def test_position_ids_match_original(original_micro):
  """Our mRoPE ids, mapped back to the original's text-first order, equal the ids it used."""
  import jax.numpy as jnp
  from pixelhdm_jax.models.rope import grid_positions, text_positions
  _, arrays = original_micro
  mask = arrays["in/text_mask"]
  batch, text_len = mask.shape
  grid_h, grid_w = arrays["in/x_t"].shape[1] // 16, arrays["in/x_t"].shape[2] // 16
  ours = jnp.concatenate([text_positions(batch, text_len),
                          grid_positions(grid_h, grid_w, jnp.sum(jnp.asarray(mask), -1))], axis=1)
  np.testing.assert_array_equal(ours, arrays["in/position_ids"])
  np.testing.assert_array_equal(np.broadcast_to(grid_positions(grid_h, grid_w), (batch, grid_h * grid_w, 3)),
                                arrays["in/pixel_position_ids"])
