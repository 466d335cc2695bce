"""Ahead-of-time compiles from shapes only (launch/compile.py), the target platform, random full-size encoders."""

import json
import pathlib
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from configs import base
from pixelhdm_jax.config import validate
from pixelhdm_jax.encoders.dinov3 import DINOV3_VITB16
from pixelhdm_jax.encoders.qwen3 import QWEN3_0_6B
from pixelhdm_jax.encoders.teacher import build_dino_teacher
from pixelhdm_jax.encoders.text import build_text_encoder
from pixelhdm_jax.errors import ConfigError
from pixelhdm_jax.models.layers import compute_dtype
from pixelhdm_jax.perf import aot, target
from pixelhdm_jax.perf.gpu_targets import GPUS, parse_gpu_topology

REPO = pathlib.Path(__file__).resolve().parents[2]


def test_compile_for_a_mesh_of_the_8_simulated_devices():
  config = base.get_config("tiny")
  config.mesh.shape = (2, 2, 2)
  local = aot.compile_target(aot.LOCAL)
  report = aot.compile_train_step(config, local, height=32, width=64, batch_size=8)
  assert report["mesh"] == {"data": 2, "fsdp": 2, "tensor": 2} and report["batch_per_shard"] == 2
  assert report["repa"] and report["compile_s"] > 0
  memory = report["memory_per_device"]
  assert memory["peak_bytes"] == memory["argument_bytes"] + memory["output_bytes"] - memory["alias_bytes"] \
      + memory["temp_bytes"]
  assert memory["alias_bytes"] > 0  # the donated state is written in place
  assert report["fits"] is None  # no device memory given: nothing to compare with
  small = aot.compile_train_step(config, local._replace(device_memory_bytes=memory["peak_bytes"] - 1), height=32,
                                 width=64, batch_size=8)
  assert small["fits"] is False and small["memory_per_device"] == memory
  with pytest.raises(ValueError, match=r"batch_size=6 does not split over the 4 devices .* multiple of 4"):
    aot.compile_train_step(config, local, height=32, width=32, batch_size=6)


def test_topology_names():
  assert aot.tpu_slice("v5p-256") == aot.TpuSlice("v5:4x4x8", "megacore", (2, 2, 1), (True, True, True))
  assert aot.tpu_slice("v6e:8x16").chip_config == "default"
  with pytest.raises(aot.CompileError, match="unknown TPU topology 'v7-x'"):
    aot.tpu_slice("v7-x")
  assert parse_gpu_topology("h100x8") == (GPUS["h100"], 8) and parse_gpu_topology("h100") == (GPUS["h100"], 1)
  assert parse_gpu_topology("v5p-8") is None and parse_gpu_topology("local") is None
  with pytest.raises(aot.CompileError, match="num_slices=2 is for TPU slices"):
    aot.compile_target("h100x8", num_slices=2)
  config = GPUS["h100"].target_config()
  assert "device_memory_size: 84929347584" in config and "cuda_compute_capability { major: 9 minor: 0 }" in config


def _target_or_install_hint(name: str, package: str) -> aot.CompileTarget:
  """The compile-only target, or (without its compiler installed here) a skip after checking the error's hint."""
  try:
    return aot.compile_target(name)
  except aot.CompileError as error:
    assert package in str(error) and "--topology=local" in str(error)
    pytest.skip(f"cannot compile for {name} here: {error}")


def test_compile_the_cached_step_without_the_encoders_weights():
  """With both caches the program takes the encodings as inputs: no Qwen3 or DINOv3 weights among its arguments."""
  local = aot.compile_target(aot.LOCAL)
  reports = {caches: aot.compile_train_step(base.get_config("tiny"), local, height=32, width=32, batch_size=8,
                                            text_cache=caches[0], teacher_cache=caches[1])
             for caches in ((False, False), (True, False), (True, True))}
  for caches, report in reports.items():
    assert (report["text_cache"], report["teacher_cache"]) == caches
  arguments = [report["memory_per_device"]["argument_bytes"] for report in reports.values()]
  assert arguments[0] > arguments[1] > arguments[2]  # Qwen3's weights gone, then DINOv3's
  config = validate(base.get_config("tiny"))
  shapes = aot.cached_encoding_shapes(config, 8, 32, 32, text=True, teacher_dim=48)
  assert shapes["text_hidden"][0] == (8, config.text.max_length, config.model.text_dim)
  assert shapes["teacher_features"][0] == (8, 4, 48) and shapes["text_mask"][1] == jnp.bool_


def test_compile_for_a_tpu_slice_without_a_tpu():
  """libtpu compiles for a slice on a CPU host; the TPU compiler rejects a program that does not fit."""
  slice_ = _target_or_install_hint("v5e-16", "jax[tpu]")
  assert slice_.platform == "tpu" and len(slice_.devices) == 16 and "v5 lite" in slice_.devices[0].device_kind.lower()
  report = aot.compile_train_step(base.get_config("tiny"), slice_, height=256, width=256, batch_size=16)
  assert report["mesh"] == {"data": 1, "fsdp": 16, "tensor": 1} and report["memory_per_device"]["peak_bytes"] > 0
  assert "tpu_custom_call" in report["custom_calls"]  # `auto` attention became the splash kernel
  assert report["fits"] is None  # the TPU compiler itself checks
  with pytest.raises(aot.CompileError, match=r"the train step \(batch 2048 of 512x512, remat_policy=none\) does not "
                     r"fit 16 x TPU v5 lite: .*RESOURCE_EXHAUSTED.*smaller batch"):
    aot.compile_train_step(base.get_config("tiny"), slice_, height=512, width=512, batch_size=2048)
  with pytest.raises(aot.CompileError, match=r"one network pass \(batch 65536 of 512x512\) does not fit 16 x TPU v5 "
                     r"lite: .*RESOURCE_EXHAUSTED.*smaller batch or more devices"):
    aot.compile_forward(base.get_config("tiny"), slice_, height=512, width=512, batch_size=65536)


def test_compile_for_gpus_without_a_gpu():
  """The JAX CUDA plugin compiles for H100s on a CPU host; `auto` attention becomes cuDNN flash attention."""
  gpus = _target_or_install_hint("h100x2", "jax[cuda12]")
  assert gpus.platform == "gpu" and gpus.devices[0].device_kind == "NVIDIA H100 80GB HBM3"
  report = aot.compile_train_step(base.get_config("tiny"), gpus, height=256, width=256, batch_size=2)
  assert report["fits"] is True and report["device_memory_bytes"] == GPUS["h100"].device_memory_bytes
  assert any(call.startswith("__cudnn$fmha") for call in report["custom_calls"]), report["custom_calls"]


def test_target_platform_decides_auto_dtype():
  assert compute_dtype("auto") == jnp.float32 and target.backend() == jax.default_backend() == "cpu"
  with target.compiling_for("tpu"):
    assert target.backend() == "tpu" and compute_dtype("auto") == jnp.bfloat16
  assert target.backend() == "cpu"
  with pytest.raises(ValueError, match="unknown platform 'npu'"), target.compiling_for("npu"):
    pass


def test_random_full_encoders_have_the_real_shapes_without_allocating():
  config = aot.random_encoders(base.get_config("default"))
  assert (config.text.source, config.dino.source) == ("random_full", "random_full")
  validate(config)
  text, text_params = build_text_encoder(config, with_params=False)
  dino, dino_params = build_dino_teacher(config, with_params=False)
  assert text_params is None and dino_params is None
  count = lambda tree: sum(x.size for x in jax.tree.leaves(tree))
  assert 590e6 < count(text.abstract_params()) < 600e6  # Qwen3-0.6B without the LM head
  assert 85e6 < count(dino.abstract_params()) < 87e6  # ViT-B/16
  assert text.module.arch == QWEN3_0_6B and dino.module.arch == DINOV3_VITB16  # the sizes flops.py counts
  with pytest.raises(ConfigError, match="needs text.source=random or random_full"):
    build_text_encoder(base.get_config("default"), with_params=False)


def test_the_launcher_exits_when_a_network_pass_does_not_fit_a_gpu():
  """The GPU compiler does not check memory: the launcher compares the peak with the card's and names the program."""
  _target_or_install_hint("h100x1", "jax[cuda12]")
  command = [sys.executable, str(REPO / "launch" / "compile.py"), "--config=configs/base.py:tiny", "--program=forward",
             "--topology=h100x1", "--batch_size=4096", "--height=512", "--width=512"]
  done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600, check=False)
  assert done.returncode == 1, done.stderr[-3000:]
  assert re.search(r"launch/compile.py: one network pass needs [0-9.]+ GiB per device, more than the [0-9.]+ GiB of "
                   r"one NVIDIA H100 80GB HBM3\. Use a smaller batch or more devices", done.stderr), done.stderr[-3000:]


def test_the_launcher_refuses_caches_for_a_network_pass():
  command = [sys.executable, str(REPO / "launch" / "compile.py"), "--config=configs/base.py:tiny", "--program=forward",
             "--text_cache"]
  done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
  assert done.returncode == 2 and "--text_cache and --teacher_cache apply to --program=train" in done.stderr


@pytest.mark.slow
def test_compile_launcher(tmp_path):
  """launch/compile.py for this host's devices (8 simulated CPU devices)."""
  out = tmp_path / "report.json"
  command = [sys.executable, str(REPO / "launch" / "compile.py"), "--config=configs/base.py:tiny", "--batch_size=8",
             "--height=32", "--width=32", "--topology=local", f"--json={out}"]
  done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
  assert done.returncode == 0, done.stderr[-3000:]
  report = json.loads(out.read_text())
  assert report["num_devices"] == 8 and report["memory_per_device"]["peak_bytes"] > 0
  assert "compiled the train step for 8 x cpu (local)" in done.stdout
