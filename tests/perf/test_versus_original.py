"""`launch/bench_vs_original.py`: alternating timing, the JAX side on the tiny preset, the original's checkout."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

from configs import base
from pixelhdm_jax.errors import ConfigError
from pixelhdm_jax.perf import versus_original

ORIGINAL = os.environ.get("PIXELHDM_ORIGINAL")  # a checkout of the original repository, when there is one
REPO = pathlib.Path(__file__).resolve().parents[2]


def test_the_codes_run_in_turn_and_each_number_is_a_median():
  order = []
  calls = {code: {"step": (lambda code=code: order.append(code))} for code in ("ours", "original")}
  medians = versus_original.alternate(calls, repeats=3, warmup=1)
  assert order == ["ours", "original"] * 4  # a warm-up round, then three timed ones, alternating
  assert set(medians) == {"ours", "original"} and all(m["step"] >= 0 for m in medians.values())


def test_our_network_step_runs_on_the_shared_inputs():
  config = versus_original.comparable(base.get_config("tiny"))
  inputs = versus_original.random_inputs(config, batch=1, height=32, width=32, text_len=4)
  calls = versus_original.ours(config, inputs)
  calls["forward"]()
  calls["train_step"]()
  calls["train_step"]()  # the donated state is replaced by the step's output


def test_a_folder_that_is_not_the_original_is_named(tmp_path):
  pytest.importorskip("torch")
  with pytest.raises(ConfigError, match=r"is not a checkout of the original PixelHDM .* --original=PATH"):
    versus_original.original(str(tmp_path), base.get_config("tiny"), {})


@pytest.mark.skipif(not ORIGINAL, reason="PIXELHDM_ORIGINAL names no checkout of the original repository")
def test_both_codes_on_the_tiny_preset():
  pytest.importorskip("torch")
  config = versus_original.comparable(base.get_config("tiny"))
  inputs = versus_original.random_inputs(config, batch=1, height=32, width=32, text_len=4)
  medians = versus_original.alternate({"original": versus_original.original(ORIGINAL, config, inputs),
                                       "ours": versus_original.ours(config, inputs)}, repeats=1)
  assert set(medians["original"]) == set(medians["ours"]) == {"forward", "train_step"}


def test_the_launcher_times_ours_alone_without_a_checkout(tmp_path):
  """`--codes=ours`: no torch, no --original; the JSON has our medians, the program's settings and no ratio."""
  output = tmp_path / "ours.json"
  env = {key: value for key, value in os.environ.items() if key != "XLA_FLAGS"}
  done = subprocess.run([sys.executable, str(REPO / "launch" / "bench_vs_original.py"), "--codes=ours",
                         "--config=configs/base.py:tiny", "--height=32", "--width=32", "--batch_size=1",
                         "--text_len=4", "--repeats=1", f"--json={output}"],
                        cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False)
  assert done.returncode == 0, done.stderr[-3000:]
  result = json.loads(output.read_text())
  assert set(result["seconds"]) == {"ours"} and set(result["seconds"]["ours"]) == {"forward", "train_step"}
  assert "speedup" not in result and "torch" not in result
  assert result["scan_layers"] is True and result["remat_policy"] == "none"
  assert "train_step: ours " in done.stdout
