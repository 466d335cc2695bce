"""Ahead-of-time compiles from shapes only (launch/compile.py), the target platform, random full-size encoders."""

import json
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from configs import base
from pixelhdm_jax import aot, flops, target
from pixelhdm_jax.config import ConfigError, validate
from pixelhdm_jax.encoders.teacher import build_dino_teacher
from pixelhdm_jax.encoders.text import build_text_encoder
from pixelhdm_jax.models.layers import compute_dtype

REPO = pathlib.Path(__file__).resolve().parents[2]


def test_compile_for_a_mesh_of_the_8_simulated_devices():
  config = base.get_config("tiny")
  config.mesh.shape = (2, 2, 2)
  devices, platform = aot.topology_devices(aot.LOCAL)
  report = aot.compile_train_step(config, devices, platform=platform, height=32, width=64, batch_size=8)
  assert report["mesh"] == {"data": 2, "fsdp": 2, "tensor": 2} and report["batch_per_shard"] == 2
  assert report["repa"] and report["compile_s"] > 0
  memory = report["memory_per_device"]
  assert memory["peak_bytes"] == memory["argument_bytes"] + memory["output_bytes"] - memory["alias_bytes"] \
      + memory["temp_bytes"]
  assert memory["alias_bytes"] > 0  # the donated state is written in place
  with pytest.raises(ValueError, match=r"batch_size=6 does not split over the 4 devices .* multiple of 4"):
    aot.compile_train_step(config, devices, platform=platform, height=32, width=32, batch_size=6)


def test_tpu_topologies_need_libtpu():
  assert aot.tpu_slice("v5p-256") == aot.TpuSlice("v5:4x4x8", "megacore", (2, 2, 1), (True, True, True))
  assert aot.tpu_slice("v6e:8x16").chip_config == "default"
  with pytest.raises(aot.CompileError, match="unknown TPU topology 'v7-x'"):
    aot.tpu_slice("v7-x")
  try:
    devices, platform = aot.topology_devices("v5e-16")
  except aot.CompileError as error:  # no libtpu here: the message says what to install
    assert "libtpu" in str(error) and "v5e:4x4" in str(error)
  else:
    assert platform == "tpu" and len(devices) == 16


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
  text = build_text_encoder(config, with_params=False)
  dino = build_dino_teacher(config, with_params=False)
  assert text.params is None and dino.params is None
  count = lambda tree: sum(x.size for x in jax.tree.leaves(tree))  # noqa: E731
  assert 590e6 < count(text.abstract_params()) < 600e6  # Qwen3-0.6B without the LM head
  assert 85e6 < count(dino.abstract_params()) < 87e6  # ViT-B/16
  arch = text.module.arch
  assert (arch.num_layers, arch.hidden_size, arch.intermediate_size) == (
      flops.QWEN3_0_6B.layers, flops.QWEN3_0_6B.hidden, flops.QWEN3_0_6B.mlp_hidden)
  with pytest.raises(ConfigError, match="needs text.source=random or random_full"):
    build_text_encoder(base.get_config("default"), with_params=False)


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
