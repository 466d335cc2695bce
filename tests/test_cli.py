"""Every launcher answers a user's mistake with one or two lines naming the problem and the fix, no traceback and
exit status 2 (`pixelhdm_jax/cli.py`); `--help` exits 0. Each case fails before anything is compiled."""

import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from pixelhdm_jax.encoders.tokenizers import ByteTokenizer
from pixelhdm_jax.sample.request import _warn_truncated

REPO = pathlib.Path(__file__).resolve().parents[1]
LAUNCHERS = sorted(path.stem for path in (REPO / "launch").glob("*.py"))
TINY = "--config=configs/base.py:tiny"


def _run(launcher: str, *args: str) -> subprocess.CompletedProcess:
  env = {key: value for key, value in os.environ.items() if key != "XLA_FLAGS"}
  env["JAX_PLATFORMS"] = "cpu"
  return subprocess.run([sys.executable, str(REPO / "launch" / f"{launcher}.py"), *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=120, check=False)


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
  """{name: path} for the cases: a folder with a file in it, an unwritable location, a missing one."""
  root = tmp_path_factory.mktemp("cli")
  (root / "full").mkdir()
  (root / "full" / "grid.png").write_bytes(b"")
  readonly = root / "readonly"
  readonly.mkdir(mode=0o555)
  try:  # root may write anywhere: then a location of a read-only file system, if there is one
    (readonly / "probe").mkdir()
    readonly = pathlib.Path("/sys")
    (readonly / "pixelhdm_probe").mkdir()
    pytest.skip("no read-only location to test with (running as root without a read-only /sys)")
  except OSError:
    pass
  return {"full": root / "full", "readonly": readonly / "run", "missing": root / "missing", "new": root / "new"}


# (launcher, arguments with {name} for a path of `paths`, text the message must hold)
MISTAKES = [
    ("train", [TINY, "--workdir={new}", "--config.train.batchsize=4"],
     "--config.train.batchsize: the config has no field 'batchsize': did you mean --config.train.batch_size?"),
    ("train", ["--config=configs/base.py:tny", "--workdir={new}"], "unknown preset 'tny' in the config string"),
    ("train", ["--config=configs/none.py:tiny", "--workdir={new}"], "no such file 'configs/none.py'"),
    ("train", [TINY], "Flag --workdir must have a value"),
    ("train", [TINY, "--workdir={new}", "--config.train.num_steps=0"], "train.num_steps must be a positive integer"),
    ("train", [TINY, "--workdir={readonly}"], "choose a location you can write to"),
    ("train", [TINY, "--workdir={new}", "--config.train.batch_size=four"], "--config.train.batch_size=four"),
    ("sample", ["--workdir={missing}", "--output={new}"], "give at least one --prompt or a --prompt_file"),
    ("sample", ["--workdir={missing}", "--output={full}", "--prompt=a cat"], "or pass --overwrite"),
    ("sample", ["--workdir={missing}", "--output={new}", "--prompt=a cat"], "is not a training workdir"),
    ("sample", ["--workdir={missing}", "--output={new}", "--promt=a cat"], "Unknown command line flag 'promt'"),
    ("export", ["--workdir={missing}", "--output={new}"], "is not a training workdir or a checkpoint directory"),
    ("convert", ["--input={missing}", "--output={new}"], "give one command: import-original"),
    ("convert", ["import-original", "--input={missing}/model.safetensors", "--output={new}"], "does not exist"),
    ("evaluate", ["--num_images=8"], "give one command: reference | samples"),
    ("prepare_data", ["--images={missing}", "--output={new}"], "is not a folder"),
    ("bench", ["--config.model.hidden_dimm=8"], "did you mean --config.model.hidden_dim?"),
    ("bench_data", ["--config.data.sorce=folder"], "did you mean --config.data.source?"),
    ("bench_vs_original", ["--codes=original"], "timing the original needs --original=PATH of its checkout"),
    ("bench_vs_original", ["--codes=theirs"], "--codes=theirs: name original, ours or both"),
    ("bench_quality", ["colours", "--output={new}"], "name one benchmark: shapes or memorize"),
    ("compile", ["--config.trian.batch_size=8"], "did you mean --config.train.batch_size?"),
    ("compile", ["--topology=v7-x"], "unknown TPU topology 'v7-x'"),
    ("gpu_bench", ["--dry_run", "extra"], "unexpected arguments: extra"),
]


@pytest.mark.parametrize("launcher, args, message", MISTAKES, ids=[f"{c[0]}-{i}" for i, c in enumerate(MISTAKES)])
def test_a_mistake_is_one_line_and_status_2(paths, launcher, args, message):
  done = _run(launcher, *(arg.format(**paths) for arg in args))
  assert done.returncode == 2, done.stderr[-3000:]
  assert message in done.stderr
  assert f"{launcher}.py: error: " in done.stderr and "Traceback" not in done.stderr
  assert len(done.stderr.strip().splitlines()) <= 2, done.stderr
  assert not paths["new"].exists()


def test_every_launcher_runs_through_cli():
  for launcher in LAUNCHERS:
    source = (REPO / "launch" / f"{launcher}.py").read_text()
    assert source.rstrip().endswith("cli.run(main)") and "app.run(" not in source, launcher


@pytest.mark.parametrize("launcher", ["train", "sample"])
def test_help_exits_0(launcher):
  done = _run(launcher, "--help")
  assert done.returncode == 0, done.stderr[-3000:]
  assert "flags:" in done.stdout


def test_gpu_bench_without_a_gpu_says_so(tmp_path):
  done = _run("gpu_bench", f"--output_dir={tmp_path}")  # JAX_PLATFORMS=cpu: no GPU, whatever the machine has
  assert done.returncode == 1
  assert "no GPU: JAX runs on 'cpu' here" in done.stderr
  assert not list(tmp_path.iterdir())


def test_a_truncated_prompt_is_a_warning_with_its_token_count(caplog):
  tokenizer = ByteTokenizer(max_length=8)
  _warn_truncated(["a red circle on blue", "short", "a red circle on blue"], tokenizer)
  warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
  prompt, cut = "a red circle on blue", len("a red circle on blue") - 8
  assert warnings == [(f"the prompt {prompt!r} has {len(prompt)} tokens, more than text.max_length=8: its last {cut} "
                       "tokens are cut (shorten it, or train with a larger text.max_length)")]
  ids, _ = tokenizer([prompt])
  np.testing.assert_array_equal(ids[0], tokenizer(["a red ci"])[0][0])  # what the warning says was kept
