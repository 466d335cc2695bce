"""`train_and_evaluate(config, workdir)`: the training loop around the pure, compiled train step.

The loop builds the mesh, the frozen encoders, the networks and the data, creates the state sharded (or
restores the latest checkpoint into it), then runs one compiled step per bucket shape. Metrics leave the
device one step late, so the host never stalls the device queue: every step only the skip counter that the
divergence check needs, at `train.log_every` all of them, which go to the progress bar, the console,
`metrics.jsonl` and TensorBoard. Checkpoints are asynchronous; SIGTERM (preemption) and Ctrl-C save and return.
Sample grids and evaluations (`train.eval_every`) run between steps and only read the state. A lock file keeps
a second run out of the workdir.
Every process runs this loop (one per host); only process 0 writes metrics, sample grids and the bar.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import flax.linen as nn
import jax
import ml_collections
from absl import logging
from tqdm import tqdm

from pixelhdm_jax import parallel, storage
from pixelhdm_jax.config import validate
from pixelhdm_jax.data.pipeline import build_train_loader
from pixelhdm_jax.data.sources import build_source
from pixelhdm_jax.encoders import caption_cache, teacher_features
from pixelhdm_jax.losses import repa_active
from pixelhdm_jax.perf import flops
from pixelhdm_jax.train.checkpoint import RunCheckpoints, remove_unfinished_saves
from pixelhdm_jax.train.init_from import initialize_from
from pixelhdm_jax.train.metrics import MetricWriter
from pixelhdm_jax.train.periodic_eval import PeriodicEvaluation
from pixelhdm_jax.train.profiling import StepProfiler
from pixelhdm_jax.train.sample_grids import SampleGrids
from pixelhdm_jax.train.setup import build_trainer, log_param_sharding
from pixelhdm_jax.train.workdir_lock import WorkdirLock


class NonFiniteError(RuntimeError):
  """Too many consecutive steps had a non-finite loss or gradients."""


class _Preemption:
  """Remembers a SIGTERM (preemption) or a first SIGINT (Ctrl-C) so the loop can save and return at the next
  step boundary (one process only); a second SIGINT aborts at once (KeyboardInterrupt, no save).

  With several processes the handlers stay out: JAX's preemption service (started by `jax.distributed`)
  catches SIGTERM and `reached_preemption(step)` makes every process save at the same step; a flag per
  process could stop the hosts at different steps, one saving while another waits in a train step.
  """

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self.requested = False
    self._previous = {}

  def __enter__(self):
    if jax.process_count() > 1:
      return self
    try:
      self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
    except ValueError:  # not the main thread: preemption then comes only from the checkpoint manager
      self._previous = {}
    return self

  def _handle(self, signum, frame):
    del frame
    name = signal.Signals(signum).name
    if self.requested and signum == signal.SIGINT:
      signal.signal(signal.SIGINT, signal.default_int_handler)
      raise KeyboardInterrupt(f"second {name}: stopped without saving")
    logging.warning("%s received: saving a checkpoint and stopping%s", name,
                    " (Ctrl-C again stops at once, without saving)" if signum == signal.SIGINT else "")
    self.requested = True

  def __exit__(self, *exc):
    for s, previous in self._previous.items():
      signal.signal(s, previous)


class _Pending:
  """The last dispatched step, whose metrics are read only after the next step has been dispatched."""

  def __init__(self):
    self.metrics, self.step, self.batch_shape, self.timed = None, None, None, False

  def set(self, metrics, step, batch_shape, timed):
    self.metrics, self.step, self.batch_shape, self.timed = metrics, step, batch_shape, timed


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | os.PathLike, *, force_unlock: bool = False,
                       strict_resume: bool = False) -> dict[str, float]:
  """Trains `config` in `workdir` (resuming from its newest checkpoint that restores); returns the last logged
  metrics. The workdir is locked for the run (`force_unlock` breaks another run's lock); `strict_resume` makes
  an unreadable newest checkpoint an error instead of a fallback to the previous one."""
  validate(config)
  workdir = storage.location(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  with WorkdirLock(workdir, force=force_unlock, enabled=jax.process_index() == 0):
    mesh = parallel.create_mesh(config.mesh)
    rules = parallel.logical_rules(config.mesh)
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
      return _train(config, workdir, mesh, rules, strict_resume)


def _train(config, workdir, mesh, rules, strict_resume) -> dict[str, float]:
  trainer = build_trainer(config, mesh, rules)
  log_param_sharding(trainer)
  if jax.process_index() == 0:
    remove_unfinished_saves(workdir / "checkpoints")
  checkpoints = RunCheckpoints(workdir / "checkpoints", keep=config.train.keep_checkpoints)
  loader = _loader(trainer)
  latest = checkpoints.latest_step()
  if latest is None:
    init_rng, rng = jax.random.split(jax.random.key(config.seed))
    state = trainer.new_state(init_rng)
    if config.train.init_from:
      state = initialize_from(state, config.train.init_from, config)
    logging.info("new run in %s", workdir)
  else:
    latest, state, rng = checkpoints.restore_newest(config, trainer.abstract_state(),
                                                    strict=strict_resume or jax.process_count() > 1)
    if config.train.init_from:
      logging.info("resuming: train.init_from=%s applies to a new run only", config.train.init_from)
    if not checkpoints.restore_data(latest, loader):
      # Batches are a pure function of the step, so the loader can restart exactly where the run stopped.
      logging.warning("rebuilding the data loader at batch %d (other worker or process count)", int(state.step))
      loader = _loader(trainer, start_step=int(state.step))
    logging.info("resumed from %s at step %d", checkpoints.directory / str(latest), latest)
  writer = MetricWriter(workdir, start_step=latest or 0)
  aborted = False
  try:
    with _Preemption() as preemption:
      return _run(trainer, state, rng, loader, checkpoints, writer, preemption, workdir)
  except KeyboardInterrupt:
    aborted = True  # a second Ctrl-C: nothing that waits (for a save in flight, the TensorBoard writer's thread)
    raise
  finally:
    if not aborted:
      checkpoints.wait()
      checkpoints.close()
      writer.close()


def _loader(trainer, start_step: int = 0):
  """This process's batch iterator: tokenised captions, or with `text.cache=True` their cached encodings; with
  `dino.cache=True` (and REPA, centre crops, no flips) the images' cached DINOv3 features. A cache made with other
  settings is a ConfigError naming the one that differs."""
  config = trainer.config
  tokenizer, text, teacher = None, None, None
  if trainer.text_encoder is None:
    text = caption_cache.cache_settings(config, build_source(config.data))
  else:
    tokenizer = trainer.text_encoder.tokenizer
  d = config.data
  if config.dino.cache and trainer.has_teacher:
    if d.random_crop or d.random_flip:
      logging.info("dino.cache: data.random_crop=%s / random_flip=%s change the images every step, so the REPA "
                   "targets come from the live teacher", d.random_crop, d.random_flip)
    else:
      teacher = teacher_features.cache_settings(config, build_source(d))
  return build_train_loader(config, tokenizer, process_index=jax.process_index(), process_count=jax.process_count(),
                            start_step=start_step, text_cache_settings=text, teacher_cache_settings=teacher)


def _run(trainer, state, rng, loader, checkpoints, writer, preemption, workdir) -> dict[str, float]:
  """The step loop; returns the last logged metrics."""
  config = trainer.config
  train = config.train
  accum = config.optim.grad_accum_steps
  total = train.num_steps * accum  # micro-steps
  step = int(state.step)
  compiled: dict[tuple, Any] = {}
  pending, last = _Pending(), {}
  timer = {"time": None, "step": None}
  sample_grids = SampleGrids(trainer, workdir, writer)
  evaluation = PeriodicEvaluation(trainer, workdir)
  if evaluation.enabled and step < total:
    evaluation.prepare()
  bar = tqdm(total=train.num_steps, initial=step // accum, unit="step", dynamic_ncols=True,
             disable=jax.process_index() != 0)
  profiler = StepProfiler(train.profile_steps, workdir / "profile")
  while step < total:
    # Preemption is honoured between optimizer steps, never inside a gradient accumulation.
    if step % accum == 0 and (preemption.requested or checkpoints.manager.reached_preemption(step // accum)):
      checkpoints.save(step // accum, state, rng, loader, config, force=True)
      logging.warning("preempted at step %d: checkpoint saved to %s", step, checkpoints.directory)
      break
    local = next(loader)
    batch = trainer.global_batch(local)
    repa = trainer.has_teacher and repa_active(config.loss, step // accum)
    key = (batch["images"].shape, repa)
    if key not in compiled:
      pending.timed = False  # its fetch waits for this compile
      started = time.perf_counter()
      compiled[key] = trainer.step_fn(repa).lower(state, trainer.frozen, batch, rng).compile()
      seconds = time.perf_counter() - started
      logging.info("compiled the train step for images %s (REPA %s) in %.1f s", key[0], "on" if repa else "off",
                   seconds)
      writer.scalars(step // accum, {"compile_s": seconds, "compiled_programs": len(compiled)})
    if step % accum == 0:
      profiler.before(step // accum + 1)
    with jax.profiler.StepTraceAnnotation("train", step_num=step):
      state, metrics = compiled[key](state, trainer.frozen, batch, rng)
    last = _report(config, pending, timer, writer, bar) or last
    pending.set(metrics, step, key[0], timed=True)
    step += 1
    if step % accum:
      continue
    bar.update(1)
    opt_step = step // accum
    profiler.after(opt_step, state)
    if opt_step % train.checkpoint_every == 0 or step == total:
      checkpoints.save(opt_step, state, rng, loader, config)
      pending.timed = False
    if train.sample_prompts and (step == total or (train.sample_every and opt_step % train.sample_every == 0)):
      logging.info("sample grid of step %d: %s", opt_step, sample_grids(state, opt_step))
      pending.timed = False
    if evaluation.due(opt_step):
      evaluation(state, opt_step)
      pending.timed = False
  profiler.close()
  last = _report(config, pending, timer, writer, bar) or last
  bar.close()
  return last


def _report(config, pending: _Pending, timer: dict, writer: MetricWriter, bar) -> dict[str, float] | None:
  """Reads the previous step's skip counter (every step: the divergence check, one scalar) and, when that step
  is logged, all its metrics with the throughput; returns the logged values (None on steps not logged)."""
  if pending.metrics is None:
    return None
  nonfinite = int(jax.device_get(pending.metrics["nonfinite"]))
  now = time.perf_counter()
  seconds = None  # per micro-step, when only steps ran since the previous read (no compile, save or grid)
  if pending.timed and timer["time"] is not None:
    seconds = (now - timer["time"]) / max(pending.step - timer["step"], 1)
  timer["time"], timer["step"] = now, pending.step
  _check_finite(nonfinite, pending.step, config.train.max_nonfinite_steps)
  opt_step = _logged_step(config, pending.step)
  values = None
  if opt_step is not None:
    values = {k: float(v) for k, v in jax.device_get(pending.metrics).items()}
    if seconds is not None:
      values.update(_throughput(config, pending.batch_shape, seconds))
    _log(writer, bar, opt_step, values)
  pending.metrics = None
  return values


def _check_finite(nonfinite: int, step: int, limit: int) -> None:
  """Stops the run once `limit` consecutive steps up to micro-step `step` had a non-finite loss or gradients."""
  if nonfinite >= limit:
    raise NonFiniteError(f"{nonfinite} consecutive steps up to step {step} had a non-finite loss or gradients "
                         "(train.max_nonfinite_steps); the last checkpoint holds finite weights")


def _logged_step(config, micro_step: int) -> int | None:
  """The optimizer step that micro-step `micro_step` completes, if that step is logged (`train.log_every` and
  the last), else None."""
  accum = config.optim.grad_accum_steps
  opt_step = micro_step // accum + 1
  last_micro_step = (micro_step + 1) % accum == 0
  if last_micro_step and (opt_step % config.train.log_every == 0 or opt_step == config.train.num_steps):
    return opt_step
  return None


def _throughput(config, batch_shape: tuple[int, ...], seconds: float) -> dict[str, float]:
  """Step time (per optimizer step), images/s, model TFLOP/s per device and MFU (if the peak is known) of
  micro-steps of `seconds` on batches of `batch_shape`."""
  batch, height, width, _ = batch_shape
  model_flops = batch * flops.train_step_flops(config.model, height, width, config.text.max_length)
  rates = flops.throughput(model_flops, seconds, batch, jax.devices()[0].device_kind, jax.device_count())
  values = {"step_time_s": seconds * config.optim.grad_accum_steps, **rates._asdict()}
  return {k: v for k, v in values.items() if v is not None}


def _log(writer: MetricWriter, bar, opt_step: int, values: dict[str, float]) -> None:
  """Logged values to metrics.jsonl and TensorBoard, the console and the progress bar."""
  writer.scalars(opt_step, values)
  bar.set_postfix(loss=f"{values['loss']:.4f}", refresh=False)
  shown = ("loss", "loss_velocity", "loss_frequency", "loss_repa", "grad_norm", "lr", "images_per_s", "mfu")
  logging.info("step %d: %s", opt_step, ", ".join(f"{k}={values[k]:.4g}" for k in shown if k in values))
