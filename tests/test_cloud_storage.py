"""gs:// end to end against a GCS emulator: train, kill and resume, sample, export, prepare a dataset, train on it.

Every launcher runs as a subprocess with `gs://bucket/...` locations and the emulator's environment (no cloud
credentials, no metadata server); what they wrote is read back from the server itself.
"""

import io
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from pixelhdm_jax import storage

REPO = pathlib.Path(__file__).resolve().parents[1]
TINY = ["--config=configs/base.py:tiny", "--config.data.max_resolution=32", "--config.train.log_every=1",
        "--config.train.eval_every=0", "--config.train.sample_prompts=()", "--config.optim.schedule=constant"]


def _launch(script: str, *flags: str, env: dict) -> subprocess.Popen:
  return subprocess.Popen([sys.executable, str(REPO / "launch" / script), *flags], cwd=REPO, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _run(script: str, *flags: str, env: dict) -> str:
  process = _launch(script, *flags, env=env)
  output = process.communicate(timeout=300)[0].decode()
  assert process.returncode == 0, output[-3000:]
  return output


def _losses(gcs, workdir: str) -> dict[int, float]:
  try:
    text = gcs.read("bucket", f"{workdir}/metrics.jsonl").decode()
  except OSError:  # not written yet
    return {}
  rows = [json.loads(line) for line in text.splitlines()]
  return {row["step"]: row["loss"] for row in rows if "loss" in row}


def _write_photos(folder: pathlib.Path) -> None:
  folder.mkdir()
  rng = np.random.default_rng(0)
  for i in range(8):
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), np.uint8)).save(folder / f"{i}.png")
    (folder / f"{i}.txt").write_text(f"photo {i}")


@pytest.mark.slow  # ~95 s: CI's default run stays under its 20 minutes; run it with -m slow
def test_gs_paths_train_resume_sample_export_and_prepare(gcs_emulator, tmp_path):
  gcs = gcs_emulator
  env = {**os.environ, **gcs.env}
  # Train into gs://bucket/run until three steps are logged, then SIGTERM: it saves and exits.
  process = _launch("train.py", *TINY, "--workdir=gs://bucket/run", "--config.train.num_steps=100000",
                    "--config.train.checkpoint_every=100000", env=env)
  deadline = time.time() + 240
  while time.time() < deadline and len(_losses(gcs, "run")) < 3:
    assert process.poll() is None, process.stdout.read().decode()[-3000:]
    time.sleep(0.5)
  process.send_signal(signal.SIGTERM)
  output = process.communicate(timeout=240)[0].decode()
  assert process.returncode == 0, output[-3000:]
  saved = {name.split("/")[2] for name in gcs.objects("bucket", "run/checkpoints/")}
  assert len(saved) == 1 and int(saved.pop()) >= 3, output[-3000:]
  step = max(_losses(gcs, "run"))
  assert "gs://bucket/run" in output and "gs:/bucket" not in output.replace("gs://", "")
  # Resume two more steps (with a sample grid at the end) from the checkpoint in the bucket.
  output = _run("train.py", *TINY, "--workdir=gs://bucket/run", f"--config.train.num_steps={step + 2}",
                "--config.train.sample_prompts=('a red square',)", "--config.train.sample_size=32",
                "--config.sample.num_steps=2", env=env)
  assert f"resumed from gs://bucket/run/checkpoints/{step}" in output
  assert sorted(_losses(gcs, "run")) == list(range(1, step + 3))  # one row per step, before and after the kill
  run = gcs.objects("bucket", "run/")
  assert f"run/samples/step_{step + 2:08d}.png" in run
  events = [name for name in run if name.startswith("run/tb/events.out.tfevents")]
  assert events and all(gcs.read("bucket", name) for name in events)  # TensorBoard event files, not empty
  # Sample and export from the bucket into the bucket.
  _run("sample.py", "--workdir=gs://bucket/run", "--prompt=a red square", "--output=gs://bucket/samples",
       "--num_steps=2", "--height=32", "--width=32", env=env)
  assert Image.open(io.BytesIO(gcs.read("bucket", "samples/grid.png"))).size == (32, 32)
  output = _run("export.py", "--workdir=gs://bucket/run", "--output=gs://bucket/export", "--format=orbax",
                "--format=safetensors", env=env)
  assert f"wrote gs://bucket/export/{step + 2}" in output
  exported = gcs.objects("bucket", "export/")
  assert "export/model.safetensors" in exported and any(n.startswith(f"export/{step + 2}/model/") for n in exported)
  # Prepare a dataset into the bucket and train on it.
  _write_photos(tmp_path / "photos")
  _run("prepare_data.py", f"--images={tmp_path / 'photos'}", "--output=gs://bucket/data",
       "--config=configs/base.py:tiny", "--config.data.max_resolution=32", "--validation_fraction=0", "--workers=1",
       env=env)
  prepared = gcs.objects("bucket", "data/")
  assert "data/report.json" in prepared and "data/index_train.npz" in prepared
  assert any(".array_record-" in name for name in prepared)
  _run("train.py", *TINY, "--workdir=gs://bucket/from_data", "--config.data.source=folder",
       "--config.data.path=gs://bucket/data", "--config.train.num_steps=1",
       env={**env, "XDG_CACHE_HOME": str(tmp_path / "cache")})
  assert sorted(_losses(gcs, "from_data")) == [1]


def test_gs_path_without_gcsfs_names_the_fix(monkeypatch):
  monkeypatch.setattr(storage.importlib.util, "find_spec", lambda name: None)
  with pytest.raises(storage.StorageError, match=r"gs://b/run needs the package gcsfs .*pip install -e '\.\[gcs\]'"):
    storage.location("gs://b/run")


def test_unknown_scheme_is_an_error():
  with pytest.raises(storage.StorageError, match=r"unsupported storage scheme ftp://"):
    storage.location("ftp://host/run")


def test_local_paths_become_absolute(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  assert os.fspath(storage.location("run")) == os.fspath(tmp_path / "run")
