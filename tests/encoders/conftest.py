"""Tiny random Hugging Face Qwen3 and DINOv3 models, saved with `save_pretrained` (no download)."""

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


def randomize(model, seed: int):
  """Seeded weights far from the HF init (std 0.02, unit norms), so every tensor matters in a parity test."""
  generator = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, param in model.named_parameters():
      noise = torch.randn(param.shape, generator=generator)
      is_scale = name.endswith(("norm.weight", "norm1.weight", "norm2.weight", "lambda1"))
      param.copy_(1.0 + 0.2 * noise if is_scale else 0.15 * noise)
  return model.eval()


def qwen3_config(**overrides):
  fields = dict(vocab_size=257, hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
                num_key_value_heads=2, head_dim=16, rms_norm_eps=1e-6,
                rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0})
  fields.update(overrides)
  return transformers.Qwen3Config(**fields)


def dinov3_config(**overrides):
  fields = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                num_register_tokens=4, patch_size=16, image_size=32)
  fields.update(overrides)
  return transformers.DINOv3ViTConfig(**fields)


@pytest.fixture(scope="session")
def hf_qwen3(tmp_path_factory):
  """(directory, torch Qwen3Model) of a 3-layer, 64-wide random Qwen3."""
  model = randomize(transformers.Qwen3Model(qwen3_config()), seed=0)
  directory = tmp_path_factory.mktemp("qwen3")
  model.save_pretrained(directory)
  return directory, model


@pytest.fixture(scope="session")
def hf_dinov3(tmp_path_factory):
  """(directory, torch DINOv3ViTModel) of a 2-layer, 32-wide random DINOv3 with 4 registers."""
  model = randomize(transformers.DINOv3ViTModel(dinov3_config()), seed=1)
  directory = tmp_path_factory.mktemp("dinov3")
  model.save_pretrained(directory)
  return directory, model
