"""Real-size Qwen3-0.6B and DINOv3 ViT-B/16 initialise abstractly to the real models' parameter counts."""

import math

import jax
import pytest
import transformers

from pixelhdm_jax.encoders import dinov3, qwen3
from pixelhdm_jax.encoders.dinov3 import DINOv3Arch, DINOv3ViT
from pixelhdm_jax.encoders.qwen3 import Qwen3Arch, Qwen3Encoder
from tests.helpers import require_torch

# Qwen3-0.6B config.json: hidden 1024, 28 layers, 16 q / 8 kv heads of 128, MLP 3072, vocab 151936, tied.
QWEN3_EMBED = 151936 * 1024
QWEN3_LAYER = (1024 * 16 * 128 + 2 * 1024 * 8 * 128 + 16 * 128 * 1024  # q, k, v, o projections
               + 2 * 128  # q_norm, k_norm
               + 3 * 1024 * 3072  # SwiGLU gate, up, down
               + 2 * 1024)  # input and post-attention RMSNorm
QWEN3_0_6B = QWEN3_EMBED + 28 * QWEN3_LAYER + 1024  # + final norm = 596,049,920 (the embedding counted once)

# DINOv3 ViT-B/16: 768 wide, 12 layers, MLP 3072, 4 registers, patch 16, q/v/o and MLP biases, no k bias.
VIT_B_EMBED = 16 * 16 * 3 * 768 + 768 + 768 + 4 * 768  # patch conv + bias, CLS, registers
VIT_B_LAYER = (2 * 2 * 768  # norm1, norm2
               + 4 * 768 * 768 + 3 * 768  # q, k, v, o and the q, v, o biases
               + 2 * 768  # LayerScale 1 and 2
               + 2 * 768 * 3072 + 3072 + 768)  # MLP with biases
VIT_B_MASK_TOKEN = 768  # HF keeps the pre-training mask token; the teacher never masks, so the port has none
VIT_B16 = VIT_B_EMBED + 12 * VIT_B_LAYER + 2 * 768  # + final norm = 85,659,648


def count(tree):
  return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(tree))


def test_qwen3_0_6b_parameter_count():
  abstract = qwen3.abstract_params(Qwen3Encoder(Qwen3Arch()))
  assert count(abstract) == QWEN3_0_6B == 596_049_920
  torch = require_torch()
  config = transformers.Qwen3Config(vocab_size=151936, hidden_size=1024, intermediate_size=3072,
                                    num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=8,
                                    head_dim=128, tie_word_embeddings=True)
  with torch.device("meta"):
    assert sum(p.numel() for p in transformers.Qwen3Model(config).parameters()) == QWEN3_0_6B


def test_dinov3_vit_b16_parameter_count():
  abstract = dinov3.abstract_params(DINOv3ViT(DINOv3Arch()))
  assert count(abstract) == VIT_B16 == 85_659_648
  torch = require_torch()
  config = transformers.DINOv3ViTConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                        num_attention_heads=12, num_register_tokens=4, patch_size=16)
  with torch.device("meta"):
    hf_count = sum(p.numel() for p in transformers.DINOv3ViTModel(config).parameters())
  assert hf_count == VIT_B16 + VIT_B_MASK_TOKEN


@pytest.mark.parametrize("hidden_layer, layers", [(-1, 28), (-2, 27)])
def test_hidden_layer_cut_builds_only_the_layers_it_needs(hidden_layer, layers):
  abstract = qwen3.abstract_params(Qwen3Encoder(Qwen3Arch(), hidden_layer))
  assert abstract["layers"]["mlp"]["up_proj"]["kernel"].value.shape == (layers, 1024, 3072)
  assert ("norm" in abstract) == (hidden_layer == -1)
