"""Train PixelHDM: `python launch/train.py --config=configs/base.py:tiny --workdir=/tmp/pixelhdm_tiny`.

The config string picks a preset (tiny, small, default, large); any field can be overridden, e.g.
`--config.train.num_steps=1000 --config.train.batch_size=64`. Re-running with the same workdir resumes from
its newest checkpoint that restores (`--strict_resume`: an unreadable newest checkpoint is an error instead);
a workdir holds one run at a time (`--force_unlock` breaks the lock of a run that is gone). Ctrl-C saves and
exits like a preemption (a second Ctrl-C stops at once). On several hosts run the same command on every host
(one process per host), with `--distributed` on a TPU VM pod slice or the coordinator flags where the cluster
is not detected (docs/distributed.md).
"""

import os
import sys

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from pixelhdm_jax import cli, parallel
from pixelhdm_jax.compilation_cache import configure_compilation_cache
from pixelhdm_jax.config import check_backend

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file with a preset, e.g. configs/base.py:tiny.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics.jsonl, tb/ and samples/.")
_DISTRIBUTED = flags.DEFINE_bool("distributed", False, "Start jax.distributed with auto-detection even when the "
                                  "environment names no other process (TPU VM pod slices).")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0, for clusters JAX does not "
                                   "detect (with --num_processes and --process_id).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in the job (one per host).")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index in [0, num_processes).")
_FORCE_UNLOCK = flags.DEFINE_bool("force_unlock", False, "Take over the workdir's lock from another run (one that "
                                   "is gone, e.g. on a lost machine).")
_STRICT_RESUME = flags.DEFINE_bool("strict_resume", False, "Stop when the newest checkpoint cannot be read, instead "
                                   "of renaming it <step>.corrupt and resuming from the previous one.")
flags.mark_flags_as_required(["config", "workdir"])


class _QuietLibraries:
  """Keeps INFO chatter of Orbax and Grain off the console (warnings and errors still show)."""

  def filter(self, record):
    return record.levelno >= 30 or not any(f"/{lib}/" in record.pathname for lib in ("orbax", "grain", "jax"))


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  logging.get_absl_handler().addFilter(_QuietLibraries())  # also keeps JAX's backend probing off an error
  parallel.maybe_initialize_distributed(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value,
                                        force=_DISTRIBUTED.value)
  check_backend(_CONFIG.value, jax.default_backend())
  configure_compilation_cache()
  from pixelhdm_jax.train.loop import train_and_evaluate  # after jax.distributed, which must come first
  from pixelhdm_jax.train.workdir_lock import WorkdirLockedError
  from pixelhdm_jax.weights.inference import CheckpointError
  logging.set_verbosity(logging.INFO)
  try:
    train_and_evaluate(_CONFIG.value, _WORKDIR.value, force_unlock=_FORCE_UNLOCK.value,
                       strict_resume=_STRICT_RESUME.value)
  except (WorkdirLockedError, CheckpointError) as error:
    cli.fail(str(error))
  except KeyboardInterrupt:
    print(f"{os.path.basename(sys.argv[0])}: error: interrupted twice: stopped without saving; the run resumes "
          "from its last checkpoint", file=sys.stderr, flush=True)
    os._exit(130)  # at once, not after an asynchronous save still in flight


if __name__ == "__main__":
  cli.run(main)
