"""A sampling request as a value, and its plan: the host-side batches and the static spec of the compiled loop.

`SampleRequest` holds everything `Pipeline.generate` is asked (None fields take `config.sample`'s defaults);
`plan` checks it against the network, resolves the defaults and cuts it into batches of inputs (tokens, image
indices, seed, start time, guidance scale) plus one hashable `LoopSpec` (size, solver, steps, shift, guidance
spec): the only static argument of the compiled loop, so a new seed, prompt or guidance scale never recompiles.

Determinism: image k of a request (prompt-major, k = prompt * num_images_per_prompt + image) starts from
noise drawn with `fold_in(jax.random.key(seed), k)`, so an image depends on its seed, prompt and settings,
never on how the request is split into batches or over devices. Image-to-image starts at t = 1 - strength and
integrates with the step density of the text-to-image grid (`tail_steps`).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, NamedTuple, Sequence

import jax
import ml_collections
import numpy as np
from absl import logging
from PIL import Image

from pixelhdm_jax import flow
from pixelhdm_jax.sample import solvers
from pixelhdm_jax.sample.guidance import Guidance, GuidanceSpec
from pixelhdm_jax.sample.images import load_init_image

DEFAULT_STRENGTH = 0.8  # image-to-image, as the original
Tokenizer = Callable[[Sequence[str]], tuple[np.ndarray, np.ndarray]]


@dataclasses.dataclass(frozen=True)
class SampleRequest:
  """What to sample; every None takes the pipeline config's default.

  Attributes:
    prompts: the prompts, a list of strings.
    negative_prompt: replaces the empty prompt of the unconditional pass; one string or one per prompt.
    num_images_per_prompt: images drawn for each prompt.
    height, width: image size in pixels; default the init image's size, else `data.max_resolution`.
    seed: the noise of image k is `fold_in(jax.random.key(seed), k)`.
    batch_size: images per compiled call (rounded up to the mesh's batch devices); default all at once.
    init_image: image-to-image input (PIL or uint8 (H, W, 3)), resized to (height, width).
    strength: image-to-image only, in [0, 1] (default 0.8): start at t = 1 - strength.
    solver, num_steps, guidance: default from `config.sample`.
  """
  prompts: Sequence[str]
  negative_prompt: str | Sequence[str] | None = None
  num_images_per_prompt: int = 1
  height: int | None = None
  width: int | None = None
  seed: int = 0
  batch_size: int | None = None
  init_image: Image.Image | np.ndarray | None = None
  strength: float | None = None
  solver: str | None = None
  num_steps: int | None = None
  guidance: Guidance | None = None


class LoopSpec(NamedTuple):
  """The static arguments of the compiled sampling loop (one compile per distinct value and batch shape)."""
  height: int
  width: int
  solver: str
  num_steps: int  # 0: image-to-image with strength 0 returns the input
  shift: float
  guidance: GuidanceSpec | None  # None: no unconditional pass


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


def _check_counts(request: SampleRequest, num_steps: int) -> None:
  for name, value in (("num_steps", num_steps), ("num_images_per_prompt", request.num_images_per_prompt),
                      ("batch_size", 1 if request.batch_size is None else request.batch_size)):
    if not isinstance(value, (int, np.integer)) or value < 1:
      raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _warn_truncated(prompts: Sequence[str], tokenizer: Tokenizer) -> None:
  """A warning for each prompt longer than the tokenizer keeps (`text.max_length`), with its token count."""
  limit = tokenizer.max_length
  for prompt in dict.fromkeys(prompts):
    count = tokenizer.num_tokens(prompt)
    if count > limit:
      shown = prompt if len(prompt) <= 60 else prompt[:57] + "..."
      logging.warning("the prompt %r has %d tokens, more than text.max_length=%d: its last %d tokens are cut "
                      "(shorten it, or train with a larger text.max_length)", shown, count, limit, count - limit)


def plan(request: SampleRequest, config: ml_collections.ConfigDict, tokenizer: Tokenizer,
         batch_multiple: int = 1) -> tuple[list[tuple[dict[str, np.ndarray], int]], LoopSpec]:
  """Checks `request` against `config` (the network and `config.sample` defaults); returns its batches (host
  arrays, each padded to a multiple of `batch_multiple` images, with the number of images it contributes) and
  the static spec of the compiled loop."""
  prompts = _as_list(request.prompts, "prompts")
  if not prompts:
    raise ValueError("prompts is empty: pass at least one prompt")
  negatives = _negatives(request.negative_prompt, len(prompts))
  _warn_truncated([*prompts, *negatives], tokenizer)
  s = config.sample
  solver = s.solver if request.solver is None else request.solver
  num_steps = s.num_steps if request.num_steps is None else request.num_steps
  solvers.get_solver(solver)
  _check_counts(request, num_steps)
  init_image, height, width = request.init_image, request.height, request.width
  if request.strength is not None and init_image is None:
    raise ValueError("strength is for image-to-image: pass an init_image too")
  if init_image is not None:
    init_image = load_init_image(init_image, height, width, config.model.patch_size)
    height, width = init_image.shape[:2]
  height = height or config.data.max_resolution
  width = width or config.data.max_resolution
  check_size(config.model, height, width)
  shift = float(solvers.shift_for(s, height, width))
  t_start = 0.0
  if init_image is not None:
    strength = DEFAULT_STRENGTH if request.strength is None else request.strength
    num_steps = tail_steps(num_steps, strength, shift)
    t_start = 1.0 - strength
  guidance = Guidance.from_config(s) if request.guidance is None else request.guidance
  spec = LoopSpec(height, width, solver, num_steps, shift, guidance.spec)

  per_prompt = request.num_images_per_prompt
  total = len(prompts) * per_prompt
  size = -(-min(request.batch_size or total, total) // batch_multiple) * batch_multiple
  shared = {"seed": np.asarray(jax.random.key_data(jax.random.key(request.seed))), "t_start": np.float32(t_start),
            "scale": np.float32(guidance.scale)}
  if init_image is not None:
    shared["init_image"] = init_image
  batches = []
  for first in range(0, total, size):
    indices = np.minimum(np.arange(first, first + size), total - 1)  # the last batch repeats its last image
    rows = indices // per_prompt
    ids, mask = tokenizer([prompts[i] for i in rows])
    negative_ids, negative_mask = tokenizer([negatives[i] for i in rows])
    batch = {"ids": ids, "mask": mask, "negative_ids": negative_ids, "negative_mask": negative_mask, **shared,
             "indices": indices.astype(np.int32)}
    batches.append((batch, min(size, total - first)))
  return batches, spec
