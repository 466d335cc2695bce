"""Two processes of launch/train.py on one machine (4 simulated CPU devices each, gloo collectives): the
multi-host path end to end. SIGTERM to one process makes both save the same step (JAX's preemption
service), and the run resumes with two processes on another mesh."""

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _start(workdir, num_steps, *extra):
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu",
         "JAX_CPU_COLLECTIVES_IMPLEMENTATION": "gloo"}
  port = _free_port()
  return [subprocess.Popen([sys.executable, str(REPO / "launch" / "train.py"), "--config=configs/base.py:tiny",
                            f"--workdir={workdir}", "--config.data.max_resolution=32",
                            f"--config.train.num_steps={num_steps}", "--config.train.checkpoint_every=100000",
                            "--config.train.log_every=1", "--config.train.sample_prompts=()",
                            "--config.optim.schedule=constant",
                            f"--coordinator_address=localhost:{port}", "--num_processes=2", f"--process_id={i}",
                            *extra], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
          for i in range(2)]


def _finish(processes, timeout=300):
  outputs = [p.communicate(timeout=timeout)[0].decode() for p in processes]
  for p, output in zip(processes, outputs):
    assert p.returncode == 0, output[-3000:]
  return outputs


def _logged_steps(workdir):
  lines = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  return [line["step"] for line in lines if "loss" in line]


def test_two_processes_preempt_together_and_resume(tmp_path):
  processes = _start(tmp_path, 100000)
  metrics = tmp_path / "metrics.jsonl"
  deadline = time.time() + 240
  while time.time() < deadline and not (metrics.exists() and metrics.read_text().count('"loss"') >= 3):
    assert all(p.poll() is None for p in processes), processes[0].stdout.read().decode()[-3000:]
    time.sleep(0.5)
  processes[1].send_signal(signal.SIGTERM)  # one host only
  outputs = _finish(processes)
  saved = [int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()]
  assert len(saved) == 1, outputs[0][-3000:]
  assert all(f"preempted at step {saved[0]}" in output for output in outputs)
  data = sorted(p.name for p in (tmp_path / "checkpoints" / str(saved[0]) / "data").glob("process_*"))
  assert data == ["process_0-of-2.json", "process_1-of-2.json"]
  steps = _logged_steps(tmp_path)
  assert steps == sorted(set(steps))  # process 0 writes metrics alone

  _finish(_start(tmp_path, saved[0] + 2, "--config.mesh.shape=(2,2,2)"))
  assert _logged_steps(tmp_path)[-2:] == [saved[0] + 1, saved[0] + 2]
