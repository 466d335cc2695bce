"""Tiny random Hugging Face Qwen3 and DINOv3 models, saved with `save_pretrained` (no download; torch needed)."""

import pytest
import transformers

from tests.helpers import hf_dinov3_config, hf_qwen3_config, randomize, require_torch


@pytest.fixture(scope="session")
def hf_qwen3(tmp_path_factory):
  """(directory, torch Qwen3Model) of a 3-layer, 64-wide random Qwen3."""
  require_torch()
  model = randomize(transformers.Qwen3Model(hf_qwen3_config()), seed=0)
  directory = tmp_path_factory.mktemp("qwen3")
  model.save_pretrained(directory)
  return directory, model


@pytest.fixture(scope="session")
def hf_dinov3(tmp_path_factory):
  """(directory, torch DINOv3ViTModel) of a 2-layer, 32-wide random DINOv3 with 4 registers."""
  require_torch()
  model = randomize(transformers.DINOv3ViTModel(hf_dinov3_config()), seed=1)
  directory = tmp_path_factory.mktemp("dinov3")
  model.save_pretrained(directory)
  return directory, model
