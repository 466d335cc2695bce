"""Fine-tuning (`train.init_from`): a new run starts from another checkpoint's weights, fresh optimizer, step 0."""

import json

import flax.linen as nn
import jax
import numpy as np
import pytest

from configs import base
from pixelhdm_jax import parallel
from pixelhdm_jax.models.pixelhdm import PixelHDM, abstract_params
from pixelhdm_jax.train.init_from import initialize_from
from pixelhdm_jax.train.loop import train_and_evaluate
from pixelhdm_jax.train.setup import build_trainer
from pixelhdm_jax.weights.inference import CheckpointError, load_for_inference, save_for_inference
from tests.helpers import tiny_inference_checkpoint, tiny_run_config
from tests.train.test_loop import _assert_trees_equal, _checkpoint


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A tiny run of 3 steps (its checkpoint 3 holds weights, EMA and optimizer state that differ from init)."""
  workdir = tmp_path_factory.mktemp("trained")
  train_and_evaluate(tiny_run_config(num_steps=3), workdir)
  return workdir


def _initialized(config, path):
  """(fresh state, the state after `initialize_from(path)`) of the run `config` on its mesh."""
  mesh, rules = parallel.create_mesh(config.mesh), parallel.logical_rules(config.mesh)
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    trainer = build_trainer(config, mesh, rules)
    fresh = trainer.new_state(jax.random.key(1))
    return fresh, initialize_from(fresh, str(path), config)


def test_weights_and_ema_of_a_workdir_with_a_fresh_optimizer(trained):
  saved = _checkpoint(trained, 3)
  fresh, state = _initialized(tiny_run_config(), trained)
  _assert_trees_equal(jax.device_get(state.params["model"]), saved["model"])
  _assert_trees_equal(jax.device_get(state.ema), saved["ema"])
  assert not np.array_equal(jax.tree.leaves(saved["model"])[0], jax.tree.leaves(saved["ema"])[0])
  _assert_trees_equal(jax.device_get(state.opt_state), jax.device_get(fresh.opt_state))
  _assert_trees_equal(jax.device_get(state.params["repa_projector"]), jax.device_get(fresh.params["repa_projector"]))
  assert int(state.step) == 0
  for new, old in zip(jax.tree.leaves(state.params["model"]), jax.tree.leaves(fresh.params["model"])):
    assert new.sharding == old.sharding  # restored straight into the run's (fsdp over 8 devices) shardings


def test_an_export_starts_the_weights_and_the_ema(tmp_path):
  export = tiny_inference_checkpoint(tmp_path / "export", step=7)
  _, weights, _ = load_for_inference(export)
  _, state = _initialized(tiny_run_config(), export)
  _assert_trees_equal(jax.device_get(state.params["model"]), jax.device_get(weights))
  _assert_trees_equal(jax.device_get(state.ema), jax.device_get(weights))
  pointers = {leaf.addressable_shards[0].data.unsafe_buffer_pointer() for leaf in jax.tree.leaves(state.ema)}
  assert not pointers & {leaf.addressable_shards[0].data.unsafe_buffer_pointer()
                         for leaf in jax.tree.leaves(state.params["model"])}  # the step donates both


def test_weights_of_another_network_name_the_parameters(tmp_path):
  other = base.get_config("tiny")
  other.model.bottleneck_dim = 16
  params = jax.eval_shape(lambda: abstract_params(PixelHDM.from_config(other.model)))
  params = jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), parallel.strip_boxes(params))
  save_for_inference(tmp_path / "other", other, params)
  with pytest.raises(CheckpointError, match=r"do not fit this run's network .*: checkpoint \([\d, ]*16\), this "
                                            r"run \([\d, ]*32\)"):
    _initialized(tiny_run_config(), tmp_path / "other")


def test_missing_checkpoint_is_an_error_naming_it(tmp_path):
  with pytest.raises(CheckpointError, match="not a training workdir or a checkpoint directory"):
    _initialized(tiny_run_config(), tmp_path / "nothing")


def test_a_fine_tune_trains_from_step_0_and_resuming_ignores_init_from(trained, tmp_path, caplog):
  config = tiny_run_config(num_steps=2, init_from=str(trained))
  train_and_evaluate(config, tmp_path)
  steps = [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()
           if '"loss"' in line]
  assert steps == [1, 2]
  config.train.num_steps = 3
  with caplog.at_level("INFO"):
    train_and_evaluate(config, tmp_path)
  assert "applies to a new run only" in caplog.text
  assert int(_checkpoint(tmp_path, 3)["train_state"]["step"]) == 3
