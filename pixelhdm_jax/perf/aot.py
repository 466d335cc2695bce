"""Ahead-of-time compilation of the train step for a target topology, and memory of compiled programs.

`compile_train_step(config, compile_target(name), ...)` builds the trainer with shapes only (no array is
allocated), lowers the train step with `jax.ShapeDtypeStruct`s for the state, the frozen encoder weights, the
batch and the RNG, compiles it and
reports the compiler's memory per device (maxtext's train_compile). For a TPU slice (`v5p-256`, needs
libtpu) or GPU model (`h100x8`, needs the JAX CUDA plugin) this runs on a CPU host with compile-only
devices and fails the way the hardware would: a TPU program that does not fit is the compiler's
out-of-memory error (the GPU compiler does not check, so the report compares the peak with the card's
memory), a sharding that does not divide is an error. Hardware-dependent choices (`auto` kernel and dtype,
Pallas interpret mode) follow the target platform (`target.py`).
"""

from __future__ import annotations

import collections
import re
import time
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from pixelhdm_jax import parallel
from pixelhdm_jax.config import check_backend, validate
from pixelhdm_jax.models.layers import abstract_key, compute_dtype
from pixelhdm_jax.models.pixelhdm import PixelHDM, abstract_params
from pixelhdm_jax.perf import flops, gpu_targets, roofline, target
from pixelhdm_jax.train.setup import Trainer, build_trainer
from pixelhdm_jax.train.step import TEACHER_FEATURES


class TpuSlice(NamedTuple):
  """How libtpu names a slice (`jax.experimental.topologies.get_topology_desc` arguments)."""
  topology: str  # "<generation>:<chips per dimension>"
  chip_config: str  # "megacore" (v4, v5p: one device per chip) or "default"
  chips_per_host: tuple[int, int, int]
  wrap: tuple[bool, bool, bool]  # torus links per dimension


_NO_WRAP, _TORUS = (False, False, False), (True, True, True)
# Cloud TPU slice names (accelerator types) -> libtpu topologies; any other slice can be given as
# "<generation>:<shape>", e.g. "v5:4x4x8" (v5p-256).
TPU_SLICES = {
    **{f"v4-{2 * n}": TpuSlice(f"v4:{shape}", "megacore", (2, 2, 1), _TORUS if n >= 64 else _NO_WRAP)
       for n, shape in ((4, "2x2x1"), (8, "2x2x2"), (16, "2x2x4"), (32, "2x4x4"), (64, "4x4x4"), (128, "4x4x8"))},
    **{f"v5p-{2 * n}": TpuSlice(f"v5:{shape}", "megacore", (2, 2, 1), _TORUS if n >= 64 else _NO_WRAP)
       for n, shape in ((4, "2x2x1"), (8, "2x2x2"), (16, "2x2x4"), (32, "2x4x4"), (64, "4x4x4"), (128, "4x4x8"))},
    **{f"v5e-{n}": TpuSlice(f"v5e:{shape}", "default", (2, 2, 1), wrap)
       for n, shape, wrap in ((16, "4x4", _NO_WRAP), (32, "4x8", _NO_WRAP), (64, "8x8", _NO_WRAP),
                              (128, "8x16", (False, True, False)), (256, "16x16", (True, True, False)))},
    **{f"v6e-{n}": TpuSlice(f"v6e:{shape}", "default", bounds, wrap)
       for n, shape, bounds, wrap in ((1, "1x1", (1, 1, 1), _NO_WRAP), (4, "2x2", (2, 2, 1), _NO_WRAP),
                                      (8, "2x4", (2, 2, 1), _NO_WRAP), (16, "4x4", (2, 2, 1), _NO_WRAP),
                                      (32, "4x8", (2, 2, 1), _NO_WRAP), (64, "8x8", (2, 2, 1), _NO_WRAP),
                                      (256, "16x16", (2, 2, 1), (True, True, False)))},
}
LOCAL = "local"  # this process's own devices (e.g. 8 simulated CPU devices in tests)


# The programs `launch/compile.py --program` compiles: their names in messages, and what to change when one does not
# fit its devices.
PROGRAMS = {"train": "the train step", "forward": "one network pass"}
REMEDIES = {"train": "Use a smaller batch, model.remat_policy=full, or more devices",
            "forward": "Use a smaller batch or more devices"}


class CompileError(RuntimeError):
  """The target cannot be compiled for here (no libtpu, unknown topology) or the program does not fit it; the
  message says what to do."""


def tpu_slice(name: str) -> TpuSlice:
  """The slice of a Cloud TPU name (`v5p-256`) or a raw libtpu topology (`v5:4x4x8`)."""
  if name in TPU_SLICES:
    return TPU_SLICES[name]
  generation, _, shape = name.partition(":")
  if not shape or not all(part.isdigit() for part in shape.split("x")):
    raise CompileError(f"unknown TPU topology {name!r}: use a slice name ({', '.join(TPU_SLICES)}) or a libtpu "
                       "topology '<generation>:<shape>' such as 'v5:4x4x8' or 'v6e:16x16'")
  chip_config = "megacore" if generation in ("v4", "v5", "v5p") else "default"
  return TpuSlice(name, chip_config, (2, 2, 1), _NO_WRAP)


class CompileTarget(NamedTuple):
  """Devices to compile for (compile-only for a TPU slice or a GPU model), their platform, the compiler
  options the target needs, and the memory of one device where the compiler does not enforce it."""
  devices: list[jax.Device]
  platform: str
  compiler_options: dict[str, Any] = {}
  device_memory_bytes: int | None = None


def compile_target(name: str, num_slices: int = 1) -> CompileTarget:
  """The target of a `--topology` name: `local` (this process's devices), a GPU model (`h100x8`, needs the
  JAX CUDA plugin) or a TPU slice (`v5p-256`, needs libtpu); neither needs the hardware."""
  if name == LOCAL:
    return CompileTarget(list(jax.devices()), jax.default_backend())
  gpu = gpu_targets.parse_gpu_topology(name)
  if gpu is not None:
    if num_slices != 1:
      raise CompileError(f"num_slices={num_slices} is for TPU slices; give the GPUs as {name.split('x')[0]}x<count>")
    spec, count = gpu
    description = _describe(name, "cuda", "the JAX CUDA plugin (pip install 'jax[cuda12]')",
                            target_config=spec.target_config(), topology=f"1x1x{count}")
    return CompileTarget(list(description.devices), "gpu", gpu_targets.COMPILER_OPTIONS, spec.device_memory_bytes)
  spec = tpu_slice(name)
  description = _describe(f"{name} ({spec.topology})", "tpu", "libtpu (pip install 'jax[tpu]')",
                          topology_name=spec.topology, chip_config_name=spec.chip_config,
                          chips_per_host_bounds=spec.chips_per_host, num_slices=num_slices, wrap=spec.wrap)
  return CompileTarget(list(description.devices), "tpu")


def _describe(what: str, platform: str, install: str, **options: Any) -> Any:
  """`jax.experimental.topologies.get_topology_desc` for `platform`, its failures as CompileErrors."""
  try:
    from jax.experimental import topologies  # experimental: imported only when a target topology is asked for
  except ImportError as error:
    raise CompileError(f"JAX {jax.__version__} has no jax.experimental.topologies: {error}") from error
  try:
    return topologies.get_topology_desc(platform=platform, **options)
  except (RuntimeError, NotImplementedError, ValueError) as error:
    raise CompileError(f"cannot describe the {platform.upper()} topology {what} on this host: "
                       f"{type(error).__name__}: {error}. Install {install}, which compiles without the hardware; "
                       "or use --topology=local") from error


class ProgramMemory(NamedTuple):
  """Bytes per device of a compiled program (`compiled.memory_analysis()`)."""
  argument_bytes: int
  output_bytes: int
  alias_bytes: int  # outputs written in place of donated arguments
  temp_bytes: int
  code_bytes: int

  @property
  def peak_bytes(self) -> int:
    """Device memory while the program runs: its arguments, its outputs not written over donated arguments,
    and the temporary buffer (one allocation on GPU and TPU)."""
    return self.argument_bytes + self.output_bytes - self.alias_bytes + self.temp_bytes

  def as_dict(self) -> dict[str, int]:
    return {**self._asdict(), "peak_bytes": self.peak_bytes}


def program_memory(compiled: Any) -> ProgramMemory | None:
  """Memory of a compiled program per device; None on backends without a memory analysis."""
  try:
    stats = compiled.memory_analysis()
  except (NotImplementedError, jax.errors.JaxRuntimeError):
    return None
  if stats is None:
    return None
  parts = (stats.argument_size_in_bytes, stats.output_size_in_bytes, stats.alias_size_in_bytes,
           stats.temp_size_in_bytes)
  return ProgramMemory(*(int(x) for x in parts), int(stats.generated_code_size_in_bytes))


def random_encoders(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A copy of `config` whose pretrained encoders are random at their real size (`random_full`): benchmarks
  and AOT compiles on synthetic data need their shapes and cost, not their weights."""
  config = ml_collections.ConfigDict(config.to_dict())
  for section in (config.text, config.dino):
    if section.source == "pretrained":
      section.source = "random_full"
  return config


def cached_encoding_shapes(config: ml_collections.ConfigDict, batch_size: int, height: int, width: int, *,
                           text: bool, teacher_dim: int | None) -> dict[str, tuple[tuple[int, ...], Any]]:
  """Shapes and dtypes of what the caches give the train step instead of running the encoders: the text
  encodings (`text`) and, with `teacher_dim`, the DINOv3 patch features."""
  length, text_width = config.text.max_length, config.model.text_dim
  shapes: dict[str, tuple[tuple[int, ...], Any]] = {}
  if text:
    text_dtype = compute_dtype(config.text.compute_dtype)
    shapes.update(text_hidden=((batch_size, length, text_width), text_dtype),
                  text_mask=((batch_size, length), jnp.bool_), text_pooled=((batch_size, text_width), text_dtype))
  if teacher_dim is not None:
    patches = (height // config.model.patch_size) * (width // config.model.patch_size)
    shapes[TEACHER_FEATURES] = ((batch_size, patches, teacher_dim), compute_dtype(config.dino.compute_dtype))
  return shapes


def abstract_batch(trainer: Trainer, batch_size: int, height: int, width: int, *,
                   teacher_cache: bool = False) -> dict[str, jax.ShapeDtypeStruct]:
  """ShapeDtypeStructs (with the batch sharding) of a global train batch: token ids, or the cached text encodings
  when the trainer has no text encoder (`text.cache`); the cached DINOv3 features with `teacher_cache`."""
  sharding = parallel.batch_sharding(trainer.mesh, trainer.rules)
  text_length = trainer.config.text.max_length
  shapes = {"images": ((batch_size, height, width, 3), jnp.uint8)}
  if trainer.text_encoder is not None:
    shapes.update(token_ids=((batch_size, text_length), jnp.int32), token_mask=((batch_size, text_length), jnp.bool_))
  shapes.update(cached_encoding_shapes(trainer.config, batch_size, height, width, text=trainer.text_encoder is None,
                                       teacher_dim=trainer.teacher.feature_dim if teacher_cache else None))
  return {key: jax.ShapeDtypeStruct(shape, dtype, sharding=sharding) for key, (shape, dtype) in shapes.items()}


def check_batch(batch_size: int, mesh: jax.sharding.Mesh, rules: parallel.Rules) -> None:
  """Raises ValueError unless `batch_size` splits evenly over the batch axes of `mesh`."""
  devices = parallel.batch_devices(mesh, rules)
  if batch_size % devices:
    raise ValueError(f"batch_size={batch_size} does not split over the {devices} devices of the batch axes "
                     f"(mesh {dict(mesh.shape)}): use a multiple of {devices}")


def _mesh(config: ml_collections.ConfigDict, compile_for: CompileTarget,
          batch_size: int) -> tuple[jax.sharding.Mesh, parallel.Rules]:
  """The mesh and logical rules of a compile, after checking the backend and that the batch splits over them."""
  check_backend(config, compile_for.platform)
  mesh = parallel.create_mesh(config.mesh, compile_for.devices)
  rules = parallel.logical_rules(config.mesh)
  check_batch(batch_size, mesh, rules)
  return mesh, rules


def compile_train_step(config: ml_collections.ConfigDict, compile_for: CompileTarget, *, height: int, width: int,
                       batch_size: int, roofline_layers: int = 10, text_cache: bool = False,
                       teacher_cache: bool = False) -> dict[str, Any]:
  """Compiles the train step (REPA on, the larger program, unless REPA is off) for a target from shapes only;
  returns the report (compile time, memory per device and whether it fits, mesh, batch, custom calls, and for a
  device of known peak FLOP/s and bandwidth the program's roofline: `roofline.summary`). `text_cache` /
  `teacher_cache`: the step that reads cached text encodings / DINOv3 features instead of running the encoders."""
  devices, platform = compile_for.devices, compile_for.platform
  config = validate(random_encoders(config))
  text_cache = text_cache or config.text.cache  # a config's own text.cache=True compiles the cached step too
  config.text.cache = text_cache  # after validate: no dataset is read, the batch has the cache's shapes
  mesh, rules = _mesh(config, compile_for, batch_size)
  with target.compiling_for(platform), jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    trainer = build_trainer(config, mesh, rules, with_encoder_params=False)
    repa = trainer.has_teacher
    batch = abstract_batch(trainer, batch_size, height, width, teacher_cache=teacher_cache and repa)
    key = abstract_key()
    rng = jax.ShapeDtypeStruct(key.shape, key.dtype, sharding=trainer.shardings.step)
    started = time.perf_counter()
    lowered = trainer.step_fn(repa).lower(trainer.abstract_state(), trainer.frozen, batch, rng)
    compiled = _compile(lowered, compile_for, f"{PROGRAMS['train']} (batch {batch_size} of {height}x{width}, "
                        f"remat_policy={config.model.remat_policy})",
                        REMEDIES["train"])
    seconds = time.perf_counter() - started
  model_flops = flops.train_step_flops(config.model, height, width, config.text.max_length) * batch_size / len(devices)
  return _report(compiled, compile_for, model_flops, roofline_layers,
                 {"mesh": dict(mesh.shape), "height": height, "width": width, "batch_size": batch_size,
                  "batch_per_shard": batch_size // parallel.batch_devices(mesh, rules), "repa": repa,
                  "attention": config.model.attention, "remat_policy": config.model.remat_policy,
                  "compile_s": seconds, "text_cache": text_cache, "teacher_cache": teacher_cache and repa})


def compile_forward(config: ml_collections.ConfigDict, compile_for: CompileTarget, *, height: int, width: int,
                    batch_size: int, roofline_layers: int = 10) -> dict[str, Any]:
  """Compiles one network pass (a sampling step's work: no remat, no encoders) for a target from shapes only;
  returns the report: compile time, memory per device, custom calls and, for a known device, the roofline."""
  devices, platform = compile_for.devices, compile_for.platform
  config = validate(config)
  mesh, rules = _mesh(config, compile_for, batch_size)
  with target.compiling_for(platform), jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    model = PixelHDM.from_config(config.model, remat_policy="none")
    boxed = abstract_params(model)
    params = parallel.abstract_arrays(parallel.strip_boxes(boxed), parallel.param_shardings(boxed, mesh, rules))
    batch = parallel.batch_sharding(mesh, rules)
    text, text_width = config.text.max_length, config.model.text_dim
    inputs = [jax.ShapeDtypeStruct(shape, dtype, sharding=batch) for shape, dtype in (
        ((batch_size, height, width, 3), jnp.float32), ((batch_size,), jnp.float32),
        ((batch_size, text, text_width), model.dtype), ((batch_size, text), jnp.bool_),
        ((batch_size, text_width), model.dtype))]
    started = time.perf_counter()
    forward = jax.jit(lambda weights, *args: model.apply({"params": weights}, *args).velocity)
    compiled = _compile(forward.lower(params, *inputs), compile_for,
                        f"{PROGRAMS['forward']} (batch {batch_size} of {height}x{width})",
                        REMEDIES["forward"])
    seconds = time.perf_counter() - started
  model_flops = flops.forward_flops(config.model, height, width, text).total * batch_size / len(devices)
  return _report(compiled, compile_for, model_flops, roofline_layers,
                 {"mesh": dict(mesh.shape), "height": height, "width": width, "batch_size": batch_size,
                  "compile_s": seconds, "attention": config.model.attention})


def _compile(lowered: Any, compile_for: CompileTarget, program: str, remedy: str) -> Any:
  """Compiles for the target; a program the compiler finds too large (TPU) becomes a one-line CompileError that
  names the program, the target and `remedy`."""
  try:
    return lowered.compile(compiler_options=dict(compile_for.compiler_options) or None)
  except jax.errors.JaxRuntimeError as error:
    if "RESOURCE_EXHAUSTED" not in str(error):
      raise
    devices = compile_for.devices
    reason = str(error).rstrip(".")
    raise CompileError(f"{program} does not fit {len(devices)} x {devices[0].device_kind}: {reason}. "
                       f"{remedy}") from error


def _report(compiled: Any, compile_for: CompileTarget, model_flops: float, roofline_layers: int,
            fields: dict[str, Any]) -> dict[str, Any]:
  """What every compile reports: the target, memory per device and whether it fits, custom calls, the roofline."""
  devices = compile_for.devices
  memory = program_memory(compiled)
  capacity = compile_for.device_memory_bytes
  kind = devices[0].device_kind
  peak, bandwidth = flops.peak_flops(kind), flops.peak_bandwidth(kind)
  bound = None if peak is None or bandwidth is None else roofline.summary(compiled.as_text(), peak, bandwidth,
                                                                           model_flops, roofline_layers)
  return {"platform": compile_for.platform, "device_kind": kind, "num_devices": len(devices), **fields,
          "memory_per_device": None if memory is None else memory.as_dict(), "device_memory_bytes": capacity,
          "fits": None if memory is None or capacity is None else memory.peak_bytes <= capacity,
          "custom_calls": custom_calls(compiled), "model_flops_per_device": model_flops, "roofline": bound}


def custom_calls(compiled: Any) -> dict[str, int]:
  """How often each custom call (fused attention kernels, cuBLAS, Pallas) appears in a compiled program:
  shows which attention kernel `auto` became."""
  return dict(sorted(collections.Counter(re.findall(r'custom_call_target="([^"]+)"', compiled.as_text())).items()))
