"""A matrix of benchmark runs (`launch/gpu_bench.py`): each one `launch/bench.py` process, within a time budget.

Each run is its own process, so one that fails (a kernel the GPU rejects, out of memory) leaves the others
standing and every run's allocator peak is its own. Runs go in priority order; once the budget cannot hold
another run the rest are recorded as skipped, so the whole suite ends on time. Results: one JSON per run,
`summary.json` (every run, with failures and skips) and `summary.md` (the table) in the output folder.
"""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys
import time
from typing import Any, NamedTuple, Sequence

from pixelhdm_jax.perf import bench

REPO = pathlib.Path(__file__).resolve().parents[2]
GPU_KERNELS = ("cudnn", "xla", "pallas_gpu")
MIN_RUN_S = 60  # a run is not started with less budget left than this


CACHES = ("text", "teacher")  # `launch/bench.py --<name>_cache`


class Run(NamedTuple):
  mode: str
  size: int  # square images, pixels per side
  kernel: str
  remat_policy: str | None  # None: the preset's
  batch_size: int
  caches: tuple[str, ...] = ()  # train runs: the encoders whose outputs are cached (`CACHES`); () = live

  @property
  def name(self) -> str:
    remat = f"_{self.remat_policy}" if self.remat_policy else ""
    cached = f"_cached_{'_'.join(self.caches)}" if self.caches else ""
    return f"{self.mode}_{self.size}_{self.kernel}{remat}{cached}_b{self.batch_size}"


class Suite(NamedTuple):
  """The runs of a suite in priority order and what they share (the arguments of `run_all`)."""
  runs: list[Run]
  preset: str
  steps: dict[str, int]  # timed steps per mode
  overrides: tuple[str, ...]  # extra `launch/bench.py` flags


def plan(sizes: Sequence[int], kernels: Sequence[str], modes: Sequence[str], remat_policies: Sequence[str],
         train_batch: dict[int, int], sample_batch: int, cache_variants: Sequence[tuple[str, ...]] = ()) -> list[Run]:
  """Runs in priority order: the first size first, then modes, kernels and remat policies (train runs only;
  none given: the preset's) as given; each train run live, then with each of `cache_variants` (e.g. ("text",),
  ("text", "teacher")) cached."""
  policies = list(remat_policies) or [None]
  variants = [()] + [tuple(v) for v in cache_variants]
  return [Run(mode, size, kernel, remat, train_batch[size] if mode == "train" else sample_batch, caches)
          for size in sizes for mode in modes for kernel in kernels
          for remat in (policies if mode == "train" else [None]) for caches in (variants if mode == "train" else [()])]


def default_backend() -> str:
  """JAX's default backend, asked of a child process: this one must not hold the GPU that the runs need."""
  done = subprocess.run([sys.executable, "-c", "import jax; print(jax.default_backend())"], capture_output=True,
                        text=True, check=False)
  return done.stdout.split()[-1] if done.returncode == 0 and done.stdout.split() else "none (JAX failed to start)"


def gpu_suite(sizes: Sequence[int | str] | None = None, kernels: Sequence[str] | None = None,
              modes: Sequence[str] = ("train", "sample"), remat_policies: Sequence[str] = (),
              cache_variants: Sequence[tuple[str, ...]] = (), *, dry_run: bool = False) -> Suite:
  """The runs of `launch/gpu_bench.py`: `default` at 512 then 256 px (train batch 32 / 64, 10 timed steps;
  sample batch 8, 3 timed loops), each of `GPU_KERNELS`. `dry_run` takes the same path on a CPU: `tiny` at 64
  and 32 px, kernel xla, train batch 8, 2 / 1 timed steps, 2 sampling steps. Empty `sizes` / `kernels`: those."""
  sizes = [int(s) for s in sizes or ((64, 32) if dry_run else (512, 256))]
  train_batch = {size: 8 if dry_run else (32 if size >= 512 else 64) for size in sizes}
  runs = plan(sizes, kernels or (("xla",) if dry_run else GPU_KERNELS), modes, remat_policies, train_batch,
              sample_batch=8, cache_variants=cache_variants)
  if dry_run:
    return Suite(runs, "tiny", {"train": 2, "sample": 1}, ("--config.sample.num_steps=2", "--warmup=1"))
  return Suite(runs, "default", {"train": 10, "sample": 3}, ())


def command(run: Run, *, preset: str, steps: dict[str, int], json_path: pathlib.Path,
            overrides: Sequence[str] = ()) -> list[str]:
  """The `launch/bench.py` command line of one run (bfloat16 everywhere)."""
  return [sys.executable, str(REPO / "launch" / "bench.py"), f"--config={REPO / 'configs' / 'base.py'}:{preset}",
          f"--mode={run.mode}", f"--height={run.size}", f"--width={run.size}", f"--batch_size={run.batch_size}",
          f"--steps={steps[run.mode]}", f"--json={json_path}", f"--config.model.attention={run.kernel}",
          *([f"--config.model.remat_policy={run.remat_policy}"] if run.remat_policy else []),
          *(f"--{name}_cache" for name in run.caches),
          "--config.model.compute_dtype=bfloat16", "--config.text.compute_dtype=bfloat16",
          "--config.dino.compute_dtype=bfloat16", *overrides]


def run_all(runs: Sequence[Run], *, preset: str, steps: dict[str, int], output_dir: str | pathlib.Path,
            budget_s: float, overrides: Sequence[str] = (), log=print) -> list[dict[str, Any]]:
  """Runs `runs` one process each until `budget_s` is spent; returns one record per run."""
  output_dir = pathlib.Path(output_dir)
  output_dir.mkdir(parents=True, exist_ok=True)
  deadline = time.monotonic() + budget_s
  records = []
  for run in runs:
    left = deadline - time.monotonic()
    record: dict[str, Any] = {"name": run.name, **run._asdict()}
    if left < MIN_RUN_S:
      records.append({**record, "status": "skipped", "reason": f"time budget spent ({budget_s:.0f} s)"})
      log(f"[skip] {run.name}: time budget spent")
      continue
    json_path = output_dir / f"{run.name}.json"
    args = command(run, preset=preset, steps=steps, json_path=json_path, overrides=overrides)
    log(f"[run] {run.name} (at most {left:.0f} s)")
    started = time.monotonic()
    try:
      done = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=left, check=False)
      status = "ok" if done.returncode == 0 and json_path.exists() else "failed"
      output = done.stdout + done.stderr
    except subprocess.TimeoutExpired as error:
      status, output = "failed", f"timed out after {left:.0f} s\n{error.stdout or ''}{error.stderr or ''}"
    (output_dir / f"{run.name}.log").write_text(str(output), encoding="utf-8")
    record.update(status=status, wall_s=time.monotonic() - started)
    if status == "ok":
      record["result"] = json.loads(json_path.read_text(encoding="utf-8"))
    else:
      record["error"] = str(output)[-2000:]
    log(f"[{status}] {run.name} in {record['wall_s']:.0f} s")
    records.append(record)
  return records


def summarize(records: Sequence[dict[str, Any]], output_dir: str | pathlib.Path) -> str:
  """Writes summary.json and summary.md; returns the Markdown (results table, then failures and skips)."""
  output_dir = pathlib.Path(output_dir)
  results = [r["result"] for r in records if r["status"] == "ok"]
  lines = [bench.table(results)] if results else ["no run finished"]
  for r in records:
    if r["status"] != "ok":
      detail = r.get("reason") or (r.get("error", "").strip().splitlines() or [""])[-1]
      lines.append(f"- {r['status']}: {r['name']}: {detail}")
  text = "\n".join(lines) + "\n"
  (output_dir / "summary.md").write_text(text, encoding="utf-8")
  slim = [{**r, "result": _without_config(r["result"])} if "result" in r else r for r in records]
  (output_dir / "summary.json").write_text(json.dumps(slim, indent=2) + "\n", encoding="utf-8")
  return text


def _without_config(result: dict[str, Any]) -> dict[str, Any]:
  """A result without its full config (kept in the run's own JSON)."""
  return {k: v for k, v in result.items() if k != "config"}
