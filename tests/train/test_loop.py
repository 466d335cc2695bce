"""The tiny preset end to end: it learns, resumes bit for bit, saves on Ctrl-C and SIGTERM, sets an unreadable
newest checkpoint aside and resumes from the previous one, fails loudly on checkpoints it cannot use."""

import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import orbax.checkpoint as ocp
import pytest

from pixelhdm_jax.errors import ConfigError
from pixelhdm_jax.train.checkpoint import RunCheckpoints, remove_unfinished_saves
from pixelhdm_jax.train.loop import train_and_evaluate
from pixelhdm_jax.weights.inference import CheckpointError
from tests.helpers import damage_arrays, tiny_run_config

REPO = pathlib.Path(__file__).resolve().parents[2]


def _metrics(workdir):
  lines = (workdir / "metrics.jsonl").read_text().splitlines()
  return [json.loads(line) for line in lines if "loss" in line]


def _checkpoint(workdir, step):
  """Every saved array of checkpoint `step` as numpy, by item."""
  with ocp.CheckpointManager(workdir / "checkpoints", options=ocp.CheckpointManagerOptions(read_only=True),
                             item_handlers={n: ocp.StandardCheckpointHandler()
                                            for n in ("model", "ema", "train_state")}) as manager:
    restored = manager.restore(step, args=ocp.args.Composite(**{n: ocp.args.StandardRestore()
                                                                for n in ("model", "ema", "train_state")}))
  return {name: restored[name] for name in ("model", "ema", "train_state")}


def _assert_trees_equal(a, b):
  import jax
  flat_a, flat_b = jax.tree_util.tree_leaves_with_path(a), jax.tree_util.tree_leaves_with_path(b)
  assert [p for p, _ in flat_a] == [p for p, _ in flat_b]
  for (path, x), (_, y) in zip(flat_a, flat_b):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=jax.tree_util.keystr(path))


@pytest.fixture(scope="module")
def straight_and_resumed(tmp_path_factory):
  """Run A: 6 steps straight, profiling steps 2 to 4. Run B: 3 steps, stop, resume to 6 (same config but num_steps
  and profiling)."""
  straight, resumed = tmp_path_factory.mktemp("straight"), tmp_path_factory.mktemp("resumed")
  train_and_evaluate(tiny_run_config(num_steps=6, profile_steps=(2, 4)), straight)
  train_and_evaluate(tiny_run_config(num_steps=3), resumed)
  train_and_evaluate(tiny_run_config(num_steps=6), resumed)
  return straight, resumed


def test_resume_is_bit_identical(straight_and_resumed):
  straight, resumed = straight_and_resumed
  _assert_trees_equal(_checkpoint(straight, 6), _checkpoint(resumed, 6))  # params, EMA, optimizer, RNG
  losses = {m["step"]: m["loss"] for m in _metrics(straight)}
  resumed_losses = {m["step"]: m["loss"] for m in _metrics(resumed)}
  assert sorted(resumed_losses) == list(range(1, 7))
  assert resumed_losses == losses  # the same batches in the same order, before and after the restart


def test_evaluation_scores_the_run_and_leaves_it_bit_identical(straight_and_resumed, tmp_path, monkeypatch):
  """Evaluation at steps 3 and 6 (FID with random Inception weights, FD-DINOv3 of the tiny teacher) changes no
  weight, optimizer state, random key or batch: the run equals the straight one without evaluation."""
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # the cached reference statistics
  config = tiny_run_config(num_steps=6, eval_every=3, eval_num_images=8, sample_size=32)
  config.sample.num_steps = 2
  workdir = tmp_path / "run"
  train_and_evaluate(config, workdir)
  straight, _ = straight_and_resumed
  _assert_trees_equal(_checkpoint(straight, 6), _checkpoint(workdir, 6))
  assert [m["loss"] for m in _metrics(workdir)] == [m["loss"] for m in _metrics(straight)]
  results = [json.loads((workdir / "eval" / f"step_{step:08d}.json").read_text()) for step in (3, 6)]
  for result in results:
    assert result["random_inception_weights"] is True and result["num_images"] == 8
    assert all(np.isfinite(result[k]) and result[k] >= 0 for k in ("fid", "fd_dinov3", "precision", "recall"))
  assert results[0]["fd_dinov3"] != results[1]["fd_dinov3"]  # the EMA weights moved between the evaluations
  assert len(list((tmp_path / "cache" / "pixelhdm_jax" / "reference_statistics").iterdir())) == 1


def test_profile_steps_write_a_trace_tensorboard_reads(straight_and_resumed):
  straight, resumed = straight_and_resumed
  traces = list((straight / "profile" / "plugins" / "profile").glob("*/*.xplane.pb"))
  assert len(traces) == 1 and traces[0].stat().st_size > 0
  assert not (resumed / "profile").exists()  # off by default


def test_checkpoints_keep_and_config(straight_and_resumed):
  straight, _ = straight_and_resumed
  steps = sorted(int(p.name) for p in (straight / "checkpoints").iterdir() if p.name.isdigit())
  assert steps == [3, 6]
  saved = json.loads((straight / "checkpoints" / "6" / "config" / "metadata").read_text())
  assert saved["model"]["hidden_dim"] == 64 and saved["train"]["num_steps"] == 6
  assert (straight / "tb").is_dir()


def test_compile_time_and_count_are_logged(straight_and_resumed):
  """One 32x32 bucket: one compile per run (metrics.jsonl `compile_s`, `compiled_programs`)."""
  straight, resumed = straight_and_resumed
  for workdir, runs in ((straight, 1), (resumed, 2)):
    lines = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    compiles = [line for line in lines if "compile_s" in line]
    assert [line["compiled_programs"] for line in compiles] == [1] * runs
    assert all(line["compile_s"] > 0 for line in compiles)


def _train_command(workdir, *flags):
  return [sys.executable, str(REPO / "launch" / "train.py"), "--config=configs/base.py:tiny", f"--workdir={workdir}",
          "--config.data.max_resolution=32", "--config.train.sample_prompts=()", "--config.optim.schedule=constant",
          *flags]


@pytest.fixture
def broken_newest(straight_and_resumed, tmp_path):
  """A copy of the resumed run (checkpoints 3 and 6) whose checkpoint 6 has every array file cut in half."""
  _, resumed = straight_and_resumed
  broken = tmp_path / "broken"
  shutil.copytree(resumed, broken)
  damage_arrays(broken / "checkpoints" / "6")
  return broken


def test_unreadable_newest_checkpoint_is_set_aside_and_the_previous_resumed(straight_and_resumed, broken_newest,
                                                                           caplog):
  """Also: an interrupted save's temporary directory is removed, and metrics.jsonl keeps one row per step (the
  rows 4-6 of the first run, logged after checkpoint 3, are dropped before the resumed run logs them again)."""
  straight, _ = straight_and_resumed
  checkpoints = broken_newest / "checkpoints"
  (checkpoints / "9.orbax-checkpoint-tmp-1764460000").mkdir()
  train_and_evaluate(tiny_run_config(num_steps=6), broken_newest)
  warnings = [r.getMessage() for r in caplog.records if "renamed it" in r.getMessage()]
  assert len(warnings) == 1 and "\n" not in warnings[0], warnings
  assert re.fullmatch(r"cannot restore model, ema, train_state from checkpoint .*/broken/checkpoints/6: "
                      r"ValueError: .{20,300}; renamed it 6.corrupt and resuming from step 3", warnings[0])
  assert "9.orbax-checkpoint-tmp-1764460000, the unfinished save of an interrupted run" in caplog.text
  assert sorted(p.name for p in checkpoints.iterdir()) == ["3", "6", "6.corrupt"]
  losses = [(m["step"], m["loss"]) for m in _metrics(broken_newest)]
  assert losses == [(m["step"], m["loss"]) for m in _metrics(straight)]  # resumed from 3 exactly
  assert not (broken_newest / "run.lock").exists()


def test_strict_resume_stops_on_an_unreadable_newest_checkpoint(broken_newest):
  done = subprocess.run(_train_command(broken_newest, "--config.train.num_steps=6", "--strict_resume"), cwd=REPO,
                        capture_output=True, text=True, timeout=240, check=False)
  assert done.returncode == 2, done.stderr[-3000:]
  errors = [line for line in done.stderr.splitlines() if line.startswith("train.py: error:")]
  assert len(errors) == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
  assert re.fullmatch(r"train.py: error: cannot restore .* from checkpoint .*/broken/checkpoints/6: .{20,300}\. Move "
                      r".*/broken/checkpoints/6 away to resume from step 3", errors[0]), errors[0]
  assert (broken_newest / "checkpoints" / "6").is_dir() and not (broken_newest / "run.lock").exists()


def test_set_aside_checkpoints_alone_are_a_loud_error(tmp_path):
  (tmp_path / "checkpoints" / "4.corrupt").mkdir(parents=True)
  checkpoints = RunCheckpoints(tmp_path / "checkpoints", keep=3)
  with pytest.raises(CheckpointError, match=r"holds \['4.corrupt'\] but no complete checkpoint"):
    checkpoints.latest_step()
  checkpoints.close()


def test_checkpoint_of_another_model_is_a_loud_error(straight_and_resumed):
  straight, _ = straight_and_resumed
  config = tiny_run_config(num_steps=8)
  config.model.pixel_dim = 8
  with pytest.raises(CheckpointError, match=r"was written for another model: model.pixel_dim: checkpoint 4, "
                                            r"this run 8"):
    train_and_evaluate(config, straight)


def test_unfinished_saves_are_removed_with_a_warning(tmp_path, caplog):
  checkpoints = tmp_path / "checkpoints"
  (checkpoints / "5.orbax-checkpoint-tmp-123" / "model").mkdir(parents=True)
  (checkpoints / "3" / "model").mkdir(parents=True)
  remove_unfinished_saves(checkpoints)
  assert [p.name for p in checkpoints.iterdir()] == ["3"]
  assert "5.orbax-checkpoint-tmp-123, the unfinished save of an interrupted run" in caplog.text


def test_tiny_preset_learns(tmp_path):
  config = tiny_run_config(num_steps=150, log_every=10, checkpoint_every=150)
  train_and_evaluate(config, tmp_path)
  losses = [m["loss"] for m in _metrics(tmp_path)]
  assert len(losses) == 15
  assert np.mean(losses[-3:]) < 0.6 * np.mean(losses[:3]), losses


def test_ctrl_c_saves_a_checkpoint_that_resumes(tmp_path):
  """Ctrl-C (SIGINT to every process of the job, Grain's worker too) saves at the next step boundary and exits
  0, as SIGTERM does (same flag, see below); the resumed run continues with one metrics row per step."""
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
  command = _train_command(tmp_path, "--config.train.num_steps=100000", "--config.train.checkpoint_every=100000",
                           "--config.train.log_every=1", "--config.data.num_workers=1")
  process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             start_new_session=True)  # its own process group, as a terminal's job
  metrics = tmp_path / "metrics.jsonl"
  deadline = time.time() + 240
  while time.time() < deadline and not (metrics.exists() and metrics.read_text().count('"loss"') >= 3):
    assert process.poll() is None, process.stdout.read().decode()[-3000:]
    time.sleep(0.5)
  os.killpg(process.pid, signal.SIGINT)
  output = process.communicate(timeout=240)[0].decode()
  assert process.returncode == 0, output[-3000:]
  assert "SIGINT received: saving a checkpoint and stopping (Ctrl-C again stops at once" in output
  assert "Traceback" not in output and not (tmp_path / "run.lock").exists(), output[-3000:]
  saved = [int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()]
  assert len(saved) == 1 and saved[0] >= 3, output[-3000:]
  train_and_evaluate(tiny_run_config(num_steps=saved[0] + 2), tmp_path)
  assert [m["step"] for m in _metrics(tmp_path)] == list(range(1, saved[0] + 3))


def test_sigterm_and_a_first_sigint_ask_for_a_save_a_second_sigint_aborts():
  from pixelhdm_jax.train import loop
  before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
  with loop._Preemption() as preemption:
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(0.1)  # the handler runs in the main thread at the next bytecode boundary
    assert preemption.requested
  with loop._Preemption() as preemption:
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(0.1)
    assert preemption.requested
    with pytest.raises(KeyboardInterrupt, match="second SIGINT: stopped without saving"):
      os.kill(os.getpid(), signal.SIGINT)
      time.sleep(0.1)
  assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


def test_resume_on_a_different_mesh(straight_and_resumed, tmp_path):
  straight, _ = straight_and_resumed
  workdir = tmp_path / "remeshed"
  shutil.copytree(straight, workdir)
  config = tiny_run_config(num_steps=7)
  config.mesh.shape = (2, 2, 2)  # saved with (1, 8, 1)
  train_and_evaluate(config, workdir)
  assert 7 in {m["step"] for m in _metrics(workdir)}
  restored = _checkpoint(workdir, 6)
  _assert_trees_equal(restored, _checkpoint(straight, 6))


def test_gradient_accumulation_counts_optimizer_steps_and_resumes(tmp_path):
  """With 2 micro-steps per optimizer step, checkpoints and logs are labelled in optimizer steps, and a
  resume between optimizer steps continues exactly."""
  def config(num_steps):
    c = tiny_run_config(num_steps=num_steps, checkpoint_every=2)
    c.optim.grad_accum_steps = 2
    return c
  straight, resumed = tmp_path / "straight", tmp_path / "resumed"
  train_and_evaluate(config(4), straight)
  train_and_evaluate(config(2), resumed)
  train_and_evaluate(config(4), resumed)
  assert sorted(int(p.name) for p in (straight / "checkpoints").iterdir() if p.name.isdigit()) == [2, 4]
  assert [m["step"] for m in _metrics(straight)] == [1, 2, 3, 4]  # one line per optimizer step
  restored = _checkpoint(straight, 4)
  assert int(restored["train_state"]["step"]) == 8  # micro-steps
  _assert_trees_equal(restored, _checkpoint(resumed, 4))


def test_too_many_nonfinite_steps_stop_the_run():
  from pixelhdm_jax.train import loop
  config = tiny_run_config(max_nonfinite_steps=3)
  pending = loop._Pending()
  timer = {"time": None, "step": None}

  class Bar:
    def set_postfix(self, **_):
      pass

  class Writer:
    def scalars(self, *_):
      pass

  pending.set({"loss": np.nan, "nonfinite": 2.0}, 4, (8, 32, 32, 3), timed=False)
  loop._report(config, pending, timer, writer=Writer(), bar=Bar())
  pending.set({"loss": np.nan, "nonfinite": 3.0}, 5, (8, 32, 32, 3), timed=False)
  with pytest.raises(loop.NonFiniteError, match="3 consecutive steps up to step 5 had a non-finite loss"):
    loop._report(config, pending, timer, writer=Writer(), bar=Bar())


def test_metrics_are_read_in_full_only_on_logged_steps():
  """Every step the loop reads one scalar (the skip counter); the whole dict only on `log_every` steps."""
  from pixelhdm_jax.train import loop
  config = tiny_run_config(log_every=5)

  class Unread:
    def __float__(self):
      raise AssertionError("the loop read a metric of a step that is not logged")

  class Quiet:
    def __getattr__(self, name):
      return lambda *args, **kwargs: None

  pending, timer = loop._Pending(), {"time": None, "step": None}
  pending.set({"loss": Unread(), "nonfinite": 0}, 2, (8, 32, 32, 3), timed=False)  # optimizer step 3
  assert loop._report(config, pending, timer, writer=Quiet(), bar=Quiet()) is None
  pending.set({"loss": 1.5, "nonfinite": 0}, 4, (8, 32, 32, 3), timed=True)  # optimizer step 5: logged
  values = loop._report(config, pending, timer, writer=Quiet(), bar=Quiet())
  assert values["loss"] == 1.5 and values["images_per_s"] > 0 and values["step_time_s"] > 0


def test_resume_with_another_kernel_and_remat_policy_is_allowed(straight_and_resumed):
  straight, _ = straight_and_resumed
  config = tiny_run_config(num_steps=6)
  config.model.update(attention="xla", remat_policy="full", compute_dtype="float32")
  config.text.path = "/moved/encoder"
  checkpoints = RunCheckpoints(straight / "checkpoints", keep=3)
  checkpoints.check_config(6, config)  # no error: the weights mean the same
  config.model.mlp_ratio = 2.0
  with pytest.raises(CheckpointError, match="model.mlp_ratio: checkpoint 3.0, this run 2.0"):
    checkpoints.check_config(6, config)
  checkpoints.close()


def test_repa_stops_at_its_early_stop_step(tmp_path):
  """From `loss.repa_early_stop` optimizer steps on, a second program without DINOv3 runs (REPA term 0)."""
  config = tiny_run_config(num_steps=4)
  config.loss.repa_early_stop = 2
  train_and_evaluate(config, tmp_path)
  repa = {m["step"]: m["loss_repa"] for m in _metrics(tmp_path)}
  assert repa[1] > 0 and repa[2] > 0 and repa[3] == 0 and repa[4] == 0
  lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert max(line.get("compiled_programs", 0) for line in lines) == 2


def test_resume_with_another_worker_count_continues_exactly(straight_and_resumed, tmp_path, caplog):
  """Grain's saved state depends on the worker count; the loop then restarts the loader at the step."""
  straight, _ = straight_and_resumed
  config = tiny_run_config(num_steps=3)
  config.data.num_workers = 1
  train_and_evaluate(config, tmp_path)
  train_and_evaluate(tiny_run_config(num_steps=6), tmp_path)  # 0 workers
  assert "rebuilding the data loader at batch 3" in caplog.text
  losses = {m["step"]: m["loss"] for m in _metrics(straight)}
  assert {m["step"]: m["loss"] for m in _metrics(tmp_path)} == losses


def test_repa_with_another_patch_size_stops_before_training(tmp_path):
  config = tiny_run_config(num_steps=2)
  config.model.patch_size = 8
  config.data.update(min_resolution=32, max_resolution=32)
  with pytest.raises(ConfigError, match=r"model.patch_size=8 with iREPA on: the DINOv3 teacher's patch tokens are 16 "
                                        r"px, .* set model.patch_size=16, or loss.repa_lambda=0"):
    train_and_evaluate(config, tmp_path)
  assert not (tmp_path / "checkpoints").exists()
