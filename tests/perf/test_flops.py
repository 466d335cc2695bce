"""The analytic FLOP counter against the original's measured counts (docs/original.md §2.10; FLOPs = 2 x MACs)."""

import pytest

from configs.base import get_config
from pixelhdm_jax.perf import flops

# GMAC per forward per image of the `default` preset, as measured on the original (torch's FlopCounterMode).
TABLE_GMAC = {(256, 511): 184.7, (512, 511): 449.0, (1024, 511): 1989.2,
              (256, 0): 68.9, (512, 0): 307.4, (1024, 0): 1744.7}


def test_default_512_forward_is_0_898_tflop():
  forward = flops.forward_flops(get_config("default").model, 512, 512, text_len=511)
  assert forward.total / 2 == pytest.approx(448.98e9, rel=1e-4)  # the worked example
  assert round(forward.total / 1e12, 3) == 0.898
  assert forward.patch_linear / 2 == pytest.approx(296.56e9, rel=1e-4)
  assert forward.patch_attention / 2 == pytest.approx(77.21e9, rel=1e-4)
  assert forward.pixel_linear / 2 == pytest.approx(66.37e9, rel=1e-4)
  assert forward.pixel_attention / 2 == pytest.approx(8.59e9, rel=1e-3)


@pytest.mark.parametrize("resolution, text_len", sorted(TABLE_GMAC))
def test_default_table(resolution, text_len):
  forward = flops.forward_flops(get_config("default").model, resolution, resolution, text_len)
  assert forward.total / 2e9 == pytest.approx(TABLE_GMAC[resolution, text_len], abs=0.1)  # rounded to 0.1


def test_train_step_is_three_forwards():
  model = get_config("default").model
  assert flops.train_step_flops(model, 256, 384, 256) == 3 * flops.forward_flops(model, 256, 384, 256).total


def test_text_projection_counted_when_widths_differ():
  model = get_config("small").model
  assert model.text_dim != model.hidden_dim
  with_text = flops.forward_flops(model, 256, 256, 256).embeddings
  without = flops.forward_flops(model, 256, 256, 0).embeddings
  assert with_text - without == pytest.approx(2 * model.text_dim * model.hidden_dim * 256)


def test_encoder_flops_near_the_reference_estimates():
  """Qwen3-0.6B ~ 2 x 0.44B x 511 (+ attention); DINOv3 ViT-B ~ 2 x 86M x (L + 1) (docs/original.md §2.10)."""
  assert flops.text_encoder_flops(511) == pytest.approx(2 * 0.44e9 * 511 + 4 * 28 * 511 ** 2 * 2048, rel=0.01)
  assert flops.dino_flops(256, 256) == pytest.approx(44e9, rel=0.1)
  assert flops.dino_flops(512, 512) == pytest.approx(0.18e12, rel=0.2)


@pytest.mark.parametrize("kind, peak", [
    ("NVIDIA H100 80GB HBM3", 989e12), ("NVIDIA H100 PCIe", 756e12), ("NVIDIA H200", 989e12),
    ("NVIDIA A100-SXM4-80GB", 312e12), ("TPU v4", 275e12), ("TPU v5 lite", 197e12), ("TPU v5e", 197e12),
    ("TPU v5", 459e12), ("TPU v5p", 459e12), ("TPU v6 lite", 918e12), ("TPU v6e", 918e12)])
def test_peak_flops(kind, peak):
  assert flops.peak_flops(kind) == peak


def test_mfu():
  step = flops.train_step_flops(get_config("default").model, 512, 512, 511) * 32
  assert flops.mfu(step, 0.2, "NVIDIA H100 80GB HBM3", 1) == pytest.approx(step / (0.2 * 989e12))
  assert flops.mfu(step, 0.2, "TPU v5p", 4) == pytest.approx(step / (0.2 * 459e12 * 4))


@pytest.mark.parametrize("kind", ["cpu", "TPU v4 lite", "NVIDIA GeForce RTX 4090", ""])
def test_mfu_unknown_device_is_none(kind):
  assert flops.mfu(1e15, 1.0, kind, 1) is None
