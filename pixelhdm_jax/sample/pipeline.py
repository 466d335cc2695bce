"""Text-to-image and image-to-image sampling: a `SampleRequest` -> uint8 images, one compiled loop per batch shape.

`Pipeline.generate` plans the request on the host (`request.plan`: tokens, batches, the static `LoopSpec`), then
runs ONE jitted function per batch: the text encoder on the prompts and the negative prompts, per-image noise,
every solver step with classifier-free guidance (both passes stacked in one network call), and the rounding to
uint8. Nothing inside syncs with the host; images are read back only after every batch has been dispatched.
"""

from __future__ import annotations

import contextlib
import functools
import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from tqdm import tqdm

from pixelhdm_jax import flow, parallel
from pixelhdm_jax.config import validate
from pixelhdm_jax.data.images import images_to_model_range, to_uint8
from pixelhdm_jax.encoders.text import TextEncoder, build_text_encoder
from pixelhdm_jax.encoders.transformer import place_frozen
from pixelhdm_jax.models.pixelhdm import PixelHDM, abstract_params
from pixelhdm_jax.sample import solvers
from pixelhdm_jax.sample.guidance import guided_velocity_fn
from pixelhdm_jax.sample.request import LoopSpec, SampleRequest, plan
from pixelhdm_jax.weights.inference import load_for_inference

_BATCH_AXES = ("activation_batch",)


def _batch_constraint(x: jax.Array) -> jax.Array:
  """Splits axis 0 over the mesh's batch axes (a no-op without logical rules)."""
  return nn.with_logical_constraint(x, _BATCH_AXES + (None,) * (x.ndim - 1))


def sample_batch(params: Any, text_params: Any, batch: dict[str, np.ndarray], *, model: PixelHDM,
                 text_encoder: TextEncoder, spec: LoopSpec) -> jax.Array:
  """One batch of uint8 images (B, H, W, 3); pure, and jitted by `Pipeline` with `spec` static.

  `batch` holds token ids and masks of the prompts and of the negative prompts (B, T), the images' global
  `indices` (B,), the `seed` key data, `t_start`, the guidance `scale` and, for image-to-image, the uint8
  `init_image` (H, W, 3). `spec.num_steps` 0 returns the init image.
  """
  tokens = {name: _batch_constraint(batch[name]) for name in ("ids", "mask", "negative_ids", "negative_mask")}
  cond = text_encoder.encode(text_params, tokens["ids"], tokens["mask"])
  uncond = text_encoder.encode(text_params, tokens["negative_ids"], tokens["negative_mask"])
  key = jax.random.wrap_key_data(batch["seed"])
  shape = (spec.height, spec.width, 3)
  noise = jax.vmap(lambda i: jax.random.normal(jax.random.fold_in(key, i), shape, jnp.float32))(
      _batch_constraint(batch["indices"]))
  z = _batch_constraint(noise)
  if "init_image" in batch:
    init = jnp.broadcast_to(images_to_model_range(batch["init_image"]), z.shape)
    z = flow.interpolate(init, z, batch["t_start"])
  if spec.num_steps == 0:
    x = init
  else:
    def model_fn(z, t, text):
      return model.apply({"params": params}, z, t, text.hidden, text.mask, text.pooled).velocity

    velocity_fn = guided_velocity_fn(model_fn, cond, uncond, spec.guidance, batch["scale"])
    x = solvers.sample(velocity_fn, z, solver=spec.solver, num_steps=spec.num_steps, t_start=batch["t_start"],
                       shift=spec.shift)
  # Replicated, so every process can read the (small) uint8 result.
  return nn.with_logical_constraint(to_uint8(x), (None,) * 4)


class Pipeline:
  """Text-to-image and image-to-image sampling of one PixelHDM network and its text encoder.

  `params` and `text_params` are placed already: on one device without `mesh`, or on `mesh` (replicated or
  sharded by `config.mesh.logical_axis_rules`; `parallel.place_params`, `encoders.transformer.place_frozen`).
  With a mesh, batches are split over its batch axes (data, fsdp) and `generate` runs under
  `jax.set_mesh(mesh)` and the logical rules. Compiled loops are cached per (batch shape, `LoopSpec`).
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
        static_argnames=("spec",))

  @classmethod
  def from_checkpoint(cls, path: str | os.PathLike, *, use_ema: bool = True, step: int | None = None,
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

  def generate(self, request: SampleRequest, *, params: Any = None, text_params: Any = None,
               progress: bool = False) -> np.ndarray:
    """uint8 images (len(prompts) * num_images_per_prompt, H, W, 3) of `request`, prompt-major.

    `params`, `text_params`: other weights of the same networks (e.g. the EMA during training); `progress`
    shows a progress bar over batches.
    """
    batches, spec = plan(request, self.config, self.text_encoder.tokenizer, self._batch_multiple())
    weights = (self.params if params is None else params, self.text_params if text_params is None else text_params)
    outputs = []
    with self._context():
      for batch, count in batches:
        outputs.append((self._sample_batch(*weights, batch, spec=spec), count))
      return np.concatenate([np.asarray(images)[:count]
                             for images, count in tqdm(outputs, desc="sampling", unit="batch", disable=not progress)])

  def lower(self, request: SampleRequest) -> tuple[jax.stages.Lowered, tuple]:
    """The sampling loop that `generate(request)` runs on its first batch, lowered, and its arguments:
    `lowered.compile()(*args)` runs it (benchmarks time the compile and read `memory_analysis()`)."""
    batches, spec = plan(request, self.config, self.text_encoder.tokenizer, self._batch_multiple())
    args = (self.params, self.text_params, batches[0][0])
    with self._context():
      return self._sample_batch.lower(*args, spec=spec), args
