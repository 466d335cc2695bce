"""launch/train.py refuses an attention kernel the backend cannot run before it builds anything."""

import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[2]


def test_kernel_of_another_backend_is_refused_up_front(tmp_path):
  workdir = tmp_path / "run"
  done = subprocess.run([sys.executable, str(REPO / "launch" / "train.py"), "--config=configs/base.py:tiny",
                         f"--workdir={workdir}", "--config.model.attention=cudnn"], cwd=REPO, capture_output=True,
                        text=True, timeout=120, check=False)
  assert done.returncode != 0
  assert "model.attention='cudnn' cannot run on backend 'cpu'" in done.stderr
  assert not workdir.exists()
