"""Train-step and sampling throughput on synthetic data (`launch/bench.py`).

`run(config, mode=..., height=..., width=..., batch_size=...)` builds what training (`build_trainer`) or
sampling (`Pipeline`) builds, compiles once (timed apart, `compile_s`), runs `warmup` untimed steps, then
`steps` timed ones, each ended by `block_until_ready`. A train step is one micro-step on a fixed batch
with REPA on (the costlier program of the first `loss.repa_early_stop` steps); a sample step is one whole
sampling loop (`config.sample`: solver, steps, guidance) for `batch_size` images.

Reported (`RESULT_KEYS`): the median step time, images/s, model TFLOP/s per device and MFU from the
analytic counter (`flops.py`: the PixelHDM network only, 3x forward for training, remat recompute not
counted), the same with the frozen encoders' forward added (`*_with_encoders`: Qwen3 on the prompts,
DINOv3 on the images while REPA is on; neither when cached: `text_cache`, `teacher_cache`), the FLOPs per image
of the model and encoders (`flops_per_image`; not XLA's `cost_analysis`, which counts a scanned layer stack's body
once), the compiled program's memory per device
(`peak_memory_bytes` = argument + output - donated alias + temp, `aot.program_memory`) and, on GPU/TPU, the
allocator's peak since the process started (`device_peak_bytes`). Pretrained encoders are replaced by
random ones of the same size (`text/dino.source=random_full`): their weights do not change the cost.
"""

from __future__ import annotations

import json
import pathlib
import statistics
import time
from typing import Any, Callable

import flax.linen as nn
import jax
import ml_collections
import numpy as np

from pixelhdm_jax import parallel
from pixelhdm_jax.config import check_backend, validate
from pixelhdm_jax.encoders.text import build_text_encoder
from pixelhdm_jax.encoders.transformer import place_frozen
from pixelhdm_jax.kernels.attention import resolve
from pixelhdm_jax.models.layers import compute_dtype
from pixelhdm_jax.models.pixelhdm import PixelHDM, abstract_params, example_inputs
from pixelhdm_jax.perf import aot, flops
from pixelhdm_jax.sample import solvers
from pixelhdm_jax.sample.guidance import Guidance
from pixelhdm_jax.sample.pipeline import Pipeline
from pixelhdm_jax.sample.request import SampleRequest, check_size
from pixelhdm_jax.train.setup import build_trainer

MODES = ("train", "sample")
RESULT_KEYS = ("mode", "height", "width", "batch_size", "steps", "compile_s", "step_time_s", "images_per_s",
               "flops_per_image", "tflops_per_device", "tflops_per_device_with_encoders", "mfu",
               "mfu_with_encoders",
               "peak_memory_bytes", "device_peak_bytes", "device_kind", "num_devices", "config")


def synthetic_prompts(count: int) -> list[str]:
  return [f"a synthetic benchmark prompt, number {i}" for i in range(count)]


def synthetic_images(batch_size: int, height: int, width: int, seed: int) -> np.ndarray:
  return np.random.default_rng(seed).integers(0, 256, (batch_size, height, width, 3), dtype=np.uint8)


def synthetic_batch(tokenizer, batch_size: int, height: int, width: int, seed: int) -> dict[str, np.ndarray]:
  """A train batch of random uint8 images and tokenised prompts (this process's share)."""
  ids, mask = tokenizer(synthetic_prompts(batch_size))
  return {"images": synthetic_images(batch_size, height, width, seed), "token_ids": ids, "token_mask": mask}


def time_steps(step: Callable[[], Any], steps: int, warmup: int, profile: str | None = None,
               name: str = "train") -> list[float]:
  """Seconds of each of `steps` calls of `step` (which blocks until its outputs are ready), after `warmup`; with
  `profile` (a folder), a JAX profiler trace of the timed steps. Every step is marked `StepTraceAnnotation(name)`."""
  for i in range(warmup):
    with jax.profiler.StepTraceAnnotation(name, step_num=i):
      step()
  if profile:
    jax.profiler.start_trace(str(profile))
  times = []
  try:
    for i in range(warmup, warmup + steps):
      started = time.perf_counter()
      with jax.profiler.StepTraceAnnotation(name, step_num=i):
        step()
      times.append(time.perf_counter() - started)
  finally:
    if profile:
      jax.profiler.stop_trace()
  return times


def cached_encodings(config, batch_size: int, height: int, width: int, *, text: bool, teacher_dim: int | None,
                     seed: int) -> dict[str, np.ndarray]:
  """Random stand-ins, of the shapes and dtypes the caches give (`aot.cached_encoding_shapes`; every token valid),
  for the text encodings and the DINOv3 patch features: what the cached step reads instead of running the encoders."""
  rng = np.random.default_rng(seed)
  shapes = aot.cached_encoding_shapes(config, batch_size, height, width, text=text, teacher_dim=teacher_dim)
  return {name: np.ones(shape, bool) if dtype == np.bool_ else rng.standard_normal(shape, np.float32).astype(dtype)
          for name, (shape, dtype) in shapes.items()}


def _train(config, mesh, rules, height, width, batch_size, steps, warmup, profile, text_cache=False,
           teacher_cache=False) -> dict[str, Any]:
  config = ml_collections.ConfigDict(config.to_dict())
  config.text.cache = text_cache  # after validate: the bench reads no dataset, the stand-ins have the cache's shapes
  trainer = build_trainer(config, mesh, rules)
  init_rng, rng = jax.random.split(jax.random.key(config.seed))
  state = trainer.new_state(init_rng)
  repa = trainer.has_teacher
  local_size, seed = batch_size // jax.process_count(), jax.process_index()
  if text_cache:
    local = {"images": synthetic_images(local_size, height, width, seed)}
  else:
    local = synthetic_batch(trainer.text_encoder.tokenizer, local_size, height, width, seed)
  teacher_cache = teacher_cache and repa
  local.update(cached_encodings(config, local_size, height, width, text=text_cache,
                                teacher_dim=trainer.teacher.feature_dim if teacher_cache else None, seed=seed))
  batch = trainer.global_batch(local)
  started = time.perf_counter()
  compiled = trainer.step_fn(repa).lower(state, trainer.frozen, batch, rng).compile()
  compile_s = time.perf_counter() - started
  holder = {"state": state}

  def step():
    holder["state"], metrics = compiled(holder["state"], trainer.frozen, batch, rng)
    jax.block_until_ready((holder["state"], metrics))

  times = time_steps(step, steps, warmup, profile)
  text_length = config.text.max_length
  encoder = 0.0
  if not text_cache:
    encoder += flops.text_encoder_flops(text_length, trainer.text_encoder.module.arch, config.text.hidden_layer)
  if repa and not teacher_cache:
    encoder += flops.dino_flops(height, width, trainer.teacher.module.arch)
  return {"compile_s": compile_s, "times": times, "compiled": compiled, "repa": repa, "text_cache": text_cache,
          "teacher_cache": teacher_cache,
          "model_flops": batch_size * flops.train_step_flops(config.model, height, width, text_length),
          "encoder_flops": batch_size * encoder}


def _sample(config, mesh, rules, height, width, batch_size, steps, warmup, profile) -> dict[str, Any]:
  model = PixelHDM.from_config(config.model)
  shardings = parallel.param_shardings(abstract_params(model), mesh, rules)
  init = lambda key: nn.meta.unbox(model.init(key, *example_inputs(model))["params"])
  params = jax.jit(init, out_shardings=shardings)(jax.random.key(config.seed))
  text_encoder, host_params = build_text_encoder(config)
  pipeline = Pipeline(config, params, text_encoder, place_frozen(text_encoder, host_params, mesh, rules), mesh=mesh)
  lowered, args = pipeline.lower(SampleRequest(synthetic_prompts(batch_size), height=height, width=width,
                                               batch_size=batch_size))
  started = time.perf_counter()
  compiled = lowered.compile()
  compile_s = time.perf_counter() - started
  times = time_steps(lambda: jax.block_until_ready(compiled(*args)), steps, warmup, profile, name="sample")
  s = config.sample
  evaluations = solvers.num_evaluations(s.solver, s.num_steps)
  passes = 1 if Guidance.from_config(s).is_off else 2  # guided: conditional and unconditional in one batch
  text_length = config.text.max_length
  forward = flops.forward_flops(config.model, height, width, text_length).total
  encoder = 2 * flops.text_encoder_flops(text_length, text_encoder.module.arch, config.text.hidden_layer)
  return {"compile_s": compile_s, "times": times, "compiled": compiled, "solver": s.solver,
          "num_steps": s.num_steps, "network_passes": evaluations * passes,
          "model_flops": batch_size * evaluations * passes * forward, "encoder_flops": batch_size * encoder}


def device_peak_bytes() -> int | None:
  """The allocator's peak over this process's devices (GPU/TPU), None where `memory_stats` is absent."""
  peaks = [(device.memory_stats() or {}).get("peak_bytes_in_use") for device in jax.local_devices()]
  peaks = [peak for peak in peaks if peak is not None]
  return max(peaks) if peaks else None


def run(config: ml_collections.ConfigDict, *, mode: str, height: int, width: int, batch_size: int,
        steps: int = 10, warmup: int = 2, pretrained_encoders: bool = False,
        profile: str | None = None, text_cache: bool = False, teacher_cache: bool = False) -> dict[str, Any]:
  """Benchmarks `mode` (train or sample) on synthetic data; returns the result (`RESULT_KEYS` and more).
  `profile`: a folder for a JAX profiler trace of the timed steps. `text_cache` / `teacher_cache`: the train step
  that reads cached text encodings / DINOv3 features (random stand-ins of their shapes) instead of running Qwen3 /
  DINOv3."""
  if mode not in MODES:
    raise ValueError(f"mode={mode!r} is unknown: choose one of {MODES}")
  if mode != "train" and (text_cache or teacher_cache):
    raise ValueError("--text_cache and --teacher_cache time the train step: use --mode=train")
  if steps < 1 or warmup < 0:
    raise ValueError(f"steps={steps} must be >= 1 and warmup={warmup} >= 0")
  config = validate(config if pretrained_encoders else aot.random_encoders(config))
  check_backend(config, jax.default_backend())
  check_size(config.model, height, width)
  mesh = parallel.create_mesh(config.mesh)
  rules = parallel.logical_rules(config.mesh)
  aot.check_batch(batch_size, mesh, rules)
  caches = {"text_cache": text_cache, "teacher_cache": teacher_cache} if mode == "train" else {}
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    measured = (_train if mode == "train" else _sample)(config, mesh, rules, height, width, batch_size, steps,
                                                        warmup, profile, **caches)
  return _result(config, mode, mesh, height, width, batch_size, measured)


def _result(config, mode, mesh, height, width, batch_size, measured) -> dict[str, Any]:
  times = measured.pop("times")
  memory = aot.program_memory(measured.pop("compiled"))
  step_time = statistics.median(times)
  model_flops, encoder_flops = measured.pop("model_flops"), measured.pop("encoder_flops")
  devices = jax.devices()
  kind, count = devices[0].device_kind, len(devices)
  model = flops.throughput(model_flops, step_time, batch_size, kind, count)
  with_encoders = flops.throughput(model_flops + encoder_flops, step_time, batch_size, kind, count)
  m = config.model
  dtype = compute_dtype(m.compute_dtype)
  sequence = (height // m.patch_size) * (width // m.patch_size) + config.text.max_length
  kernel = resolve(m.attention, backend=jax.default_backend(), length=sequence, head_dim=m.hidden_dim // m.num_heads,
                   dtype=dtype)
  return {
      "mode": mode, "height": height, "width": width, "batch_size": batch_size, "steps": len(times),
      "compile_s": measured.pop("compile_s"), "step_time_s": step_time, "step_time_min_s": min(times),
      "step_times_s": times, "images_per_s": model.images_per_s,
      "model_flops_per_step": model_flops, "encoder_flops_per_step": encoder_flops,
      "flops_per_image": (model_flops + encoder_flops) / batch_size,
      "tflops_per_device": model.tflops_per_device, "tflops_per_device_with_encoders": with_encoders.tflops_per_device,
      "mfu": model.mfu, "mfu_with_encoders": with_encoders.mfu,
      "peak_memory_bytes": None if memory is None else memory.peak_bytes,
      "memory_per_device": None if memory is None else memory.as_dict(),
      "device_peak_bytes": device_peak_bytes(),
      "device_kind": kind, "num_devices": count, "num_processes": jax.process_count(),
      "backend": jax.default_backend(), "jax_version": jax.__version__, "mesh": dict(mesh.shape),
      "attention": m.attention, "attention_kernel": kernel, "remat_policy": m.remat_policy,
      "compute_dtype": dtype.name, **measured, "config": json.loads(config.to_json()),
  }


def _gib(value: int | None) -> str:
  return "-" if value is None else f"{value / 2**30:.2f}"


def _percent(value: float | None) -> str:
  return "-" if value is None else f"{100 * value:.1f}%"


def table(results: list[dict[str, Any]]) -> str:
  """A Markdown table of results (one row each)."""
  header = ("mode", "size", "batch", "kernel", "remat", "caches", "compile s", "step s", "img/s", "GFLOP/img",
            "TFLOP/s/dev", "MFU", "MFU+enc", "program GiB", "device peak GiB")
  rows = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for r in results:
    caches = "+".join(name for name in ("text", "teacher") if r.get(f"{name}_cache")) or "-"
    cells = (r["mode"], f"{r['height']}x{r['width']}", r["batch_size"], f"{r['attention']} ({r['attention_kernel']})",
             r["remat_policy"], caches, f"{r['compile_s']:.1f}", f"{r['step_time_s']:.4f}", f"{r['images_per_s']:.2f}",
             f"{r['flops_per_image'] / 1e9:.4g}", f"{r['tflops_per_device']:.3g}", _percent(r["mfu"]),
             _percent(r["mfu_with_encoders"]),
             _gib(r["peak_memory_bytes"]), _gib(r["device_peak_bytes"]))
    rows.append("| " + " | ".join(str(c) for c in cells) + " |")
  return "\n".join(rows)


def write_json(result: dict[str, Any], path: str | pathlib.Path) -> pathlib.Path:
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
  return path
