r"""The GPU benchmark in one command: `default` at 512 and 256, each GPU attention kernel, train and sample, bf16.

  python launch/gpu_bench.py --output_dir=/tmp/gpu_bench            # budgeted to ~8 minutes (--budget_s)
  python launch/gpu_bench.py --dry_run --output_dir=/tmp/gpu_dry     # the same path, tiny preset, CPU
  python launch/gpu_bench.py --sizes=512 --kernels=cudnn --modes=train --caches=text,text+teacher  # cached vs live

Each run is one `launch/bench.py` process (train: batch 32 at 512 and 64 at 256, 10 timed steps; sample:
batch 8, Heun 50 steps with CFG, 3 timed loops). Runs go in order 512 before 256, train before sample,
cudnn, xla, pallas_gpu; runs that no longer fit --budget_s are listed as skipped (rerun them with e.g.
--sizes=256). Without a GPU it exits with status 1 before any run. Prints the table and writes one JSON per run,
summary.json and summary.md to --output_dir.
"""

import sys

from absl import app, flags

from pixelhdm_jax import cli
from pixelhdm_jax.perf import bench_suite

_OUTPUT = flags.DEFINE_string("output_dir", "/tmp/pixelhdm_gpu_bench", "Folder for the JSONs, logs and summary.")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "Tiny preset, 64 and 32 px, kernel xla, 2 steps: checks the script "
                             "on a CPU.")
_SIZES = flags.DEFINE_list("sizes", None, "Square image sizes, in order (default 512,256; dry run 64,32).")
_KERNELS = flags.DEFINE_list("kernels", None, "Attention kernels (default cudnn,xla,pallas_gpu; dry run xla).")
_MODES = flags.DEFINE_list("modes", ["train", "sample"], "train and/or sample.")
_REMAT = flags.DEFINE_list("remat_policies", [], "Remat policies of the train runs (default: the preset's).")
_CACHES = flags.DEFINE_list("caches", [], "Also time each train run with these encoder caches, one run each: text, "
                            "teacher or text+teacher (launch/bench.py --text_cache / --teacher_cache).")
_BUDGET = flags.DEFINE_float("budget_s", 450.0, "Wall-clock budget; runs that no longer fit are skipped.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  backend = None if _DRY_RUN.value else bench_suite.default_backend()
  if backend not in (None, "gpu"):
    sys.exit(f"gpu_bench.py: no GPU: JAX runs on {backend!r} here (a CUDA build of JAX, pip install -e '.[gpu]', on "
             "a machine with an NVIDIA GPU runs the benchmark; --dry_run checks the script on a CPU)")
  variants = [tuple(variant.split("+")) for variant in _CACHES.value]
  unknown = {name for variant in variants for name in variant} - set(bench_suite.CACHES)
  if unknown:
    raise app.UsageError(f"--caches names {sorted(unknown)}: use text, teacher or text+teacher")
  suite = bench_suite.gpu_suite(_SIZES.value, _KERNELS.value, _MODES.value, _REMAT.value, variants,
                                dry_run=_DRY_RUN.value)
  records = bench_suite.run_all(suite.runs, preset=suite.preset, steps=suite.steps, output_dir=_OUTPUT.value,
                                budget_s=_BUDGET.value, overrides=suite.overrides)
  print(bench_suite.summarize(records, _OUTPUT.value))
  print(f"results in {_OUTPUT.value}/ (summary.md, summary.json, one JSON and log per run)")


if __name__ == "__main__":
  cli.run(main)
