"""launch/bench.py's library on the tiny preset: every reported key, with values that agree with each other."""

import json

import pytest
from absl import flags

from configs import base
from pixelhdm_jax.perf import bench, flops
from pixelhdm_jax.sample import solvers

SIZE, BATCH = 32, 8


@pytest.fixture(autouse=True, scope="module")
def _absl_flags():
  flags.FLAGS.mark_as_parsed()


def tiny_config():
  """The tiny preset as launch/gpu_bench.py --dry_run runs it (bf16, xla), so the compiled programs are shared."""
  config = base.get_config("tiny")
  config.model.attention = "xla"
  for section in (config.model, config.text, config.dino):
    section.compute_dtype = "bfloat16"
  config.sample.num_steps = 2
  return config


def _check_common(result, tmp_path):
  for key in bench.RESULT_KEYS:
    assert key in result, key
  assert result["height"] == result["width"] == SIZE and result["batch_size"] == BATCH
  assert result["compile_s"] > 0 and result["step_time_s"] > 0
  assert result["step_time_min_s"] <= result["step_time_s"] <= max(result["step_times_s"])
  assert result["images_per_s"] == pytest.approx(BATCH / result["step_time_s"])
  per_device = result["model_flops_per_step"] / result["step_time_s"] / result["num_devices"] / 1e12
  assert result["tflops_per_device"] == pytest.approx(per_device)
  assert result["tflops_per_device_with_encoders"] > result["tflops_per_device"] > 0
  assert result["mfu"] is None and result["mfu_with_encoders"] is None  # CPU: no peak FLOP/s in the table
  memory = result["memory_per_device"]
  assert result["peak_memory_bytes"] == memory["peak_bytes"] > memory["argument_bytes"] > 0
  assert result["device_kind"] == "cpu" and result["attention_kernel"] == "xla"
  assert result["compute_dtype"] == "bfloat16" and result["config"]["model"]["hidden_dim"] == 64
  path = bench.write_json(result, tmp_path / "result.json")
  assert json.loads(path.read_text())["step_time_s"] == result["step_time_s"]
  assert "| " + result["mode"] + " | 32x32 | 8 |" in bench.table([result])


def test_train_benchmark(tmp_path):
  config = tiny_config()
  result = bench.run(config, mode="train", height=SIZE, width=SIZE, batch_size=BATCH, steps=2, warmup=1)
  _check_common(result, tmp_path)
  assert result["mode"] == "train" and result["repa"] and len(result["step_times_s"]) == 2
  assert result["model_flops_per_step"] == BATCH * flops.train_step_flops(config.model, SIZE, SIZE, 32)
  assert result["memory_per_device"]["alias_bytes"] > 0  # the state is donated: outputs are written over it


def test_sample_benchmark(tmp_path):
  config = tiny_config()
  result = bench.run(config, mode="sample", height=SIZE, width=SIZE, batch_size=BATCH, steps=1, warmup=1)
  _check_common(result, tmp_path)
  passes = 2 * solvers.num_evaluations("heun", 2)  # CFG: conditional and unconditional passes
  assert result["network_passes"] == passes
  forward = flops.forward_flops(config.model, SIZE, SIZE, 32).total
  assert result["model_flops_per_step"] == pytest.approx(BATCH * passes * forward)


def test_bad_requests_are_clear_errors():
  with pytest.raises(ValueError, match="mode='eval' is unknown"):
    bench.run(tiny_config(), mode="eval", height=SIZE, width=SIZE, batch_size=BATCH)
  with pytest.raises(ValueError, match="batch_size=6 does not split over the 8 devices"):
    bench.run(tiny_config(), mode="train", height=SIZE, width=SIZE, batch_size=6)
  with pytest.raises(ValueError, match="height=40 is not a positive multiple of the patch size 16"):
    bench.run(tiny_config(), mode="train", height=40, width=SIZE, batch_size=BATCH)
