"""launch/gpu_bench.py: run order, time budget, and --dry_run (the GPU script's whole path on the tiny preset)."""

import json
import pathlib
import subprocess
import sys

from pixelhdm_jax.perf import bench, bench_suite

REPO = pathlib.Path(__file__).resolve().parents[2]


def test_plan_orders_runs_by_priority():
  runs = bench_suite.plan([512, 256], bench_suite.GPU_KERNELS, ["train", "sample"], ["full", "dots"],
                          {512: 32, 256: 64}, sample_batch=8)
  assert len(runs) == 2 * 3 * 2 + 2 * 3  # remat policies vary for train runs only
  assert runs[0] == bench_suite.Run("train", 512, "cudnn", "full", 32) and runs[-1].size == 256
  assert runs[-1].name == "sample_256_pallas_gpu_b8" and runs[1].name == "train_512_cudnn_dots_b32"


def test_cache_variants_follow_each_live_train_run():
  runs = bench_suite.plan([512], ["cudnn"], ["train", "sample"], [], {512: 32}, sample_batch=8,
                          cache_variants=[("text",), ("text", "teacher")])
  assert [r.name for r in runs] == ["train_512_cudnn_b32", "train_512_cudnn_cached_text_b32",
                                    "train_512_cudnn_cached_text_teacher_b32", "sample_512_cudnn_b8"]
  flags = lambda run: {arg for arg in bench_suite.command(run, preset="default", steps={"train": 10, "sample": 3},
                                                         json_path=pathlib.Path("r.json")) if arg.endswith("_cache")}
  assert [flags(run) for run in runs] == [set(), {"--text_cache"}, {"--text_cache", "--teacher_cache"}, set()]


def test_budget_skips_what_cannot_fit(tmp_path):
  runs = bench_suite.plan([32], ["xla"], ["train"], ["none"], {32: 8}, sample_batch=8)
  records = bench_suite.run_all(runs, preset="tiny", steps={"train": 1}, output_dir=tmp_path, budget_s=1,
                                log=lambda _: None)
  assert records[0]["status"] == "skipped"
  assert "- skipped: train_32_xla_none_b8: time budget spent (1 s)" in bench_suite.summarize(records, tmp_path)


def test_dry_run(tmp_path):
  done = subprocess.run([sys.executable, str(REPO / "launch" / "gpu_bench.py"), "--dry_run", "--sizes=32",
                         f"--output_dir={tmp_path}"], cwd=REPO, capture_output=True, text=True, timeout=600,
                        check=False)
  assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
  records = json.loads((tmp_path / "summary.json").read_text())
  assert [(r["name"], r["status"]) for r in records] == [("train_32_xla_b8", "ok"), ("sample_32_xla_b8", "ok")]
  for record in records:
    result = json.loads((tmp_path / f"{record['name']}.json").read_text())
    assert all(key in result for key in bench.RESULT_KEYS) and result["step_time_s"] > 0
    assert result["compute_dtype"] == "bfloat16" and "launch/bench.py" in result["command"]
  assert "| train | 32x32 | 8 | xla (xla) | none |" in (tmp_path / "summary.md").read_text()
