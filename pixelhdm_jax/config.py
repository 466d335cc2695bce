"""Config validation: one pure function that rejects inconsistent settings with a message naming the fix.

`validate(config)` reads the config only: it never touches devices, files or the network, so launchers
call it before anything expensive. Each section has its own checker below. The allowed names of every
choice come from the registry of the module that implements it (a new solver, kernel, schedule or source
is added there; only settings of its own add checks here).
"""

from __future__ import annotations

import ml_collections

from pixelhdm_jax import flow
from pixelhdm_jax.data import order as data_order
from pixelhdm_jax.data import sources as data_sources
from pixelhdm_jax.encoders import transformer as encoder_sources
from pixelhdm_jax.errors import ConfigError
from pixelhdm_jax.evaluation.inception import RESIZES
from pixelhdm_jax.kernels import attention as kernels
from pixelhdm_jax.losses import BLOCK_TRANSFORMS
from pixelhdm_jax.models import remat
from pixelhdm_jax.models.adaln import PIXEL_ADALN_BIAS
from pixelhdm_jax.models.layers import COMPUTE_DTYPES
from pixelhdm_jax.optim import optimizer, schedules, zclip
from pixelhdm_jax.sample import guidance, solvers


def _require(condition: bool, message: str) -> None:
  if not condition:
    raise ConfigError(message)


def _positive_ints(section: ml_collections.ConfigDict, prefix: str, names: tuple[str, ...]) -> None:
  for name in names:
    value = section[name]
    _require(isinstance(value, int) and value > 0, f"{prefix}.{name} must be a positive integer, got {value!r}")


def _check_model(config: ml_collections.ConfigDict) -> None:
  m = config.model
  _positive_ints(m, "model", ("hidden_dim", "pixel_dim", "patch_size", "patch_layers", "pixel_layers",
                              "num_heads", "num_kv_heads", "bottleneck_dim", "time_embed_dim", "text_dim",
                              "mrope_max_text_len", "mrope_max_height", "mrope_max_width"))
  _require(m.hidden_dim % m.num_heads == 0,
           f"model.hidden_dim={m.hidden_dim} is not divisible by model.num_heads={m.num_heads}: "
           "choose num_heads that divides hidden_dim (head_dim = hidden_dim / num_heads)")
  _require(m.num_heads % m.num_kv_heads == 0,
           f"model.num_heads={m.num_heads} is not divisible by model.num_kv_heads={m.num_kv_heads}: "
           "GQA needs a whole number of query heads per KV head")
  head_dim = m.hidden_dim // m.num_heads
  split = tuple(m.mrope_split)
  _require(len(split) == 3 and sum(split) == head_dim,
           f"model.mrope_split={split} must be three sizes summing to head_dim={head_dim} "
           f"(hidden_dim / num_heads), e.g. ({head_dim // 4}, {head_dim * 3 // 8}, {head_dim * 3 // 8})")
  _require(all(d > 0 and d % 2 == 0 for d in split),
           f"model.mrope_split={split}: every axis needs a positive even size (RoPE rotates pairs)")
  _require(head_dim % 2 == 0, f"head_dim={head_dim} must be even for RoPE: change model.hidden_dim or num_heads")
  _require(m.mlp_ratio > 0, f"model.mlp_ratio must be positive, got {m.mlp_ratio}")
  _require(m.mrope_theta > 0, f"model.mrope_theta must be positive, got {m.mrope_theta}")
  _require(1 <= m.repa_align_layer <= m.patch_layers,
           f"model.repa_align_layer={m.repa_align_layer} must be in [1, model.patch_layers={m.patch_layers}] "
           "(1-based index of the patch block whose output feeds iREPA)")
  _require(m.pixel_adaln in PIXEL_ADALN_BIAS,
           f"model.pixel_adaln={m.pixel_adaln!r} is unknown: choose one of {tuple(PIXEL_ADALN_BIAS)}")
  _require(m.compute_dtype in COMPUTE_DTYPES,
           f"model.compute_dtype={m.compute_dtype!r} is unknown: choose one of {COMPUTE_DTYPES}")
  _require(m.attention in kernels.KERNEL_NAMES,
           f"model.attention={m.attention!r} is not an attention kernel: choose one of {kernels.KERNEL_NAMES}")
  _require(m.remat_policy in remat.POLICIES,
           f"model.remat_policy={m.remat_policy!r} is unknown: choose one of {tuple(remat.POLICIES)}")
  _require(config.text.max_length <= m.mrope_max_text_len,
           f"text.max_length={config.text.max_length} exceeds the mRoPE text table "
           f"(model.mrope_max_text_len={m.mrope_max_text_len}): lower text.max_length or raise the table")
  _require(config.text.max_length > 0, f"text.max_length must be positive, got {config.text.max_length}")


def _check_mesh(config: ml_collections.ConfigDict) -> None:
  shape = tuple(config.mesh.shape)
  _require(len(shape) == 3 and all(isinstance(s, int) for s in shape),
           f"mesh.shape={shape} must be three integers (data, fsdp, tensor)")
  _require(sum(s == -1 for s in shape) <= 1 and all(s == -1 or s >= 1 for s in shape),
           f"mesh.shape={shape}: sizes must be >= 1, with at most one -1 (filled with the remaining devices)")
  names = {rule[0] for rule in config.mesh.logical_axis_rules}
  for needed in ("batch", "activation_batch", "embed", "layers"):
    _require(needed in names, f"mesh.logical_axis_rules has no rule for the logical axis {needed!r}")


def _check_sample(config: ml_collections.ConfigDict) -> None:
  s = config.sample
  _require(s.solver in solvers.SOLVERS,
           f"sample.solver={s.solver!r} is unknown: choose one of {tuple(solvers.SOLVERS)}")
  _positive_ints(s, "sample", ("num_steps",))
  _require(s.time_shift_mode in flow.SHIFT_MODES,
           f"sample.time_shift_mode={s.time_shift_mode!r} is unknown: choose one of {tuple(flow.SHIFT_MODES)}")
  _require(s.time_shift > 0, f"sample.time_shift must be positive (1 = no shift), got {s.time_shift}")
  _require(s.guidance_scale >= 0 and s.guidance_min_scale >= 0,
           f"sample.guidance_scale={s.guidance_scale} and sample.guidance_min_scale={s.guidance_min_scale} "
           "must be >= 0 (1 = no guidance, 0 = unconditional)")
  _require(0 <= s.guidance_rescale <= 1,
           f"sample.guidance_rescale={s.guidance_rescale} must be in [0, 1] (0 = off, 0.7 is typical)")
  interval = tuple(s.guidance_interval)
  _require(len(interval) == 2 and 0 <= interval[0] < interval[1] <= 1,
           f"sample.guidance_interval={interval} must be (lo, hi) with 0 <= lo < hi <= 1, e.g. (0.1, 1.0)")
  _require(s.guidance_schedule in guidance.SCHEDULES,
           f"sample.guidance_schedule={s.guidance_schedule!r} is unknown: choose one of {tuple(guidance.SCHEDULES)}")


def _non_negative(section: ml_collections.ConfigDict, prefix: str, names: tuple[str, ...]) -> None:
  for name in names:
    value = section[name]
    _require(isinstance(value, (int, float)) and value >= 0, f"{prefix}.{name} must be >= 0, got {value!r}")


def _check_loss(config: ml_collections.ConfigDict) -> None:
  loss = config.loss
  _non_negative(loss, "loss", ("freq_lambda", "repa_lambda", "gamma_l2_lambda"))
  _require(isinstance(loss.freq_quality, int) and 1 <= loss.freq_quality <= 100,
           f"loss.freq_quality={loss.freq_quality!r} must be a JPEG quality, an integer in [1, 100] "
           "(90 as the original)")
  _require(loss.freq_transform in BLOCK_TRANSFORMS,
           f"loss.freq_transform={loss.freq_transform!r} is unknown: choose one of {tuple(BLOCK_TRANSFORMS)}")
  _require(isinstance(loss.repa_early_stop, int) and loss.repa_early_stop >= 0,
           f"loss.repa_early_stop={loss.repa_early_stop!r} must be an optimizer step count >= 0 "
           "(set loss.repa_lambda=0 to switch REPA off)")


def _check_schedule(config: ml_collections.ConfigDict) -> None:
  o = config.optim
  _require(o.schedule in schedules.SCHEDULES,
           f"optim.schedule={o.schedule!r} is unknown: choose one of {tuple(schedules.SCHEDULES)}")
  _require(isinstance(o.learning_rate, (int, float)) and o.learning_rate > 0,
           f"optim.learning_rate must be positive, got {o.learning_rate!r}")
  _require(isinstance(o.warmup_steps, int) and o.warmup_steps >= 0,
           f"optim.warmup_steps must be an integer >= 0, got {o.warmup_steps!r}")
  if o.schedule in ("cosine", "stepped_cosine_restart"):
    _require(0 <= o.min_lr <= o.learning_rate,
             f"optim.min_lr={o.min_lr} must be in [0, optim.learning_rate={o.learning_rate}]")
  if o.schedule == "cosine":
    _require(config.train.num_steps > o.warmup_steps,
             f"optim.warmup_steps={o.warmup_steps} leaves no cosine decay before train.num_steps="
             f"{config.train.num_steps}: lower the warm-up or use optim.schedule=constant")
  if o.schedule == "stepped_cosine_restart":
    _positive_ints(o, "optim", ("restart_cycle_steps",))
    _require(o.min_lr <= o.restart_cycle_min_lr <= o.learning_rate,
             f"optim.restart_cycle_min_lr={o.restart_cycle_min_lr} must be in [optim.min_lr={o.min_lr}, "
             f"optim.learning_rate={o.learning_rate}]")
    _require(0 < o.restart_decay_rate <= 1,
             f"optim.restart_decay_rate={o.restart_decay_rate} must be in (0, 1] (1 = no decay per cycle)")


def _check_optim(config: ml_collections.ConfigDict) -> None:
  o = config.optim
  _check_schedule(config)
  _require(0 <= o.b1 < 1 and 0 <= o.b2 < 1, f"optim.b1={o.b1} and optim.b2={o.b2} must be in [0, 1)")
  _require(o.eps > 0, f"optim.eps must be positive, got {o.eps}")
  _non_negative(o, "optim", ("weight_decay",))
  _require(o.max_grad_norm is None or o.max_grad_norm > 0,
           f"optim.max_grad_norm={o.max_grad_norm} must be positive, or None for no cap")
  _positive_ints(o, "optim", ("grad_accum_steps",))
  _require(0 <= o.ema_decay < 1, f"optim.ema_decay={o.ema_decay} must be in [0, 1) (0.999 as the original)")
  z = o.zclip
  _require(z.variant in optimizer.CLIPPINGS,
           f"optim.zclip.variant={z.variant!r} is unknown: choose one of {tuple(optimizer.CLIPPINGS)}")
  if z.variant == "off":
    return
  _require(0 < z.alpha < 1, f"optim.zclip.alpha={z.alpha} must be in (0, 1) (0.97 published, 0.99 the original)")
  _require(z.z_threshold > 0, f"optim.zclip.z_threshold must be positive, got {z.z_threshold}")
  if z.variant == "zclip":
    _positive_ints(z, "optim.zclip", ("warmup_steps",))
    _require(z.mode in zclip.MODES, f"optim.zclip.mode={z.mode!r} is unknown: choose one of {zclip.MODES}")
    _require(z.clip_option in zclip.CLIP_OPTIONS,
             f"optim.zclip.clip_option={z.clip_option!r} is unknown: choose one of {zclip.CLIP_OPTIONS}")
    _require(z.clip_factor > 0, f"optim.zclip.clip_factor must be positive, got {z.clip_factor}")


def _check_data(config: ml_collections.ConfigDict) -> None:
  d = config.data
  patch = config.model.patch_size
  _require(d.source in data_sources.SOURCES,
           f"data.source={d.source!r} is unknown: choose one of {tuple(data_sources.SOURCES)}")
  _require(d.source != "tfds" or bool(d.tfds_name), "data.source='tfds' needs data.tfds_name (e.g. 'my_dataset')")
  _positive_ints(d, "data", ("synthetic_size", "min_resolution", "max_resolution", "chunk_size", "num_threads",
                             "prefetch"))
  for name in ("min_resolution", "max_resolution"):
    _require(d[name] % patch == 0, f"data.{name}={d[name]} is not a multiple of model.patch_size={patch}: "
             f"use {d[name] // patch * patch or patch}")
  _require(d.min_resolution <= d.max_resolution,
           f"data.min_resolution={d.min_resolution} exceeds data.max_resolution={d.max_resolution}")
  _require(d.max_aspect_ratio >= 1, f"data.max_aspect_ratio={d.max_aspect_ratio} must be >= 1 (2.0 as the original)")
  _require(isinstance(d.allow_upscale, bool), f"data.allow_upscale must be True or False, got {d.allow_upscale!r}")
  _require(d.order in data_order.ORDERS,
           f"data.order={d.order!r} is unknown: choose one of {data_order.ORDERS}")
  _require(0 <= d.caption_dropout <= 1, f"data.caption_dropout={d.caption_dropout} must be in [0, 1]")
  _require(isinstance(d.num_workers, int) and d.num_workers >= 0,
           f"data.num_workers must be an integer >= 0 (0 = load in the main process), got {d.num_workers!r}")


def _check_encoders(config: ml_collections.ConfigDict) -> None:
  """`text` and `dino`: the frozen encoders (paths are checked when they are loaded, not here)."""
  for field in ("text", "dino"):
    e = config[field]
    _require(e.source in encoder_sources.SOURCES,
             f"{field}.source={e.source!r} is unknown: choose one of {encoder_sources.SOURCES}")
    _require(e.compute_dtype in COMPUTE_DTYPES,
             f"{field}.compute_dtype={e.compute_dtype!r} is unknown: choose one of {COMPUTE_DTYPES}")
    _require(isinstance(e.allow_download, bool), f"{field}.allow_download must be True or False")
  h = config.text.hidden_layer
  _require(isinstance(h, int) and h <= -1,
           f"text.hidden_layer={h!r} must be a negative Hugging Face hidden_states index: -1 (last_hidden_state, "
           "after the final norm) or -2 (the layer before, as Z-Image)")
  for field, stored, launcher in (("text", "caption encodings", "encode_text"),
                                  ("dino", "DINOv3 features", "encode_teacher")):
    cache = config[field].cache
    _require(isinstance(cache, bool), f"{field}.cache must be True or False, got {cache!r}")
    _require(not cache or (config.data.source == "folder" and bool(config.data.path)),
             f"{field}.cache=True reads the {stored} stored beside a prepared folder: set data.source=folder and "
             f"data.path, and build the cache with python launch/{launcher}.py (or train with {field}.cache=False)")


def _check_train(config: ml_collections.ConfigDict) -> None:
  f, t = config.flow, config.train
  _require(0 <= f.t_eps < 0.5, f"flow.t_eps={f.t_eps} must be in [0, 0.5): t is drawn from [t_eps, 1 - t_eps]")
  _require(f.p_std > 0, f"flow.p_std must be positive, got {f.p_std}")
  _require(f.time_shift > 0, f"flow.time_shift must be positive (1 = no shift), got {f.time_shift}")
  _require(f.time_shift_mode in flow.SHIFT_MODES,
           f"flow.time_shift_mode={f.time_shift_mode!r} is unknown: choose one of {tuple(flow.SHIFT_MODES)}")
  _positive_ints(t, "train", ("batch_size", "num_steps", "log_every", "checkpoint_every", "keep_checkpoints",
                              "sample_size", "max_nonfinite_steps"))
  _require(isinstance(t.sample_every, int) and t.sample_every >= 0,
           f"train.sample_every must be >= 0 (0 = sample grids only at the end), got {t.sample_every!r}")
  _require(t.sample_size % config.model.patch_size == 0,
           f"train.sample_size={t.sample_size} is not a multiple of model.patch_size={config.model.patch_size}")
  _require(isinstance(t.eval_every, int) and t.eval_every >= 0,
           f"train.eval_every must be >= 0 (0 = no evaluation), got {t.eval_every!r}")
  _require(isinstance(t.eval_num_images, int) and t.eval_num_images >= 5,
           f"train.eval_num_images must be an integer >= 5 (statistics and 3-NN manifolds need a few images; "
           f"use thousands for a stable FID), got {t.eval_num_images!r}")
  profile = tuple(t.profile_steps)
  _require(profile == () or (len(profile) == 2 and all(isinstance(s, int) for s in profile)
                             and 1 <= profile[0] <= profile[1] <= t.num_steps),
           f"train.profile_steps={profile} must be () (off) or (first, last) optimizer steps with 1 <= first <= last "
           f"<= train.num_steps={t.num_steps}, e.g. (10, 15)")
  m = config.model
  most = min(m.mrope_max_height, m.mrope_max_width) * m.patch_size
  for name, size in (("data.max_resolution", config.data.max_resolution), ("train.sample_size", t.sample_size)):
    _require(size <= most, f"{name}={size} is more than the mRoPE tables hold (model.mrope_max_height/width="
                           f"{m.mrope_max_height}/{m.mrope_max_width} patches of {m.patch_size}): use at most {most}")


def _check_evaluation(config: ml_collections.ConfigDict) -> None:
  e = config.evaluation
  _require(e.inception_resize in RESIZES,
           f"evaluation.inception_resize={e.inception_resize!r} is unknown: choose one of {RESIZES}")
  _positive_ints(e, "evaluation", ("batch_size",))


def validate(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Checks every cross-field constraint; returns the config unchanged or raises `ConfigError`."""
  _check_model(config)
  _check_train(config)
  _check_mesh(config)
  _check_sample(config)
  _check_loss(config)
  _check_optim(config)
  _check_data(config)
  _check_encoders(config)
  _check_evaluation(config)
  return config


def check_backend(config: ml_collections.ConfigDict, backend: str) -> ml_collections.ConfigDict:
  """Checks that `model.attention` can run on `backend` (the launcher passes `jax.default_backend()`).

  Kept apart from `validate` so that validation stays pure; raises `ConfigError` naming the fix.
  """
  m = config.model
  kernel = m.attention
  _require(kernel in kernels.KERNEL_NAMES,
           f"model.attention={kernel!r} is not an attention kernel: choose one of {kernels.KERNEL_NAMES}")
  if kernel != "auto":  # auto picks a kernel of the backend
    runs_on = kernels.KERNELS[kernel].backends
    _require(backend in runs_on,
             f"model.attention={kernel!r} cannot run on backend {backend!r}: it runs on {'/'.join(runs_on)} only "
             "(the Pallas kernels run on CPU only interpreted, in tests); set model.attention=auto (cudnn on GPU, "
             "splash on TPU, xla on CPU) or xla")
  if kernel == "cudnn":
    # The DINOv3 teacher runs with the same kernel, in its own compute dtype (ViT head_dim 64).
    sections = ("model", "dino") if config.loss.repa_lambda > 0 else ("model",)
    for section in sections:
      dtype = "bfloat16" if config[section].compute_dtype == "auto" else config[section].compute_dtype
      _require(dtype in kernels.CUDNN_DTYPES,
               f"model.attention='cudnn' needs bfloat16 or float16 inputs but {section}.compute_dtype={dtype!r}: "
               f"set {section}.compute_dtype=bfloat16 (or auto), or model.attention=xla")
    head_dim = m.hidden_dim // m.num_heads
    _require(kernels.cudnn_head_dim_ok(head_dim),
             f"model.attention='cudnn' needs head_dim (hidden_dim / num_heads) a multiple of 8 and <= "
             f"{kernels.CUDNN_MAX_HEAD_DIM}, got {head_dim}: use model.attention=auto or pallas_gpu")
  return config
