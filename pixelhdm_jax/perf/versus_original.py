"""The same network step in the original PyTorch PixelHDM and here, timed side by side (`launch/bench_vs_original.py`).

Both sides run the network alone on random inputs of one size: the forward, and a train step of forward, velocity
MSE, backward and AdamW, in float32, with the preset's recomputation (the original's gradient checkpointing when
`model.remat_policy` is not `none`). Text is `text_len` tokens at the network's own width (the original's training
path has no text projection). The two codes run alternately, so a busy machine slows both alike; each number is
the median of its runs. The original is imported from a checkout of its repository (its `src` package); nothing
of it is copied here.
"""

from __future__ import annotations

import functools
import os
import statistics
import sys
import time
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from pixelhdm_jax.errors import ConfigError
from pixelhdm_jax.models.pixelhdm import PixelHDM
from pixelhdm_jax.weights.original_config import original_config

LEARNING_RATE = 1e-4


def comparable(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The preset's network in float32 with text at its own width, as both codes can run it."""
  config = ml_collections.ConfigDict(config.to_dict())
  config.model.update(text_dim=config.model.hidden_dim, compute_dtype="float32", attention="xla")
  return config


def ours(config: ml_collections.ConfigDict, inputs: dict[str, np.ndarray]) -> dict[str, Callable[[], Any]]:
  """{"forward", "train_step"}: calls of the jitted network that block until done (the step donates its state)."""
  model = PixelHDM.from_config(config.model)
  args = [jnp.asarray(inputs[k]) for k in ("x_t", "t", "text", "text_mask", "pooled")]
  target = jnp.asarray(inputs["target"])
  params = nn.unbox(jax.jit(model.init)(jax.random.key(0), *args)["params"])
  optimizer = optax.adamw(LEARNING_RATE)
  state = {"params": params, "opt": jax.jit(optimizer.init)(params)}

  def loss(p):
    return jnp.mean(jnp.square(model.apply({"params": p}, *args).velocity - target))

  @jax.jit
  def forward(p):
    return model.apply({"params": p}, *args).velocity

  @functools.partial(jax.jit, donate_argnums=0)
  def step(s):
    value, grads = jax.value_and_grad(loss)(s["params"])
    updates, opt = optimizer.update(grads, s["opt"], s["params"])
    return {"params": optax.apply_updates(s["params"], updates), "opt": opt}, value

  def train_step():
    new, value = step(state)
    state.update(new)
    value.block_until_ready()

  return {"forward": lambda: forward(state["params"]).block_until_ready(), "train_step": train_step}


def original(checkout: str, config: ml_collections.ConfigDict, inputs: dict[str, np.ndarray]
             ) -> dict[str, Callable[[], Any]]:
  """{"forward", "train_step"} of the original's `PixelHDM` built from the same preset (`original_config`)."""
  try:
    import torch
  except ImportError as error:
    raise ConfigError("timing the original needs torch: pip install -e '.[torch]'") from error
  if not os.path.isdir(os.path.join(checkout, "src", "models", "pixelhdm")):
    raise ConfigError(f"{checkout} is not a checkout of the original PixelHDM (no src/models/pixelhdm): pass "
                      "--original=PATH of its repository")
  sys.path.insert(0, checkout)
  from src.config.pixelhdm_config import PixelHDMConfig  # the original's package, found at run time
  from src.models.pixelhdm import PixelHDM as OriginalPixelHDM

  fields = original_config(config)
  # Its validator wants t_eps > 0 (the network never reads it); flash attention needs a GPU.
  fields.update(use_flash_attention=False, time_eps=max(fields.get("time_eps", 0.0), 0.05),
                use_gradient_checkpointing=config.model.remat_policy != "none")
  torch.manual_seed(0)
  model = OriginalPixelHDM(PixelHDMConfig.from_dict(fields)).float()
  optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE)
  args = [torch.from_numpy(inputs[k]) for k in ("x_t", "t", "text", "text_mask", "pooled")]
  target = torch.from_numpy(inputs["target"])

  def forward():
    model.eval()
    with torch.no_grad():
      model(*args)

  def train_step():
    model.train()
    loss = torch.mean(torch.square(model(*args) - target))
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()

  return {"forward": forward, "train_step": train_step}


def random_inputs(config: ml_collections.ConfigDict, batch: int, height: int, width: int, text_len: int
                  ) -> dict[str, np.ndarray]:
  """Float32 network inputs and a velocity target, the same arrays for both codes."""
  rng = np.random.default_rng(0)
  width_text = config.model.hidden_dim
  return {"x_t": rng.standard_normal((batch, height, width, 3), np.float32),
          "t": rng.uniform(size=batch).astype(np.float32),
          "text": rng.standard_normal((batch, text_len, width_text), np.float32),
          "text_mask": np.ones((batch, text_len), bool),
          "pooled": rng.standard_normal((batch, width_text), np.float32),
          "target": rng.standard_normal((batch, height, width, 3), np.float32)}


def alternate(calls: dict[str, dict[str, Callable[[], Any]]], repeats: int, warmup: int = 1
              ) -> dict[str, dict[str, float]]:
  """Median seconds of each code's calls, run in turn (ours, original, ours, ...) after `warmup` rounds."""
  times: dict[str, dict[str, list[float]]] = {code: {name: [] for name in fns} for code, fns in calls.items()}
  for round_ in range(warmup + repeats):
    for code, fns in calls.items():
      for name, fn in fns.items():
        started = time.perf_counter()
        fn()
        if round_ >= warmup:
          times[code][name].append(time.perf_counter() - started)
  return {code: {name: statistics.median(values) for name, values in by_name.items()}
          for code, by_name in times.items()}

