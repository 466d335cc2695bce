"""Encodes a prepared folder's captions with the frozen Qwen3 into its text cache (`data/text_cache.py`).

`cache_settings(config, dataset)` names the cache a run reads: the weights fingerprint of `config.text`
(`fingerprint.py`), `text.hidden_layer`, `text.max_length`, the compute dtype and the dataset's fingerprint.
`encode_captions(config)` fills it (`launch/encode_text.py`): every caption of `data.split` plus the empty prompt,
in batches split over all devices of this host (the last one padded), committed batch by batch so that an
interrupted job resumes.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import ml_collections
import numpy as np
import tqdm
from etils import epath

from pixelhdm_jax import parallel
from pixelhdm_jax.data import feature_cache, text_cache
from pixelhdm_jax.data.sources import FolderSource
from pixelhdm_jax.encoders.fingerprint import checkpoint_fingerprint, random_fingerprint
from pixelhdm_jax.encoders.hf_checkpoint import resolve_checkpoint
from pixelhdm_jax.encoders.text import RANDOM_QWEN3_SEED, build_text_encoder
from pixelhdm_jax.encoders.tokenizers import QWEN3_FILES
from pixelhdm_jax.encoders.transformer import RANDOM_SOURCES, place_frozen
from pixelhdm_jax.errors import ConfigError
from pixelhdm_jax.models.layers import compute_dtype

_TOKENIZED = 4096  # captions tokenised at a time to count their tokens


def weights_fingerprint(config: ml_collections.ConfigDict) -> str:
  """The fingerprint (`fingerprint.py`) of `config.text`'s encoder and tokenizer, without building the encoder."""
  t = config.text
  if t.source in RANDOM_SOURCES:
    encoder, _ = build_text_encoder(config, with_params=False)
    return random_fingerprint({"source": t.source, "seed": RANDOM_QWEN3_SEED, "arch": encoder.module.arch.__dict__})
  return checkpoint_fingerprint(resolve_checkpoint(t, "text", QWEN3_FILES))


def cache_settings(config: ml_collections.ConfigDict, source: FolderSource) -> dict:
  """The settings that name the text cache of `config` over the prepared folder `source`."""
  t = config.text
  return {"encoder": weights_fingerprint(config), "hidden_layer": t.hidden_layer, "max_length": t.max_length,
          "dtype": compute_dtype(t.compute_dtype).name, "dataset": source.fingerprint()}


def _encode_split(write: feature_cache.SplitWriter, captions: list[str], encode, tokenizer, batch_size: int,
                  desc: str, progress: bool) -> None:
  with tqdm.tqdm(total=len(captions), initial=write.done, desc=desc, unit="caption", disable=not progress) as bar:
    while write.done < len(captions):
      chunk = captions[write.done:write.done + batch_size]
      ids, mask = tokenizer(chunk + [""] * (batch_size - len(chunk)))  # the last batch padded with empty prompts
      hidden, valid, pooled = jax.device_get(encode(ids, mask))
      indices = range(write.done, write.done + len(chunk))  # right padding: the valid tokens come first
      write.write(indices, [hidden[i][valid[i]] for i in range(len(chunk))], pooled[:len(chunk)])
      write.commit()
      bar.update(len(chunk))


def encode_captions(config: ml_collections.ConfigDict, *, batch_size: int = 64, progress: bool = True) -> epath.Path:
  """Fills (or finishes) the text cache of `config` for the prepared folder `data.path`, split `data.split`;
  returns its folder. `batch_size` captions per device and step."""
  d = config.data
  if d.source != "folder" or not d.path:
    raise ConfigError("the text cache is stored beside a prepared folder: set --config.data.path to the --output "
                      "of launch/prepare_data.py")
  if jax.process_count() > 1:
    raise ConfigError("launch/encode_text.py runs on one host (over all its devices): start it as one process")
  source = FolderSource(d.path, d.split, d.jpeg_draft)
  settings = cache_settings(config, source)
  directory = feature_cache.cache_dir(source.path, text_cache.KIND, settings)
  encoder, host_params = build_text_encoder(config)
  dim, dtype = encoder.module.arch.hidden_size, compute_dtype(config.text.compute_dtype)
  feature_cache.write_meta(directory, settings, dim)
  mesh, rules = parallel.data_parallel_mesh(), parallel.logical_rules(config.mesh)
  global_size = batch_size * jax.device_count()
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    params = place_frozen(encoder, host_params, mesh, rules)
    del host_params
    run = jax.jit(encoder.encode)
    encode = lambda ids, mask: run(params, *parallel.global_batch((ids, mask), mesh, rules))
    lengths = lambda captions: np.concatenate([encoder.tokenizer(captions[i:i + _TOKENIZED])[1].sum(1)
                                               for i in range(0, len(captions), _TOKENIZED)])
    for name, captions in ((text_cache.EMPTY, [""]), (d.split, None)):
      if captions is None:
        captions = [source.caption(i) for i in tqdm.trange(len(source), desc="reading captions", disable=not progress)]
      writer = feature_cache.SplitWriter(directory, name, lengths(captions), dim, dtype, pooled=True)
      _encode_split(writer, captions, encode, encoder.tokenizer, global_size, f"encoding {name}", progress)
  return directory
