"""Text-to-image and image-to-image sampling: prompts -> uint8 images, one compiled loop per batch shape.

`Pipeline.generate` tokenises on the host, then runs ONE jitted function per batch: the text encoder on the
prompts and the negative prompts, per-image noise, every solver step with classifier-free guidance (both
passes stacked in one network call), and the rounding to uint8. Nothing inside syncs with the host; images
are read back only after every batch has been dispatched.

Determinism: image k of a request (prompt-major, k = prompt * num_images_per_prompt + image) starts from
noise drawn with `fold_in(jax.random.key(seed), k)`, so an image depends on its seed, prompt and settings,
never on how the request is split into batches or over devices.

Image-to-image starts at t = 1 - strength from z = t x + (1 - t) eps and integrates to t = 1 with the step
density of the text-to-image grid (`tail_steps`): strength 0 returns the input, strength 1 is
text-to-image from the same noise.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import pathlib
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from PIL import Image
from tqdm import tqdm

from pixelhdm_jax import flow, parallel
from pixelhdm_jax.config import validate
from pixelhdm_jax.data.images import images_to_model_range, to_uint8
from pixelhdm_jax.encoders.text import TextEncoder, build_text_encoder
from pixelhdm_jax.encoders.transformer import place_frozen
from pixelhdm_jax.models.pixelhdm import PixelHDM, abstract_params
from pixelhdm_jax.sample import solvers
from pixelhdm_jax.sample.guidance import Guidance, guided_velocity_fn
from pixelhdm_jax.sample.images import load_init_image
from pixelhdm_jax.weights.inference import load_for_inference

DEFAULT_STRENGTH = 0.8  # image-to-image, as the original
_BATCH_AXES = ("activation_batch",)


def check_size(model_config: ml_collections.ConfigDict, height: int, width: int) -> None:
  """Raises ValueError unless the network can take (height, width): whole patches within the mRoPE tables."""
  patch = model_config.patch_size
  for name, size, limit in (("height", height, model_config.mrope_max_height),
                            ("width", width, model_config.mrope_max_width)):
    if not isinstance(size, (int, np.integer)) or size <= 0 or size % patch:
      raise ValueError(f"{name}={size} is not a positive multiple of the patch size {patch}: use "
                       f"{max(patch, int(size) // patch * patch)} or {(int(size) // patch + 1) * patch}")
    if size // patch > limit:
      raise ValueError(f"{name}={size} is {size // patch} patches but the mRoPE table of the model holds "
                       f"{limit} per side: use at most {limit * patch} pixels")


def tail_steps(num_steps: int, strength: float, shift: float) -> int:
  """Solver steps of an image-to-image run: the text-to-image grid's density over [1 - strength, 1].

  0 for strength 0 (nothing to denoise), `num_steps` for strength 1, otherwise at least 1.
  """
  if not 0.0 <= strength <= 1.0:
    raise ValueError(f"strength={strength} must be in [0, 1] (0 returns the input, 1 ignores it)")
  if strength == 0.0:
    return 0
  unshifted_start = float(flow.time_shift(1.0 - strength, 1.0 / shift))
  return max(1, round(num_steps * (1.0 - unshifted_start)))


def _batch_constraint(x: jax.Array) -> jax.Array:
  """Splits axis 0 over the mesh's batch axes (a no-op without logical rules)."""
  return nn.with_logical_constraint(x, _BATCH_AXES + (None,) * (x.ndim - 1))


def sample_batch(params: Any, text_params: Any, batch: dict[str, np.ndarray], *, model: PixelHDM,
                 text_encoder: TextEncoder, height: int, width: int, solver: str, num_steps: int, shift: float,
                 guidance: Guidance) -> jax.Array:
  """One batch of uint8 images (B, H, W, 3); pure, and jitted by `Pipeline`.

  `batch` holds token ids and masks of the prompts and of the negative prompts (B, T), the images' global
  `indices` (B,), the `seed` key data, `t_start`, the guidance `scale` (used when `guidance.scale` is None)
  and, for image-to-image, the uint8 `init_image` (H, W, 3). `num_steps` 0 returns the init image.
  """
  tokens = {name: _batch_constraint(batch[name]) for name in ("ids", "mask", "negative_ids", "negative_mask")}
  cond = text_encoder.encode(text_params, tokens["ids"], tokens["mask"])
  uncond = text_encoder.encode(text_params, tokens["negative_ids"], tokens["negative_mask"])
  key = jax.random.wrap_key_data(batch["seed"])
  noise = jax.vmap(lambda i: jax.random.normal(jax.random.fold_in(key, i), (height, width, 3), jnp.float32))(
      _batch_constraint(batch["indices"]))
  z = _batch_constraint(noise)
  if "init_image" in batch:
    init = jnp.broadcast_to(images_to_model_range(batch["init_image"]), z.shape)
    z = flow.interpolate(init, z, batch["t_start"])
  if num_steps == 0:
    x = init
  else:
    if guidance.scale is None:
      guidance = dataclasses.replace(guidance, scale=batch["scale"])

    def model_fn(z, t, text):
      return model.apply({"params": params}, z, t, text.hidden, text.mask, text.pooled).velocity

    velocity_fn = guided_velocity_fn(model_fn, cond, uncond, guidance)
    x = solvers.sample(velocity_fn, z, solver=solver, num_steps=num_steps, t_start=batch["t_start"], shift=shift)
  # Replicated, so every process can read the (small) uint8 result.
  return nn.with_logical_constraint(to_uint8(x), (None,) * 4)


def _as_list(prompts: Sequence[str], name: str) -> list[str]:
  if isinstance(prompts, str) or not all(isinstance(p, str) for p in prompts):
    raise ValueError(f"{name} must be a list of strings, got {prompts!r}")
  return list(prompts)


def _negatives(negative_prompt: str | Sequence[str] | None, count: int) -> list[str]:
  """One negative prompt per prompt; None is the empty prompt (the unconditional model)."""
  if negative_prompt is None or isinstance(negative_prompt, str):
    return [negative_prompt or ""] * count
  negatives = _as_list(negative_prompt, "negative_prompt")
  if len(negatives) != count:
    raise ValueError(f"got {len(negatives)} negative prompts for {count} prompts: pass one string for all "
                     "prompts or one per prompt")
  return negatives


class Pipeline:
  """Text-to-image and image-to-image sampling of one PixelHDM network and its text encoder.

  `params` and `text_params` are placed already: on one device without `mesh`, or on `mesh` (replicated or
  sharded by `config.mesh.logical_axis_rules`; `parallel.place_params`, `encoders.transformer.place_frozen`).
  With a mesh, batches are split over its batch axes (data, fsdp) and `generate` runs under
  `jax.set_mesh(mesh)` and the logical rules. Compiled loops are cached per (batch shape, solver, steps,
  guidance settings).
  """

  def __init__(self, config: ml_collections.ConfigDict, params: Any, text_encoder: TextEncoder, text_params: Any, *,
               mesh: jax.sharding.Mesh | None = None, step: int | None = None):
    self.config = config
    self.step = step  # the checkpoint's training step, when loaded from one
    self.params = params
    self.text_encoder = text_encoder
    self.text_params = text_params
    self.mesh = mesh
    self.rules = parallel.logical_rules(config.mesh)
    self.model = PixelHDM.from_config(config.model)
    self._sample_batch = jax.jit(
        functools.partial(sample_batch, model=self.model, text_encoder=text_encoder),
        static_argnames=("height", "width", "solver", "num_steps", "shift", "guidance"))

  @classmethod
  def from_checkpoint(cls, path: str | pathlib.Path, *, use_ema: bool = True, step: int | None = None,
                      mesh: jax.sharding.Mesh | None = None, overrides: dict[str, Any] | None = None) -> Pipeline:
    """From a training workdir or an exported checkpoint (EMA weights unless `use_ema=False`).

    `overrides` sets config fields by dotted name (e.g. `{"sample.num_steps": 20, "text.path": DIR}`);
    the result is validated. With `mesh`, params are sharded by the config's logical rules.
    """
    config, params, step = load_for_inference(path, use_ema=use_ema, step=step)
    config.update_from_flattened_dict({k: v for k, v in (overrides or {}).items() if v is not None})
    validate(config)
    text_encoder, host_params = build_text_encoder(config)
    rules = parallel.logical_rules(config.mesh)
    if mesh is not None:
      params, _ = parallel.place_params(params, abstract_params(PixelHDM.from_config(config.model)), mesh, rules)
    # On the devices once, in the compute dtype; the host copy is dropped here.
    text_params = place_frozen(text_encoder, host_params, mesh, rules)
    return cls(config, params, text_encoder, text_params, mesh=mesh, step=step)

  def _context(self):
    stack = contextlib.ExitStack()
    if self.mesh is not None:
      stack.enter_context(jax.set_mesh(self.mesh))
      stack.enter_context(nn.logical_axis_rules(self.rules))
    return stack

  def _batch_multiple(self) -> int:
    """Devices that one batch is split over."""
    return 1 if self.mesh is None else parallel.batch_devices(self.mesh, self.rules)

  def _tokens(self, prompts: list[str], negatives: list[str], prompt_indices: np.ndarray) -> dict[str, np.ndarray]:
    """Token ids and masks (B, T) of the prompts and negative prompts of one batch."""
    tokenizer = self.text_encoder.tokenizer
    ids, mask = tokenizer([prompts[i] for i in prompt_indices])
    negative_ids, negative_mask = tokenizer([negatives[i] for i in prompt_indices])
    return {"ids": ids, "mask": mask, "negative_ids": negative_ids, "negative_mask": negative_mask}

  def generate(self, prompts: Sequence[str], *, negative_prompt: str | Sequence[str] | None = None,
               num_images_per_prompt: int = 1, height: int | None = None, width: int | None = None,
               seed: int = 0, batch_size: int | None = None, init_image: Image.Image | np.ndarray | None = None,
               strength: float | None = None, solver: str | None = None, num_steps: int | None = None,
               guidance: Guidance | None = None, params: Any = None, text_params: Any = None,
               progress: bool = False) -> np.ndarray:
    """uint8 images (len(prompts) * num_images_per_prompt, H, W, 3), prompt-major.

    Args:
      prompts: the prompts, a list of strings.
      negative_prompt: replaces the empty prompt of the unconditional pass; one string or one per prompt.
      num_images_per_prompt: images drawn for each prompt.
      height, width: image size in pixels; default the init image's size, else `data.max_resolution`.
      seed: the noise of image k is `fold_in(jax.random.key(seed), k)`.
      batch_size: images per compiled call (rounded up to the mesh's batch devices); default all at once.
      init_image: image-to-image input (PIL or uint8 (H, W, 3)), resized to (height, width).
      strength: image-to-image only, in [0, 1] (default 0.8): start at t = 1 - strength.
      solver, num_steps, guidance: default from `config.sample`.
      params, text_params: other weights of the same networks (e.g. the EMA during training).
      progress: show a progress bar over batches.
    """
    batches, static = self._plan(prompts, negative_prompt=negative_prompt,
                                 num_images_per_prompt=num_images_per_prompt, height=height, width=width, seed=seed,
                                 batch_size=batch_size, init_image=init_image, strength=strength, solver=solver,
                                 num_steps=num_steps, guidance=guidance)
    weights = (self.params if params is None else params, self.text_params if text_params is None else text_params)
    outputs = []
    with self._context():
      for batch, count in batches:
        outputs.append((self._sample_batch(*weights, batch, **static), count))
      return np.concatenate([np.asarray(images)[:count]
                             for images, count in tqdm(outputs, desc="sampling", unit="batch", disable=not progress)])

  def lower(self, prompts: Sequence[str], **options) -> tuple[jax.stages.Lowered, tuple]:
    """The sampling loop that `generate(prompts, **options)` runs on its first batch, lowered, and its
    arguments: `lowered.compile()(*args)` runs it (benchmarks time the compile and read `memory_analysis()`)."""
    params, text_params = options.pop("params", None), options.pop("text_params", None)
    batches, static = self._plan(prompts, **options)
    args = (self.params if params is None else params, self.text_params if text_params is None else text_params,
            batches[0][0])
    with self._context():
      return self._sample_batch.lower(*args, **static), args

  def _plan(self, prompts: Sequence[str], *, negative_prompt: str | Sequence[str] | None = None,
            num_images_per_prompt: int = 1, height: int | None = None, width: int | None = None, seed: int = 0,
            batch_size: int | None = None, init_image: Image.Image | np.ndarray | None = None,
            strength: float | None = None, solver: str | None = None, num_steps: int | None = None,
            guidance: Guidance | None = None) -> tuple[list[tuple[dict[str, np.ndarray], int]], dict[str, Any]]:
    """Checks a request (arguments as `generate`); returns its batches, each with the number of images it
    contributes, and the static arguments of the compiled loop."""
    prompts = _as_list(prompts, "prompts")
    if not prompts:
      raise ValueError("prompts is empty: pass at least one prompt")
    negatives = _negatives(negative_prompt, len(prompts))
    s = self.config.sample
    solver = s.solver if solver is None else solver
    num_steps = s.num_steps if num_steps is None else num_steps
    solvers.get_solver(solver)
    for name, value in (("num_steps", num_steps), ("num_images_per_prompt", num_images_per_prompt),
                        ("batch_size", 1 if batch_size is None else batch_size)):
      if not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if strength is not None and init_image is None:
      raise ValueError("strength is for image-to-image: pass an init_image too")
    if init_image is not None:
      init_image = load_init_image(init_image, height, width, self.config.model.patch_size)
      height, width = init_image.shape[:2]
    height = height or self.config.data.max_resolution
    width = width or self.config.data.max_resolution
    check_size(self.config.model, height, width)
    shift = float(solvers.shift_for(s, height, width))
    t_start = 0.0
    if init_image is not None:
      strength = DEFAULT_STRENGTH if strength is None else strength
      num_steps = tail_steps(num_steps, strength, shift)
      t_start = 1.0 - strength
    guidance = Guidance.from_config(s) if guidance is None else guidance
    scale = np.float32(1.0 if guidance.is_off else guidance.scale)
    static_guidance = guidance if guidance.is_off else dataclasses.replace(guidance, scale=None)

    total = len(prompts) * num_images_per_prompt
    multiple = self._batch_multiple()
    size = -(-min(batch_size or total, total) // multiple) * multiple
    shared = {"seed": np.asarray(jax.random.key_data(jax.random.key(seed))), "t_start": np.float32(t_start),
              "scale": scale}
    if init_image is not None:
      shared["init_image"] = init_image
    batches = []
    for first in range(0, total, size):
      indices = np.minimum(np.arange(first, first + size), total - 1)  # the last batch repeats its last image
      batch = {**self._tokens(prompts, negatives, indices // num_images_per_prompt), **shared,
               "indices": indices.astype(np.int32)}
      batches.append((batch, min(size, total - first)))
    static = {"height": height, "width": width, "solver": solver, "num_steps": num_steps, "shift": shift,
              "guidance": static_guidance}
    return batches, static
