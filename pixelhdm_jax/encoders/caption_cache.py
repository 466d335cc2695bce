"""Encodes a prepared folder's captions with the frozen Qwen3 into its text cache (`data/text_cache.py`).

`cache_settings(config, dataset)` names the cache a run reads: the weights fingerprint of `config.text` (a hash of
the checkpoint's files, or of the random encoder's architecture and seed: its weights are a function of them),
`text.hidden_layer`, `text.max_length`, the compute dtype and the dataset's fingerprint. `encode_captions(config)`
fills it (`launch/encode_text.py`): every caption of `data.split` plus the empty prompt, in batches split over all
devices of this host (the last one padded), committed batch by batch so that an interrupted job resumes.
"""

from __future__ import annotations

import hashlib
import json
import pathlib

import flax.linen as nn
import jax
import ml_collections
import numpy as np
import tqdm
from etils import epath

from pixelhdm_jax import parallel
from pixelhdm_jax.data import text_cache
from pixelhdm_jax.data.sources import FolderSource
from pixelhdm_jax.encoders.hf_checkpoint import resolve_checkpoint
from pixelhdm_jax.encoders.text import RANDOM_QWEN3_SEED, build_text_encoder
from pixelhdm_jax.encoders.tokenizers import QWEN3_FILES
from pixelhdm_jax.encoders.transformer import RANDOM_SOURCES, place_frozen
from pixelhdm_jax.errors import ConfigError
from pixelhdm_jax.models.layers import compute_dtype

CHECKPOINT_SUFFIXES = (".json", ".safetensors", ".txt", ".model")  # weights, config and tokenizer files
_CHUNK = 1 << 24  # bytes hashed at a time
_TOKENIZED = 4096  # captions tokenised at a time to count their tokens


def weights_fingerprint(config: ml_collections.ConfigDict) -> str:
  """A hash that differs between two weight sets (and tokenizers) of `config.text`, without building the encoder."""
  t = config.text
  digest = hashlib.sha256()
  if t.source in RANDOM_SOURCES:
    encoder, _ = build_text_encoder(config, with_params=False)
    arch = encoder.module.arch
    digest.update(json.dumps({"source": t.source, "seed": RANDOM_QWEN3_SEED, "arch": arch.__dict__},
                             sort_keys=True).encode())
    return digest.hexdigest()[:16]
  path = resolve_checkpoint(t, "text", QWEN3_FILES)
  for file in sorted(p for p in pathlib.Path(path).iterdir() if p.suffix in CHECKPOINT_SUFFIXES and p.is_file()):
    digest.update(f"{file.name}\0{file.stat().st_size}\0".encode())
    with open(file, "rb") as stream:
      while chunk := stream.read(_CHUNK):
        digest.update(chunk)
  return digest.hexdigest()[:16]


def cache_settings(config: ml_collections.ConfigDict, source: FolderSource) -> dict:
  """The settings that name the text cache of `config` over the prepared folder `source`."""
  t = config.text
  return {"encoder": weights_fingerprint(config), "hidden_layer": t.hidden_layer, "max_length": t.max_length,
          "dtype": compute_dtype(t.compute_dtype).name, "dataset": source.fingerprint()}


def _encode_split(write: text_cache.SplitWriter, captions: list[str], encode, tokenizer, batch_size: int,
                  desc: str, progress: bool) -> None:
  with tqdm.tqdm(total=len(captions), initial=write.done, desc=desc, unit="caption", disable=not progress) as bar:
    while write.done < len(captions):
      chunk = captions[write.done:write.done + batch_size]
      ids, mask = tokenizer(chunk + [""] * (batch_size - len(chunk)))  # the last batch padded with empty prompts
      hidden, valid, pooled = jax.device_get(encode(ids, mask))
      write.write(hidden[:len(chunk)], valid[:len(chunk)], pooled[:len(chunk)])
      write.commit()
      bar.update(len(chunk))


def encode_captions(config: ml_collections.ConfigDict, *, batch_size: int = 64, progress: bool = True) -> epath.Path:
  """Fills (or finishes) the text cache of `config` for the prepared folder `data.path`, split `data.split`;
  returns its folder. `batch_size` captions per device and step."""
  d = config.data
  if d.source != "folder" or not d.path:
    raise ConfigError("the text cache is stored beside a prepared folder: set --config.data.source=folder and "
                      "--config.data.path to the --output of launch/prepare_data.py")
  if jax.process_count() > 1:
    raise ConfigError("launch/encode_text.py runs on one host (over all its devices): start it as one process")
  source = FolderSource(d.path, d.split, d.jpeg_draft)
  settings = cache_settings(config, source)
  directory = text_cache.cache_dir(source.path, settings)
  encoder, host_params = build_text_encoder(config)
  dim, dtype = encoder.module.arch.hidden_size, compute_dtype(config.text.compute_dtype)
  text_cache.write_meta(directory, settings, dim)
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
      writer = text_cache.SplitWriter(directory, name, lengths(captions), dim, dtype)
      _encode_split(writer, captions, encode, encoder.tokenizer, global_size, f"encoding {name}", progress)
  return directory
