"""DINOv3 port vs transformers' PyTorch `DINOv3ViTModel` (float32, tiny random weights, non-square images)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pixelhdm_jax.encoders.dinov3 import IMAGENET_MEAN, IMAGENET_STD, DINOv3ViT, load_dinov3
from tests.helpers import require_torch

torch = require_torch()

SHAPES = ((2, 32, 48), (1, 48, 16))  # (B, H, W): wide and tall grids


def images(batch, height, width, seed=0):
  return np.random.default_rng(seed).uniform(-1, 1, (batch, height, width, 3)).astype(np.float32)


def torch_outputs(model, x):
  """HF's outputs for [-1, 1] NHWC images, normalised as the original's preprocessing."""
  pixels = ((x + 1) / 2 - np.array(IMAGENET_MEAN, np.float32)) / np.array(IMAGENET_STD, np.float32)
  with torch.no_grad():
    return model(pixel_values=torch.tensor(pixels.transpose(0, 3, 1, 2)))


def torch_patch_tokens(model, x):
  """HF's normed patch tokens (after the CLS and register tokens)."""
  return torch_outputs(model, x).last_hidden_state[:, 1 + model.config.num_register_tokens:].numpy()


def meta_state_dict(model):
  """The official Meta `.pth` names (facebookresearch/dinov3) for an HF model's weights: fused qkv, masked k bias."""
  hf = {k.removeprefix("model."): v.detach().clone() for k, v in model.state_dict().items()}
  head_dim = model.config.hidden_size // model.config.num_attention_heads
  meta = {"cls_token": hf["embeddings.cls_token"], "mask_token": hf["embeddings.mask_token"][0],
          "storage_tokens": hf["embeddings.register_tokens"],
          "patch_embed.proj.weight": hf["embeddings.patch_embeddings.weight"],
          "patch_embed.proj.bias": hf["embeddings.patch_embeddings.bias"],
          "norm.weight": hf["norm.weight"], "norm.bias": hf["norm.bias"],
          "rope_embed.periods": 100.0 ** (torch.arange(head_dim // 4) * 4 / head_dim)}
  for i in range(model.config.num_hidden_layers):
    p, b = f"layer.{i}.", f"blocks.{i}."
    q_bias, v_bias = hf[p + "attention.q_proj.bias"], hf[p + "attention.v_proj.bias"]
    meta.update({
        b + "attn.qkv.weight": torch.cat([hf[p + f"attention.{n}_proj.weight"] for n in "qkv"]),
        b + "attn.qkv.bias": torch.cat([q_bias, torch.zeros_like(q_bias), v_bias]),
        b + "attn.qkv.bias_mask": torch.cat([torch.ones_like(q_bias), torch.zeros_like(q_bias),
                                             torch.ones_like(q_bias)]),
        b + "attn.proj.weight": hf[p + "attention.o_proj.weight"],
        b + "attn.proj.bias": hf[p + "attention.o_proj.bias"],
        b + "ls1.gamma": hf[p + "layer_scale1.lambda1"], b + "ls2.gamma": hf[p + "layer_scale2.lambda1"],
        b + "mlp.fc1.weight": hf[p + "mlp.up_proj.weight"], b + "mlp.fc1.bias": hf[p + "mlp.up_proj.bias"],
        b + "mlp.fc2.weight": hf[p + "mlp.down_proj.weight"], b + "mlp.fc2.bias": hf[p + "mlp.down_proj.bias"],
    })
    for n in ("norm1", "norm2"):
      meta.update({b + f"{n}.weight": hf[p + f"{n}.weight"], b + f"{n}.bias": hf[p + f"{n}.bias"]})
  return meta


@pytest.mark.parametrize("shape", SHAPES)
def test_matches_transformers(hf_dinov3, shape):
  directory, model = hf_dinov3
  module, params = load_dinov3(directory)
  x = images(*shape)
  out = jax.jit(module.apply)({"params": params}, x)
  grid = (shape[1] // 16) * (shape[2] // 16)
  assert out.shape == (shape[0], grid, 32)
  np.testing.assert_allclose(np.asarray(out), torch_patch_tokens(model, x), atol=2e-5, rtol=1e-5)


def test_cls_token_matches_transformers_pooler_output(hf_dinov3):
  directory, model = hf_dinov3
  module, params = load_dinov3(directory)
  x = images(*SHAPES[0], seed=2)
  out = jax.jit(lambda p, x: module.apply({"params": p}, x, cls_only=True))(params, x)
  np.testing.assert_allclose(np.asarray(out), torch_outputs(model, x).pooler_output.numpy(), atol=2e-5, rtol=1e-5)


def test_meta_pth_matches_transformers(hf_dinov3, tmp_path):
  _, model = hf_dinov3
  path = tmp_path / "dinov3_vit_tiny.pth"
  torch.save(meta_state_dict(model), path)
  module, params = load_dinov3(path)
  assert module.arch.num_heads == 2 and module.arch.num_register_tokens == 4
  x = images(*SHAPES[0], seed=1)
  out = jax.jit(module.apply)({"params": params}, x)
  np.testing.assert_allclose(np.asarray(out), torch_patch_tokens(model, x), atol=2e-5, rtol=1e-5)


def test_bfloat16_compute_is_close_to_float32(hf_dinov3):
  """bf16 activations (float32 params, LayerNorm statistics in float32): max error below 3% of the scale."""
  module, params = load_dinov3(hf_dinov3[0])
  x = images(*SHAPES[0], seed=2)
  f32 = np.asarray(jax.jit(module.apply)({"params": params}, x))
  bf16 = jax.jit(DINOv3ViT(module.arch, dtype=jnp.bfloat16).apply)({"params": params}, x)
  assert bf16.dtype == jnp.bfloat16
  error = np.abs(np.asarray(bf16, np.float32) - f32)
  assert error.max() < 0.03 * np.abs(f32).max(), (error.max(), np.abs(f32).max())
