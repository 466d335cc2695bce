"""Inference checkpoints: what `load_for_inference` reads back, including configs written before a rename."""

import json

import flax.linen as nn
import jax
import numpy as np

from configs import base
from pixelhdm_jax.config import validate
from pixelhdm_jax.models.pixelhdm import PixelHDM, abstract_params
from pixelhdm_jax.weights.inference import load_for_inference, save_for_inference


def test_configs_of_older_checkpoints_load_under_the_new_names(tmp_path):
  config = base.get_config("tiny")
  config.sample.solver, config.data.order = "dpmpp_2m", "sequential"
  shapes = nn.unbox(abstract_params(PixelHDM.from_config(config.model)))
  params = jax.tree.map(lambda x: np.ones(x.shape, x.dtype), shapes)
  directory = save_for_inference(tmp_path, config, params, step=1)
  metadata = directory / "1" / "config" / "metadata"
  saved = json.loads(metadata.read_text())
  saved["sample"]["sampler"] = saved["sample"].pop("solver")  # as written before the rename
  saved["data"]["sampler"] = saved["data"].pop("order")
  del saved["evaluation"], saved["train"]["eval_every"], saved["data"]["allow_upscale"]  # written before they existed
  metadata.write_text(json.dumps(saved))
  loaded, weights, step = load_for_inference(directory)
  assert (loaded.sample.solver, loaded.data.order, step) == ("dpmpp_2m", "sequential", 1)
  assert "sampler" not in loaded.sample and "sampler" not in loaded.data
  assert loaded.train.eval_every == 0 and validate(loaded) is loaded  # no evaluation, as when it was written
  jax.tree.map(np.testing.assert_array_equal, weights, params)
