"""Helpers that test modules import (fixtures stay in the conftest files, which nothing imports).

- `require_torch`: torch, or a skip naming why; the comparisons with PyTorch need it, nothing else does.
- `tiny_run_config`: a tiny training config that compiles once (one 32x32 bucket, batch 8 over 8 devices).
- `tiny_inference_checkpoint`: an inference checkpoint of the tiny preset's freshly initialised network.
- `damage_arrays`: truncates every array data file of a checkpoint step (a save cut short on disk).
- `global_norm`: the L2 norm over every leaf in Python floats, the reference for `optax.tree.norm`.
- `hf_qwen3_config`, `hf_dinov3_config`, `randomize`: tiny random Hugging Face models (torch).
- `original_config`, `original_inputs`, `original_model_and_params`: a fixture of the original PyTorch
  PixelHDM (`tests/fixtures/original_tiny`, or the larger `original_micro` beside the checkout) as our config,
  inputs, network and imported weights.
"""

from __future__ import annotations

import math
import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from configs import base
from pixelhdm_jax.models.pixelhdm import PixelHDM
from pixelhdm_jax.weights.inference import save_for_inference
from pixelhdm_jax.weights.original import import_state_dict

TORCH_REASON = "compares with PyTorch, which is not installed (pip install -e '.[test]' brings a CPU build)"


def require_torch():
  """The torch module, or a skip with the reason."""
  return pytest.importorskip("torch", reason=TORCH_REASON)


def tiny_run_config(**train_overrides):
  config = base.get_config("tiny")
  config.data.max_resolution = 32  # a single 32x32 bucket: one compiled program
  config.optim.schedule = "constant"  # a few steps, some resumed to more: an lr that does not depend on num_steps
  config.loss.freq_lambda = 1.0  # the whole loss of the other presets (tiny trains without the frequency term)
  config.train.update({"log_every": 1, "checkpoint_every": 3, "sample_prompts": (), "eval_every": 0,
                       **train_overrides})
  return config


def tiny_inference_checkpoint(directory: pathlib.Path, step: int) -> pathlib.Path:
  """`save_for_inference` of the tiny preset's network at its seed-0 initialisation; returns the checkpoint."""
  config = base.get_config("tiny")
  model = PixelHDM.from_config(config.model)
  size = model.patch_size
  params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, size, size, 3)), jnp.zeros((1,)),
                               jnp.zeros((1, 1, model.text_dim)), jnp.ones((1, 1), bool),
                               jnp.zeros((1, model.text_dim)))["params"]
  return save_for_inference(directory, config, nn.unbox(params), step=step)


def damage_arrays(step_directory: pathlib.Path) -> None:
  """Cuts every array data file (Orbax's `d/` chunks) under checkpoint `step_directory` to half its length."""
  files = [path for path in step_directory.rglob("*") if path.is_file() and path.parent.name == "d"]
  assert files, f"no array data files under {step_directory}"
  for path in files:
    path.write_bytes(path.read_bytes()[:path.stat().st_size // 2])


def global_norm(tree) -> float:
  """L2 norm over every leaf, in Python floats."""
  return math.sqrt(sum(float(jnp.sum(jnp.square(x))) for x in jax.tree.leaves(tree)))


def randomize(model, seed: int):
  """Seeded weights far from the HF init (std 0.02, unit norms), so every tensor matters in a parity test."""
  torch = require_torch()
  generator = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, param in model.named_parameters():
      noise = torch.randn(param.shape, generator=generator)
      is_scale = name.endswith(("norm.weight", "norm1.weight", "norm2.weight", "lambda1"))
      param.copy_(1.0 + 0.2 * noise if is_scale else 0.15 * noise)
  return model.eval()


def hf_qwen3_config(**overrides):
  import transformers
  fields = dict(vocab_size=257, hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
                num_key_value_heads=2, head_dim=16, rms_norm_eps=1e-6,
                rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0})
  fields.update(overrides)
  return transformers.Qwen3Config(**fields)


def hf_dinov3_config(**overrides):
  import transformers
  fields = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                num_register_tokens=4, patch_size=16, image_size=32)
  fields.update(overrides)
  return transformers.DINOv3ViTConfig(**fields)


def original_config(spec):
  """Our config (the tiny preset with the fixture's network: float32, no remat, xla attention; the original's loss)."""
  original = spec["config"]
  config = base.get_config("tiny")
  config.model.update(
      hidden_dim=original["hidden_dim"], pixel_dim=original["pixel_dim"], patch_size=original["patch_size"],
      patch_layers=original["patch_layers"], pixel_layers=original["pixel_layers"],
      num_heads=original["num_heads"], num_kv_heads=original["num_kv_heads"], mlp_ratio=original["mlp_ratio"],
      bottleneck_dim=original["bottleneck_dim"], time_embed_dim=original["time_embed_dim"],
      mrope_split=(original["mrope_text_dim"], original["mrope_img_h_dim"], original["mrope_img_w_dim"]),
      mrope_theta=original["mrope_theta"], repa_align_layer=original["repa_align_layer"],
      text_dim=original["text_hidden_size"], compute_dtype="float32", remat_policy="none", attention="xla")
  config.loss.freq_lambda = 1.0  # the original's loss (the tiny preset trains without the frequency term)
  return config


def original_inputs(arrays):
  return (jnp.asarray(arrays["in/x_t"]), jnp.asarray(arrays["in/t"]), jnp.asarray(arrays["in/text_embed"]),
          jnp.asarray(arrays["in/text_mask"]), jnp.asarray(arrays["in/pooled_text_embed"]))


def original_model_and_params(spec, arrays, *, scan_layers: bool = True):
  """The network and the original's weights (from `param/<name>`) loaded through our importer."""
  config = original_config(spec)
  model = PixelHDM.from_config(config.model, scan_layers=scan_layers)
  abstract = jax.eval_shape(model.init, jax.random.key(0), *original_inputs(arrays))["params"]
  state_dict = {name[len("param/"):]: arrays[name] for name in arrays if name.startswith("param/")}
  params, _ = import_state_dict(state_dict, abstract, scan_layers=scan_layers)
  return model, params
