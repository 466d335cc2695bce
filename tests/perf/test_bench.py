"""launch/bench.py's library on the tiny preset: every reported key, with values that agree with each other."""

import json
import time

import jax
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
  assert result["images_per_s"] > 0 and result["tflops_per_device_with_encoders"] > result["tflops_per_device"] > 0
  assert result["mfu"] is None and result["mfu_with_encoders"] is None  # CPU: no peak FLOP/s in the table
  memory = result["memory_per_device"]
  assert result["peak_memory_bytes"] == memory["peak_bytes"] > memory["argument_bytes"] > 0
  assert result["device_kind"] == "cpu" and result["attention_kernel"] == "xla"
  assert result["compute_dtype"] == "bfloat16" and result["config"]["model"]["hidden_dim"] == 64
  path = bench.write_json(result, tmp_path / "result.json")
  assert json.loads(path.read_text())["step_time_s"] == result["step_time_s"]
  assert "| " + result["mode"] + " | 32x32 | 8 |" in bench.table([result])


@pytest.fixture(scope="module")
def live_train():
  return bench.run(tiny_config(), mode="train", height=SIZE, width=SIZE, batch_size=BATCH, steps=2, warmup=1)


def test_train_benchmark(live_train, tmp_path):
  result = live_train
  _check_common(result, tmp_path)
  assert result["mode"] == "train" and result["repa"] and len(result["step_times_s"]) == 2
  assert result["model_flops_per_step"] == BATCH * flops.train_step_flops(tiny_config().model, SIZE, SIZE, 32)
  assert result["memory_per_device"]["alias_bytes"] > 0  # the state is donated: outputs are written over it
  assert result["flops_per_image"] * BATCH == result["model_flops_per_step"] + result["encoder_flops_per_step"]


@pytest.mark.slow
def test_cached_encoders_leave_their_flops_and_weights_out_of_the_step(live_train):
  """--text_cache --teacher_cache: the same network FLOPs, no encoder FLOPs, and a program without Qwen3's weights
  among its arguments (DINOv3's stay: the REPA-off program of a run shares them). A program of its own: 16 s."""
  cached = bench.run(tiny_config(), mode="train", height=SIZE, width=SIZE, batch_size=BATCH, steps=1, warmup=0,
                     text_cache=True, teacher_cache=True)
  assert cached["text_cache"] and cached["teacher_cache"] and cached["encoder_flops_per_step"] == 0
  assert cached["model_flops_per_step"] == live_train["model_flops_per_step"]
  assert cached["flops_per_image"] * BATCH == live_train["model_flops_per_step"]
  arguments = lambda result: result["memory_per_device"]["argument_bytes"]
  assert arguments(cached) < arguments(live_train)
  with pytest.raises(ValueError, match="time the train step: use --mode=train"):
    bench.run(tiny_config(), mode="sample", height=SIZE, width=SIZE, batch_size=BATCH, text_cache=True)


def test_sample_benchmark(tmp_path):
  config = tiny_config()
  result = bench.run(config, mode="sample", height=SIZE, width=SIZE, batch_size=BATCH, steps=1, warmup=1)
  _check_common(result, tmp_path)
  passes = 2 * solvers.num_evaluations("heun", 2)  # CFG: conditional and unconditional passes
  assert result["network_passes"] == passes
  forward = flops.forward_flops(config.model, SIZE, SIZE, 32).total
  assert result["model_flops_per_step"] == pytest.approx(BATCH * passes * forward)


def test_a_fake_step_of_known_duration():
  """The timing loop measures what a step takes: a step that sleeps 20 ms is timed at 20 ms or a little more;
  the rates of a known step: 8 images and 2 TFLOP in 0.5 s on 2 H100s are 16 images/s, 2 TFLOP/s per device and
  2 / 989 of the H100's dense bf16 peak."""
  calls = []
  times = bench.time_steps(lambda: (calls.append(1), time.sleep(0.02)), steps=3, warmup=2)
  assert len(calls) == 5 and len(times) == 3
  assert all(0.02 <= t < 0.5 for t in times), times
  rates = flops.throughput(2e12, 0.5, 8, "NVIDIA H100 80GB HBM3", num_devices=2)
  assert rates.images_per_s == 16.0 and rates.tflops_per_device == 2.0
  assert rates.mfu == pytest.approx(2 / 989, rel=1e-9)
  assert flops.throughput(2e12, 0.5, 8, "cpu", 1).mfu is None  # no peak to compare with


def test_profile_writes_a_trace_of_the_timed_steps(tmp_path):
  """`launch/bench.py --profile=DIR`: one JAX profiler trace (TensorBoard's profile plugin reads `*.xplane.pb`)."""
  step = jax.jit(lambda x: (x @ x).sum())
  x = jax.numpy.ones((64, 64))
  times = bench.time_steps(lambda: step(x).block_until_ready(), steps=2, warmup=1, profile=str(tmp_path / "p"))
  traces = list((tmp_path / "p").rglob("*.xplane.pb"))
  assert len(times) == 2 and len(traces) == 1 and traces[0].stat().st_size > 0


def test_bad_requests_are_clear_errors():
  with pytest.raises(ValueError, match="mode='eval' is unknown"):
    bench.run(tiny_config(), mode="eval", height=SIZE, width=SIZE, batch_size=BATCH)
  with pytest.raises(ValueError, match="batch_size=6 does not split over the 8 devices"):
    bench.run(tiny_config(), mode="train", height=SIZE, width=SIZE, batch_size=6)
  with pytest.raises(ValueError, match="height=40 is not a positive multiple of the patch size 16"):
    bench.run(tiny_config(), mode="train", height=40, width=SIZE, batch_size=BATCH)
