"""Inference checkpoints: what `load_for_inference` reads back, including configs written before a rename."""

import asyncio
import gc
import json
import logging

import flax.linen as nn
import jax
import numpy as np
import pytest

from configs import base
from pixelhdm_jax.config import validate
from pixelhdm_jax.models.pixelhdm import PixelHDM, abstract_params
from pixelhdm_jax.weights.inference import load_for_inference, quiet_failed_restore, save_for_inference


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


def _orphan_a_failed_read(source: str) -> None:
  """A read task that fails in a function of the file `source` and that nobody awaits, collected after its loop
  closed (as Orbax leaves the other reads of a restore whose first read failed)."""
  namespace = {}
  exec(compile("async def read():\n  raise ValueError('OUT_OF_RANGE: Requested byte range is not valid')\n",
               source, "exec"), namespace)
  loop = asyncio.new_event_loop()
  task = loop.create_task(namespace["read"]())
  loop.run_until_complete(asyncio.sleep(0))
  loop.close()
  del task
  gc.collect()


def test_a_failed_restore_silences_the_reads_nobody_awaited(caplog, monkeypatch):
  orbax_file = "/site-packages/orbax/checkpoint/_src/serialization/serialization.py"
  monkeypatch.setattr(logging.getLogger("asyncio"), "filters", [])  # as in a fresh process
  _orphan_a_failed_read(orbax_file)
  assert "Task exception was never retrieved" in caplog.text  # asyncio reports it, with a traceback
  caplog.clear()
  with pytest.raises(ValueError), quiet_failed_restore():
    raise ValueError("a restore failed")
  _orphan_a_failed_read(orbax_file)
  assert "never retrieved" not in caplog.text and "Traceback" not in caplog.text
  _orphan_a_failed_read("/work/some_other_library.py")  # not a read of Orbax: still reported
  assert "Task exception was never retrieved" in caplog.text
