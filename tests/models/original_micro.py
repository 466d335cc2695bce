"""The original's micro fixture as our config, model, params and inputs (shared by model and loss tests)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from configs import base
from pixelhdm_jax.models.pixelhdm import PixelHDM
from pixelhdm_jax.weights.original import import_state_dict


def micro_config(spec):
  """Our `config.model` for the fixture's original config (float32, no remat)."""
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
  return config


def micro_inputs(arrays):
  return (jnp.asarray(arrays["in/x_t"]), jnp.asarray(arrays["in/t"]), jnp.asarray(arrays["in/text_embed"]),
          jnp.asarray(arrays["in/text_mask"]), jnp.asarray(arrays["in/pooled_text_embed"]))


def micro_model_and_params(spec, arrays, *, scan_layers: bool = True):
  """The network and the original's weights (from `param/<name>`) loaded through our importer."""
  config = micro_config(spec)
  model = PixelHDM.from_config(config.model, scan_layers=scan_layers)
  abstract = jax.eval_shape(model.init, jax.random.key(0), *micro_inputs(arrays))["params"]
  state_dict = {name[len("param/"):]: arrays[name] for name in arrays if name.startswith("param/")}
  params, _ = import_state_dict(state_dict, abstract, scan_layers=scan_layers)
  return model, params
