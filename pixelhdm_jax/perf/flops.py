"""Analytic model FLOPs per image and MFU (docs/original.md §2.10; maxtext's definition of MFU).

Model FLOPs count the matmuls of the network: 2 FLOPs per multiply-add, non-causal attention as
QK^T + AV = 4 S^2 D per layer forward. Element-wise work (norms, softmax, RoPE, gates) is left out, and so
is remat recompute: a training step is 3x the forward (forward + backward w.r.t. activations and
weights). The frozen encoders only run forward and are counted apart (`encoder_flops`).
MFU = model FLOPs per step / (step time x peak FLOP/s of the device kind x number of devices).
"""

from __future__ import annotations

from typing import NamedTuple

import ml_collections

from pixelhdm_jax.encoders.dinov3 import DINOV3_VITB16, DINOv3Arch
from pixelhdm_jax.encoders.qwen3 import QWEN3_0_6B, Qwen3Arch
from pixelhdm_jax.models.adaln import PIXEL_ADALN_BIAS

TRAIN_STEP_FACTOR = 3  # forward + backward (2x), model FLOPs only


class ForwardFlops(NamedTuple):
  """FLOPs of one PixelHDM forward for one image, by component."""
  patch_linear: float  # q/k/v/o/gate projections and SwiGLU of the patch blocks
  patch_attention: float  # QK^T and AV over the joint image+text sequence
  pixel_linear: float  # PixelwiseAdaLN, compress, compaction projections, expand, pixel SwiGLU
  pixel_attention: float  # token-compaction attention over the patch tokens
  embeddings: float  # patch/pixel embeddings, output head, text projection
  conditioning: float  # time MLP and TokenAdaLN (per image, not per token)

  @property
  def total(self) -> float:
    return sum(self)


def _attention_projections(width: int, num_heads: int, num_kv_heads: int) -> int:
  """MACs per token of q, k, v, out projections and the head-wise gate of `GatedAttention`."""
  head_dim = width // num_heads
  return 2 * width * num_heads * head_dim + 2 * width * num_kv_heads * head_dim + width * num_heads


def forward_flops(model: ml_collections.ConfigDict, height: int, width: int, text_len: int) -> ForwardFlops:
  """FLOPs of one forward for one `height` x `width` image with `text_len` (padded) text tokens."""
  d, p = model.hidden_dim, model.patch_size
  pixels, d_pix = p * p, model.pixel_dim
  num_patches = (height // p) * (width // p)
  seq = num_patches + text_len
  projections = _attention_projections(d, model.num_heads, model.num_kv_heads)
  patch_token = projections + 3 * d * int(d * model.mlp_ratio)
  pixel_token = (d * pixels * d_pix  # cond_expand
                 + pixels * d_pix * len(PIXEL_ADALN_BIAS[model.pixel_adaln]) * d_pix  # param_gen
                 + 2 * pixels * d_pix * d  # compress and expand
                 + projections  # compaction attention
                 + pixels * 3 * d_pix * int(d_pix * model.mlp_ratio))  # pixel SwiGLU
  embed_token = pixels * 3 * model.bottleneck_dim + model.bottleneck_dim * d + 2 * pixels * 3 * d_pix
  text_proj = 0 if model.text_dim == d else model.text_dim * d * (text_len + 1)
  conditioning = model.time_embed_dim * d + d * d + model.patch_layers * d * 6 * d
  macs = ForwardFlops(
      patch_linear=model.patch_layers * patch_token * seq,
      patch_attention=model.patch_layers * 2 * seq * seq * d,
      pixel_linear=model.pixel_layers * pixel_token * num_patches,
      pixel_attention=model.pixel_layers * 2 * num_patches * num_patches * d,
      embeddings=embed_token * num_patches + text_proj,
      conditioning=conditioning)
  return ForwardFlops(*(2.0 * m for m in macs))


def train_step_flops(model: ml_collections.ConfigDict, height: int, width: int, text_len: int) -> float:
  """Model FLOPs of one training step per image (the network only; add `encoder_flops` if run in-step)."""
  return TRAIN_STEP_FACTOR * forward_flops(model, height, width, text_len).total


class EncoderShape(NamedTuple):
  """The matmul shapes of a frozen transformer encoder."""
  layers: int
  hidden: int
  mlp_hidden: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  gated_mlp: bool  # SwiGLU (3 matrices) or GELU MLP (2)


def _qwen3_shape(arch: Qwen3Arch, hidden_layer: int = -1) -> EncoderShape:
  """The shapes of the Qwen3 layers that produce `hidden_states[hidden_layer]`."""
  return EncoderShape(layers=arch.layers_run(hidden_layer), hidden=arch.hidden_size,
                      mlp_hidden=arch.intermediate_size, num_heads=arch.num_heads, num_kv_heads=arch.num_kv_heads,
                      head_dim=arch.head_dim, gated_mlp=True)


def _dinov3_shape(arch: DINOv3Arch) -> EncoderShape:
  """The shapes of a DINOv3 ViT's blocks (multi-head attention: as many k/v heads as query heads)."""
  return EncoderShape(layers=arch.num_layers, hidden=arch.hidden_size, mlp_hidden=arch.intermediate_size,
                      num_heads=arch.num_heads, num_kv_heads=arch.num_heads, head_dim=arch.head_dim,
                      gated_mlp=arch.gated_mlp)


def encoder_flops(shape: EncoderShape, seq: int) -> float:
  """Forward FLOPs of the encoder's blocks on `seq` tokens (embedding lookups and patchify left out)."""
  q_width = shape.num_heads * shape.head_dim
  per_token = (2 * shape.hidden * q_width + 2 * shape.hidden * shape.num_kv_heads * shape.head_dim
               + (3 if shape.gated_mlp else 2) * shape.hidden * shape.mlp_hidden)
  attention = 2 * seq * seq * q_width
  return 2.0 * shape.layers * (per_token * seq + attention)


def text_encoder_flops(text_len: int, arch: Qwen3Arch = QWEN3_0_6B, hidden_layer: int = -1) -> float:
  """Qwen3 forward FLOPs for one prompt of `text_len` tokens, up to `hidden_states[hidden_layer]`."""
  return encoder_flops(_qwen3_shape(arch, hidden_layer), text_len)


def dino_flops(height: int, width: int, arch: DINOv3Arch = DINOV3_VITB16) -> float:
  """DINOv3 forward FLOPs for one image (patch embedding included; CLS and register tokens attend too)."""
  p = arch.patch_size
  patches = (height // p) * (width // p)
  patchify = 2.0 * patches * p * p * 3 * arch.hidden_size
  return patchify + encoder_flops(_dinov3_shape(arch), patches + 1 + arch.num_register_tokens)


# Dense bf16 peak FLOP/s and HBM bytes/s per chip (datasheets), matched against `jax.Device.device_kind`,
# lower-cased: TPU kinds exactly, GPU kinds by the first name they contain.
TPU_PEAK_FLOPS = {"tpu v4": 275e12, "tpu v5 lite": 197e12, "tpu v5e": 197e12, "tpu v5": 459e12,
                  "tpu v5p": 459e12, "tpu v6 lite": 918e12, "tpu v6e": 918e12}
GPU_PEAK_FLOPS = (("h100 pcie", 756e12), ("h100", 989e12), ("h200", 989e12), ("a100", 312e12))
TPU_BANDWIDTH = {"tpu v4": 1.2e12, "tpu v5 lite": 0.819e12, "tpu v5e": 0.819e12, "tpu v5": 2.765e12,
                 "tpu v5p": 2.765e12, "tpu v6 lite": 1.64e12, "tpu v6e": 1.64e12}
GPU_BANDWIDTH = (("h100 pcie", 2.0e12), ("h100", 3.35e12), ("h200", 4.8e12), ("a100", 2.039e12))


def _per_device(device_kind: str, tpus: dict[str, float], gpus: tuple[tuple[str, float], ...]) -> float | None:
  kind = device_kind.strip().lower()
  if kind in tpus:
    return tpus[kind]
  return next((value for name, value in gpus if name in kind), None)


def peak_flops(device_kind: str) -> float | None:
  """Peak dense bf16 FLOP/s of one device of `device_kind`, or None if the kind is not in the table."""
  return _per_device(device_kind, TPU_PEAK_FLOPS, GPU_PEAK_FLOPS)


def peak_bandwidth(device_kind: str) -> float | None:
  """Memory (HBM) bytes per second of one device of `device_kind`, or None if the kind is not in the table."""
  return _per_device(device_kind, TPU_BANDWIDTH, GPU_BANDWIDTH)


def mfu(model_flops_per_step: float, step_time: float, device_kind: str, num_devices: int) -> float | None:
  """Model FLOPs utilisation in [0, 1]; None for an unknown device kind or a non-positive step time."""
  peak = peak_flops(device_kind)
  if peak is None or step_time <= 0 or num_devices <= 0:
    return None
  return model_flops_per_step / (step_time * peak * num_devices)


class Throughput(NamedTuple):
  """What a step time means: images per second, model TFLOP/s per device and MFU (None: unknown peak)."""
  images_per_s: float
  tflops_per_device: float
  mfu: float | None


def throughput(flops_per_step: float, step_time: float, images_per_step: int, device_kind: str,
               num_devices: int) -> Throughput:
  """The rates of a step of `step_time` seconds that does `flops_per_step` FLOPs on `images_per_step` images
  over `num_devices` devices of `device_kind` (the training loop's log and the benchmark)."""
  return Throughput(images_per_step / step_time, flops_per_step / step_time / num_devices / 1e12,
                    mfu(flops_per_step, step_time, device_kind, num_devices))
