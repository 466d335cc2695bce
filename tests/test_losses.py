"""Losses against outside references: scipy's DCT, the published JPEG tables, PyTorch's conv and cosine, and the
original's loss values on its micro fixture."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.fft

from configs import base
from pixelhdm_jax import config as config_lib
from pixelhdm_jax import losses
from pixelhdm_jax.errors import ConfigError
from pixelhdm_jax.models.repa_projector import RepaProjector
from tests.helpers import require_torch

# The q=90 tables of the libjpeg scaling of the ITU T.81 Annex K tables (docs/original.md §5).
Q90_LUMA = np.array([[3, 2, 2, 3, 5, 8, 10, 12], [2, 2, 3, 4, 5, 12, 12, 11], [3, 3, 3, 5, 8, 11, 14, 11],
                     [3, 3, 4, 6, 10, 17, 16, 12], [4, 4, 7, 11, 14, 22, 21, 15], [5, 7, 11, 13, 16, 21, 23, 18],
                     [10, 13, 16, 17, 21, 24, 24, 20], [14, 18, 19, 20, 22, 20, 21, 20]])
Q90_CHROMA = np.full((8, 8), 20)
Q90_CHROMA[:4, :4] = [[3, 4, 5, 9], [4, 4, 5, 13], [5, 5, 11, 20], [9, 13, 20, 20]]


def _scipy_block_dct(x):
  """(B, H, W, C) -> (B, H/8, W/8, C, 8, 8) with scipy's orthonormal DCT-II per reflect-padded 8x8 block."""
  x = np.asarray(x, np.float64)
  x = np.pad(x, ((0, 0), (0, -x.shape[1] % 8), (0, -x.shape[2] % 8), (0, 0)), mode="reflect")
  b, h, w, c = x.shape
  blocks = x.reshape(b, h // 8, 8, w // 8, 8, c).transpose(0, 1, 3, 5, 2, 4)
  return scipy.fft.dctn(blocks, type=2, norm="ortho", axes=(-2, -1))


def _scipy_frequency_loss(pred, target, quality, use_ycbcr):
  diff = np.asarray(pred, np.float64) - np.asarray(target, np.float64)
  if use_ycbcr:
    diff = diff @ losses.RGB_TO_YCBCR.T
  tables = [losses.jpeg_table(losses.JPEG_LUMINANCE, quality)]
  tables += [losses.jpeg_table(losses.JPEG_CHROMINANCE if use_ycbcr else losses.JPEG_LUMINANCE, quality)] * 2
  weights = np.stack([(1 / q) / np.mean(1 / q) for q in tables])
  return np.mean(weights * _scipy_block_dct(diff) ** 2)


@pytest.mark.parametrize("shape", [(2, 24, 40, 3), (1, 20, 13, 3)])
def test_block_dct_matches_scipy(shape):
  x = np.random.default_rng(0).normal(size=shape).astype(np.float32)
  np.testing.assert_allclose(losses.block_dct(jnp.asarray(x)), _scipy_block_dct(x), atol=2e-5)


@pytest.mark.parametrize("shape,quality,use_ycbcr", [((2, 48, 32, 3), 90, True), ((3, 16, 40, 3), 85, True),
                                                     ((2, 21, 30, 3), 90, False)])
def test_frequency_loss_matches_scipy(shape, quality, use_ycbcr):
  rng = np.random.default_rng(1)
  pred, target = rng.normal(size=shape).astype(np.float32), rng.normal(size=shape).astype(np.float32)
  ours = losses.frequency_loss(jnp.asarray(pred), jnp.asarray(target), quality=quality, use_ycbcr=use_ycbcr)
  np.testing.assert_allclose(ours, _scipy_frequency_loss(pred, target, quality, use_ycbcr), rtol=1e-5)


def test_jpeg_tables_and_weights_are_the_published_ones():
  np.testing.assert_array_equal(losses.jpeg_table(losses.JPEG_LUMINANCE, 90), Q90_LUMA)
  np.testing.assert_array_equal(losses.jpeg_table(losses.JPEG_CHROMINANCE, 90), Q90_CHROMA)
  np.testing.assert_array_equal(losses.jpeg_table(losses.JPEG_LUMINANCE, 85)[0], [5, 3, 3, 5, 7, 12, 15, 18])
  np.testing.assert_array_equal(losses.jpeg_table(losses.JPEG_CHROMINANCE, 85)[0], [5, 5, 7, 14, 30, 30, 30, 30])
  assert losses.jpeg_table(losses.JPEG_LUMINANCE, 85)[7, 7] == 30
  w90, w85 = losses.frequency_weights(90), losses.frequency_weights(85)
  # w[0,0], w[7,7] and the ranges, to 3 decimals.
  for weights, expected in [(w90[0], (2.184, 0.328, 0.273, 3.276)), (w90[1], (4.353, 0.653, 0.653, 4.353)),
                            (w85[0], (2.013, 0.336, 0.280, 3.355))]:
    np.testing.assert_allclose([weights[0, 0], weights[7, 7], weights.min(), weights.max()], expected, atol=6e-4)
  np.testing.assert_allclose([w85[1][0, 0], w85[1][7, 7]], [3.874, 0.646], atol=6e-4)
  np.testing.assert_allclose(w90.reshape(3, -1).mean(-1), 1.0, rtol=1e-6)


@pytest.mark.parametrize("transform", ["dct2", "original"])
def test_block_transforms_preserve_energy(transform):
  x = np.random.default_rng(2).normal(size=(2, 16, 24, 3)).astype(np.float32)
  coefficients = losses.block_dct(jnp.asarray(x), transform)
  np.testing.assert_allclose(jnp.sum(jnp.square(coefficients)), np.sum(x.astype(np.float64) ** 2), rtol=1e-5)


def _close(ours, theirs, rtol=1e-5):
  np.testing.assert_allclose(np.float64(ours), np.float64(theirs), rtol=rtol)


@pytest.mark.parametrize("fixture", ["original_tiny", "original_micro"])
def test_losses_match_the_original_fixture(request, fixture):
  _, arrays = request.getfixturevalue(fixture)
  config = base.get_config("tiny")
  config.loss.update(freq_transform="original", freq_lambda=1.0)  # the original's transform and default weight
  v, x, noise = (jnp.asarray(arrays[k]) for k in ("out/v", "in/x_clean", "in/noise"))
  terms = losses.training_loss(config.loss, v_pred=v, x_clean=x, noise=noise, gamma_l2=arrays["out/gamma_l2"])
  _close(terms.velocity, arrays["loss/vloss"])
  _close(terms.frequency, arrays["loss/freq_loss"])
  _close(terms.gamma_l2, arrays["loss/gamma_l2"])
  _close(terms.total, arrays["loss/total"])
  assert float(terms.repa) == 0.0
  # The true DCT-II differs from the original's D X D transform (our deviation): by 1.2% on the tiny fixture,
  # 0.2% on the micro one.
  dct2 = losses.frequency_loss(v, x - noise)
  assert 1e-4 < abs(float(dct2) / float(arrays["loss/freq_loss"]) - 1) < 0.05


def _torch_repa_loss(features, teacher, kernel, bias, grid):
  """The original's iREPA with torch: Conv2d on the (B, D, h, w) grid, torch.std z-score, 1 - cosine."""
  torch = require_torch()
  F = torch.nn.functional  # noqa: N806
  b, length, d = features.shape
  h = torch.from_numpy(np.array(features)).reshape(b, *grid, d).permute(0, 3, 1, 2)
  weight = torch.from_numpy(np.array(kernel)).permute(3, 2, 0, 1)  # HWIO -> OIHW
  projected = F.conv2d(h, weight, torch.from_numpy(np.array(bias)), padding=1)
  projected = projected.flatten(2).transpose(1, 2)
  y = torch.from_numpy(np.array(teacher))
  y = (y - y.mean(dim=1, keepdim=True)) / (y.std(dim=1, keepdim=True) + 1e-6)
  return (1 - F.cosine_similarity(projected, y, dim=-1)).mean().item(), projected.numpy()


def test_repa_matches_torch_on_a_non_square_grid():
  grid, width, teacher_dim = (3, 5), 32, 24
  rng = np.random.default_rng(3)
  features = rng.normal(size=(2, 15, width)).astype(np.float32)
  teacher = (rng.normal(size=(2, 15, teacher_dim)) * 3 + 1).astype(np.float32)
  projector = RepaProjector(teacher_dim)
  params = projector.init(jax.random.key(0), jnp.asarray(features), grid)["params"]
  params = jax.tree.map(lambda p: p.value + 0.1, params, is_leaf=lambda p: hasattr(p, "value"))  # nonzero bias
  projected = projector.apply({"params": params}, jnp.asarray(features), grid)
  expected, torch_projected = _torch_repa_loss(features, teacher, params["conv"]["kernel"], params["conv"]["bias"],
                                               grid)
  np.testing.assert_allclose(projected, torch_projected, atol=1e-4, rtol=1e-5)
  np.testing.assert_allclose(losses.repa_loss(projected, jnp.asarray(teacher)), expected, rtol=1e-5)


def test_repa_projector_init_and_axis_names():
  width, teacher_dim = 64, 48
  variables = RepaProjector(teacher_dim).init(jax.random.key(1), jnp.zeros((1, 6, width)), (2, 3))
  kernel, bias = variables["params"]["conv"]["kernel"], variables["params"]["conv"]["bias"]
  assert kernel.names == ("conv_height", "conv_width", "embed", "teacher_embed")
  assert kernel.value.shape == (3, 3, width, teacher_dim) and kernel.value.dtype == jnp.float32
  np.testing.assert_allclose(np.std(kernel.value), np.sqrt(2.0 / (9 * teacher_dim)), rtol=0.05)  # fan_out
  assert not np.any(bias.value)
  rules = dict(base.get_config("tiny").mesh.logical_axis_rules)
  assert {"conv_height", "conv_width", "teacher_embed", "embed"} <= set(rules)


def test_repa_switch_and_weights():
  config = base.get_config("tiny")
  rng = np.random.default_rng(4)
  v, x, noise = (jnp.asarray(rng.normal(size=(2, 16, 32, 3)), jnp.float32) for _ in range(3))
  projected, teacher = (jnp.asarray(rng.normal(size=(2, 2, 8)), jnp.float32) for _ in range(2))
  off = losses.training_loss(config.loss, v_pred=v, x_clean=x, noise=noise, gamma_l2=0.5)
  on = losses.training_loss(config.loss, v_pred=v, x_clean=x, noise=noise, gamma_l2=0.5, repa_projected=projected,
                            repa_teacher=teacher)
  assert float(off.repa) == 0.0
  _close(on.repa, 0.5 * losses.repa_loss(projected, teacher))
  _close(on.total, off.total + on.repa)
  _close(off.total, off.velocity + off.frequency + 1e-4 * 0.5)
  with pytest.raises(ValueError, match="pass both"):
    losses.training_loss(config.loss, v_pred=v, x_clean=x, noise=noise, gamma_l2=0.0, repa_projected=projected)
  assert losses.repa_active(config.loss, 0) and not losses.repa_active(config.loss, config.loss.repa_early_stop)
  config.loss.repa_lambda = 0.0
  assert not losses.repa_active(config.loss, 0)


@pytest.mark.parametrize("field,value,message", [
    ("freq_transform", "dct3", "loss.freq_transform='dct3' is unknown"),
    ("freq_quality", 0, "loss.freq_quality=0 must be a JPEG quality"),
    ("repa_lambda", -1.0, "loss.repa_lambda must be >= 0"),
    ("repa_early_stop", -5, "loss.repa_early_stop=-5 must be an optimizer step count"),
])
def test_loss_config_errors(field, value, message):
  config = base.get_config("tiny")
  config.loss[field] = value
  with pytest.raises(ConfigError, match=message):
    config_lib.validate(config)
