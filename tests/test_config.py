"""Presets parse and validate; every inconsistent setting is rejected with a message naming the fix."""

import pytest

from configs import base
from pixelhdm_jax.config import validate
from pixelhdm_jax.errors import ConfigError


@pytest.mark.parametrize("preset", base.PRESETS)
def test_presets_validate(preset):
  validate(base.get_config(preset))


def test_unknown_preset():
  with pytest.raises(ValueError, match="unknown preset 'huge'.*tiny, small, default, large"):
    base.get_config("huge")


BAD_MODEL = [
    ({"hidden_dim": 100}, r"model.hidden_dim=100 is not divisible by model.num_heads=16"),
    ({"num_kv_heads": 3}, r"model.num_heads=16 is not divisible by model.num_kv_heads=3"),
    ({"mrope_split": (16, 24, 16)}, r"model.mrope_split=\(16, 24, 16\) must be three sizes summing to head_dim=64"),
    ({"mrope_split": (15, 25, 24)}, r"every axis needs a positive even size"),
    ({"attention": "flash3"}, r"model.attention='flash3' is not an attention kernel"),
    ({"remat_policy": "some"}, r"model.remat_policy='some' is unknown"),
    ({"compute_dtype": "fp8"}, r"model.compute_dtype='fp8' is unknown"),
    ({"pixel_adaln": "mid"}, r"model.pixel_adaln='mid' is unknown: choose one of \('pre', 'post'\)"),
    ({"repa_align_layer": 17}, r"model.repa_align_layer=17 must be in \[1, model.patch_layers=16\]"),
    ({"patch_layers": 0}, r"model.patch_layers must be a positive integer"),
    ({"mlp_ratio": 0.0}, r"model.mlp_ratio must be positive"),
]


@pytest.mark.parametrize("overrides,message", BAD_MODEL)
def test_model_errors(overrides, message):
  config = base.get_config("default")
  config.model.update(overrides)
  with pytest.raises(ConfigError, match=message):
    validate(config)


def test_text_length_over_mrope_table():
  config = base.get_config("default")
  config.text.max_length = 600
  with pytest.raises(ConfigError, match=r"text.max_length=600 exceeds the mRoPE text table"):
    validate(config)


@pytest.mark.parametrize("shape,message", [((2, -1, -1), "at most one -1"), ((0, 1, 1), "sizes must be >= 1"),
                                           ((1, 1), "must be three integers")])
def test_mesh_errors(shape, message):
  config = base.get_config("tiny")
  config.mesh.shape = shape
  with pytest.raises(ConfigError, match=message):
    validate(config)


def test_resolution_over_the_mrope_tables():
  config = base.get_config("default")
  config.data.max_resolution = 4096
  with pytest.raises(ConfigError, match=r"data.max_resolution=4096 is more than the mRoPE tables hold .*"
                                        r"use at most 2048"):
    validate(config)

