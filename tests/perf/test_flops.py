"""The analytic FLOP counter against the original's measured counts (docs/original.md §2.10; FLOPs = 2 x MACs)."""

import math

import flax.linen as nn
import jax
import jax.extend
import jax.numpy as jnp
import pytest

from configs.base import get_config
from pixelhdm_jax.encoders.dinov3 import DINOv3ViT
from pixelhdm_jax.encoders.qwen3 import Qwen3Encoder
from pixelhdm_jax.encoders.teacher import TINY_DINOV3
from pixelhdm_jax.encoders.text import tiny_qwen3_arch
from pixelhdm_jax.models.pixelhdm import PixelHDM
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


def program_flops(jaxpr) -> int:
  """2 x multiply-adds of every matmul (dot_general) and convolution in a jaxpr, sub-jaxprs included (a scan's
  body times its length): an independent count of what a traced program computes."""
  total = 0
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "dot_general":
      (contracting, _), _ = eqn.params["dimension_numbers"]
      lhs = eqn.invars[0].aval.shape
      total += 2 * math.prod(eqn.outvars[0].aval.shape) * math.prod(lhs[d] for d in contracting)
    elif eqn.primitive.name == "conv_general_dilated":
      kernel = eqn.invars[1].aval.shape
      out_features = kernel[eqn.params["dimension_numbers"].rhs_spec[0]]
      total += 2 * math.prod(eqn.outvars[0].aval.shape) * math.prod(kernel) // out_features
    repeats = eqn.params.get("length", 1) if eqn.primitive.name == "scan" else 1
    for value in eqn.params.values():
      for sub in value if isinstance(value, (tuple, list)) else (value,):
        if isinstance(sub, jax.extend.core.ClosedJaxpr):
          total += repeats * program_flops(sub.jaxpr)
        elif isinstance(sub, jax.extend.core.Jaxpr):
          total += repeats * program_flops(sub)
  return total


def test_program_count_of_a_two_layer_model_is_the_hand_count():
  """x (4, 5) -> 6 -> 7: forward 2 x 4 x (5 x 6 + 6 x 7) = 576 FLOPs; the backward of each layer computes the
  gradient of its weights and of its input, twice its forward: a training step is 3 x 576."""
  def loss(weights, x):
    return jnp.sum(jnp.tanh(x @ weights[0]) @ weights[1])
  weights, x = (jnp.ones((5, 6)), jnp.ones((6, 7))), jnp.ones((4, 5))
  assert program_flops(jax.make_jaxpr(loss)(weights, x).jaxpr) == 576
  assert program_flops(jax.make_jaxpr(jax.grad(loss, argnums=(0, 1)))(weights, x).jaxpr) == 3 * 576


def _network_programs(preset: str, height: int, width: int, text_len: int, pixel_adaln: str = "pre"):
  """(forward FLOPs, train-step FLOPs) that the traced network and its parameter gradient compute for 1 image."""
  model_config = get_config(preset).model
  model_config.pixel_adaln = pixel_adaln
  model = PixelHDM.from_config(model_config, remat_policy="none")
  inputs = (jnp.zeros((1, height, width, 3)), jnp.zeros((1,)), jnp.zeros((1, text_len, model_config.text_dim)),
            jnp.ones((1, text_len), bool), jnp.zeros((1, model_config.text_dim)))
  params = nn.unbox(jax.eval_shape(model.init, jax.random.key(0), *inputs)["params"])
  loss = lambda p: jnp.sum(model.apply({"params": p}, *inputs).velocity)
  return (program_flops(jax.make_jaxpr(loss)(params).jaxpr),
          program_flops(jax.make_jaxpr(jax.value_and_grad(loss))(params).jaxpr))


@pytest.mark.parametrize("preset, height, width, text_len, pixel_adaln",
                         [("tiny", 32, 48, 32, "pre"), ("small", 64, 32, 16, "pre"), ("tiny", 32, 48, 32, "post")])
def test_forward_count_equals_the_programs_matmuls(preset, height, width, text_len, pixel_adaln):
  """Every matmul of the network, as traced (the small preset adds the text projection; post-modulation has
  four pixel modulations instead of six), and nothing else."""
  forward, _ = _network_programs(preset, height, width, text_len, pixel_adaln)
  model = get_config(preset).model
  model.pixel_adaln = pixel_adaln
  assert flops.forward_flops(model, height, width, text_len).total == forward


def test_train_step_count_is_three_forwards_of_the_program():
  """The program's backward computes no input gradient for the first layers (the images and t are not
  differentiated): 2.98 x the forward for the tiny network, so counting 3 x (maxtext's convention) is within 1%."""
  forward, train = _network_programs("tiny", 32, 48, 32)
  assert 0.99 * flops.TRAIN_STEP_FACTOR <= train / forward <= flops.TRAIN_STEP_FACTOR
  model = get_config("tiny").model
  assert flops.train_step_flops(model, 32, 48, 32) == pytest.approx(3 * forward)


def test_encoder_counts_equal_their_programs():
  """Qwen3 up to either hidden layer and DINOv3 (its patch convolution included), at the tiny presets' sizes."""
  arch = tiny_qwen3_arch(64)
  ids = jnp.zeros((1, 12), jnp.int32)
  for hidden_layer in (-1, -2):
    encoder = Qwen3Encoder(arch, hidden_layer)
    params = nn.unbox(jax.eval_shape(encoder.init, jax.random.key(0), ids, ids)["params"])
    program = jax.make_jaxpr(lambda p, e=encoder: e.apply({"params": p}, ids, ids >= 0).hidden)(params)
    assert flops.text_encoder_flops(12, arch, hidden_layer) == program_flops(program.jaxpr)
  vit, images = DINOv3ViT(TINY_DINOV3), jnp.zeros((1, 32, 48, 3))
  params = nn.unbox(jax.eval_shape(vit.init, jax.random.key(0), images)["params"])
  program = jax.make_jaxpr(lambda p: vit.apply({"params": p}, images))(params)
  assert flops.dino_flops(32, 48, TINY_DINOV3) == program_flops(program.jaxpr)


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


@pytest.mark.parametrize("kind, peak, bandwidth", [
    ("NVIDIA H100 80GB HBM3", 989e12, 3.35e12), ("NVIDIA H100 PCIe", 756e12, 2.0e12), ("NVIDIA H200", 989e12, 4.8e12),
    ("NVIDIA A100-SXM4-80GB", 312e12, 2.039e12), ("TPU v4", 275e12, 1.2e12), ("TPU v5 lite", 197e12, 0.819e12),
    ("TPU v5e", 197e12, 0.819e12), ("TPU v5", 459e12, 2.765e12), ("TPU v5p", 459e12, 2.765e12),
    ("TPU v6 lite", 918e12, 1.64e12), ("TPU v6e", 918e12, 1.64e12)])
def test_peak_flops_and_bandwidth_of_the_datasheets(kind, peak, bandwidth):
  assert flops.peak_flops(kind) == peak and flops.peak_bandwidth(kind) == bandwidth


def test_bandwidth_tells_the_h100_pcie_from_the_sxm_card_and_knows_no_cpu():
  assert flops.peak_bandwidth("NVIDIA H100 PCIe") < flops.peak_bandwidth("NVIDIA H100 80GB HBM3") \
      < flops.peak_bandwidth("NVIDIA H200")
  assert flops.peak_bandwidth("cpu") is None and flops.peak_flops("cpu") is None


def test_mfu():
  step = flops.train_step_flops(get_config("default").model, 512, 512, 511) * 32
  assert flops.mfu(step, 0.2, "NVIDIA H100 80GB HBM3", 1) == pytest.approx(step / (0.2 * 989e12))
  assert flops.mfu(step, 0.2, "TPU v5p", 4) == pytest.approx(step / (0.2 * 459e12 * 4))


@pytest.mark.parametrize("kind", ["cpu", "TPU v4 lite", "NVIDIA GeForce RTX 4090", ""])
def test_mfu_unknown_device_is_none(kind):
  assert flops.mfu(1e15, 1.0, kind, 1) is None
