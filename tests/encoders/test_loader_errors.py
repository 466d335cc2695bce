"""Every checkpoint problem a user can hit gives a `EncoderCheckpointError` (or `ConfigError`) naming the fix."""

import json
import shutil

import ml_collections
import numpy as np
import pytest
from safetensors.numpy import save_file

from configs import base
from pixelhdm_jax.config import validate
from pixelhdm_jax.encoders.dinov3 import load_dinov3
from pixelhdm_jax.encoders.hf_checkpoint import EncoderCheckpointError, open_safetensors, resolve_checkpoint
from pixelhdm_jax.encoders.qwen3 import load_qwen3
from pixelhdm_jax.encoders.teacher import build_dino_teacher
from pixelhdm_jax.encoders.text import build_text_encoder
from pixelhdm_jax.encoders.tokenizers import HFTokenizer
from pixelhdm_jax.errors import ConfigError
from tests.helpers import require_torch


def copy_checkpoint(source, target, config=None, tensors=None):
  """A copy of `source` with edited config.json fields and/or a rewritten tensor dict."""
  target.mkdir()
  settings = json.loads((source / "config.json").read_text())
  settings.update(config or {})
  (target / "config.json").write_text(json.dumps(settings))
  weights = {name: np.array(value) for name, value in open_safetensors(source).items()}
  save_file(tensors(weights) if tensors else weights, str(target / "model.safetensors"))
  return target


def test_missing_directory(tmp_path):
  with pytest.raises(EncoderCheckpointError, match="does not exist or is not a directory"):
    load_qwen3(tmp_path / "absent")


def test_missing_config(tmp_path):
  with pytest.raises(EncoderCheckpointError, match="config.json is missing"):
    load_qwen3(tmp_path)


def test_missing_weights(hf_qwen3, tmp_path):
  shutil.copy(hf_qwen3[0] / "config.json", tmp_path)
  with pytest.raises(EncoderCheckpointError, match="no weights in .*expected model.safetensors"):
    load_qwen3(tmp_path)


def test_missing_shard(hf_qwen3, tmp_path):
  hf_qwen3[1].save_pretrained(tmp_path, max_shard_size="50KB")
  next(tmp_path.glob("model-00002-of-*.safetensors")).unlink()
  with pytest.raises(EncoderCheckpointError, match="lists shard files that are missing: .*model-00002-of-"):
    load_qwen3(tmp_path)


def test_wrong_architecture(hf_qwen3, hf_dinov3):
  with pytest.raises(EncoderCheckpointError, match="wrong architecture .*'dinov3_vit'.*expected model_type='qwen3'"):
    load_qwen3(hf_dinov3[0])
  with pytest.raises(EncoderCheckpointError, match="wrong architecture .*'qwen3'.*expected model_type='dinov3_vit'"):
    load_dinov3(hf_qwen3[0])


def test_wrong_architecture_name(hf_qwen3, tmp_path):
  copy_checkpoint(hf_qwen3[0], tmp_path / "ckpt", config={"architectures": ["Qwen3ForSequenceClassification"]})
  with pytest.raises(EncoderCheckpointError, match="wrong architecture .*Qwen3ForSequenceClassification"):
    load_qwen3(tmp_path / "ckpt")


def test_shape_mismatch_names_the_tensor(hf_qwen3, tmp_path):
  copy_checkpoint(hf_qwen3[0], tmp_path / "ckpt", config={"intermediate_size": 80})
  with pytest.raises(EncoderCheckpointError, match=r"shape mismatch for tensor 'layers\.0\.mlp\.gate_proj\.weight'"
                                            r".*has \(96, 64\).*expects \(80, 64\)"):
    load_qwen3(tmp_path / "ckpt")


def test_missing_tensor_is_named(hf_qwen3, tmp_path):
  copy_checkpoint(hf_qwen3[0], tmp_path / "ckpt", tensors=lambda w: {k: v for k, v in w.items() if k != "norm.weight"})
  with pytest.raises(EncoderCheckpointError, match=r"missing tensors \['norm\.weight'\], unexpected tensors \[\]"):
    load_qwen3(tmp_path / "ckpt")


def test_unexpected_tensor_is_named(hf_dinov3, tmp_path):
  copy_checkpoint(hf_dinov3[0], tmp_path / "ckpt", tensors=lambda w: {**w, "head.weight": np.zeros(3, np.float32)})
  with pytest.raises(EncoderCheckpointError, match=r"missing tensors \[\], unexpected tensors \['head\.weight'\]"):
    load_dinov3(tmp_path / "ckpt")


def test_unsupported_qwen3_setting(hf_qwen3, tmp_path):
  copy_checkpoint(hf_qwen3[0], tmp_path / "ckpt",
                  config={"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e6, "factor": 4.0}})
  with pytest.raises(EncoderCheckpointError, match="unsupported Qwen3 config settings: rope type='yarn'"):
    load_qwen3(tmp_path / "ckpt")


def test_meta_pth_errors(tmp_path):
  with pytest.raises(EncoderCheckpointError, match="checkpoint file .*absent.pth' does not exist"):
    load_dinov3(tmp_path / "absent.pth")
  torch = require_torch()
  torch.save({"encoder.weight": torch.zeros(2)}, tmp_path / "other.pth")
  with pytest.raises(EncoderCheckpointError,
                     match=r"wrong architecture .*not a DINOv3 ViT state dict \(missing \['cls"):
    load_dinov3(tmp_path / "other.pth")


def test_empty_or_wrong_path_names_the_field(tmp_path):
  text = base.get_config("default").text
  with pytest.raises(EncoderCheckpointError, match=r"text\.path is empty: set --config\.text\.path .*"
                                            r"--config\.text\.allow_download=True to fetch Qwen/Qwen3-0\.6B"):
    resolve_checkpoint(text, "text", "Qwen3")
  dino = ml_collections.ConfigDict(dict(base.get_config("default").dino), type_safe=False)
  dino.path = str(tmp_path / "absent")
  with pytest.raises(EncoderCheckpointError, match=r"dino\.path='.*absent' does not exist: point --config\.dino\.path"):
    resolve_checkpoint(dino, "dino", "DINOv3")
  with pytest.raises(EncoderCheckpointError, match=r"dino\.path is empty"):
    build_dino_teacher(base.get_config("default"))


def test_tokenizer_directory_without_tokenizer(hf_qwen3):
  with pytest.raises(EncoderCheckpointError, match="no usable tokenizer files in"):
    HFTokenizer(hf_qwen3[0], 8)


def test_checkpoint_that_does_not_fit_the_config(hf_qwen3, monkeypatch):
  monkeypatch.setattr("pixelhdm_jax.encoders.text.build_tokenizer", lambda text: None)
  config = base.get_config("tiny")
  config.text.source, config.text.path = "pretrained", str(hf_qwen3[0])
  config.model.text_dim = 32
  with pytest.raises(ConfigError, match="64 wide but model.text_dim=32: set --config.model.text_dim=64"):
    build_text_encoder(config)
  config.model.text_dim, config.text.hidden_layer = 64, -4
  with pytest.raises(ConfigError, match=r"text\.hidden_layer=-4 is out of range for a 3-layer Qwen3"):
    build_text_encoder(config)


@pytest.mark.parametrize("field, value, message", [
    ("text.source", "hub", r"text\.source='hub' is unknown: choose one of \('random', 'random_full', 'pretrained'\)"),
    ("dino.compute_dtype", "fp8", r"dino\.compute_dtype='fp8' is unknown"),
    ("text.hidden_layer", 0, r"text\.hidden_layer=0 must be a negative Hugging Face hidden_states index"),
])
def test_validate_rejects_bad_encoder_settings(field, value, message):
  config = base.get_config("tiny")
  section, name = field.split(".")
  config[section][name] = value
  with pytest.raises(ConfigError, match=message):
    validate(config)
