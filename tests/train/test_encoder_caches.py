"""The text and teacher caches: stored encodings and features equal the live encoders', training on them equals
training live, an interrupted job resumes, a cache made with other settings is refused naming the setting, random
crops or flips fall back to the live teacher."""

import json
import logging
import types

import flax.linen as nn
import jax
import numpy as np
import pytest
from PIL import Image

from pixelhdm_jax import parallel
from pixelhdm_jax.config import validate
from pixelhdm_jax.data import feature_cache, teacher_cache, text_cache
from pixelhdm_jax.data.buckets import buckets_from_config
from pixelhdm_jax.data.images import images_to_model_range
from pixelhdm_jax.data.pipeline import build_train_loader
from pixelhdm_jax.data.prepare import prepare_folder
from pixelhdm_jax.data.sources import FolderSource
from pixelhdm_jax.encoders import caption_cache, teacher_features
from pixelhdm_jax.encoders.teacher import DinoTeacher, build_dino_teacher
from pixelhdm_jax.encoders.text import build_text_encoder
from pixelhdm_jax.encoders.tokenizers import ByteTokenizer
from pixelhdm_jax.errors import ConfigError
from pixelhdm_jax.train import loop, setup
from pixelhdm_jax.train.loop import train_and_evaluate
from tests.helpers import tiny_run_config

CAPTIONS = ("a red circle on blue", "", "a yellow square on green, large", "a tiny dot", "stripes",
            "a very long caption that the byte tokenizer cuts at max_length tokens, well past thirty-two bytes")


def _config(dataset, dino_cache=False, **text):
  """The tiny run of `tests/train/test_step.py` (so that its live program is compiled once per session) on the
  prepared folder, half of the captions dropped."""
  config = tiny_run_config()
  config.data.update(source="folder", path=str(dataset), caption_dropout=0.5)
  config.text.update(text)
  config.dino.cache = dino_cache
  return config


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
  """A prepared folder of 12 captioned images of two sizes (one caption empty, one longer than text.max_length)."""
  images, out = tmp_path_factory.mktemp("images"), tmp_path_factory.mktemp("prepared")
  rng = np.random.default_rng(0)
  for i in range(12):
    shape = (40, 36, 3) if i % 2 else (48, 72, 3)
    Image.fromarray(rng.integers(0, 256, shape, np.uint8)).save(images / f"{i:02d}.png")
    (images / f"{i:02d}.txt").write_text(CAPTIONS[i % len(CAPTIONS)])
  prepare_folder(images, out, buckets_from_config(tiny_run_config()), validation_fraction=0.0, progress=False)
  return out


@pytest.fixture(scope="module")
def cache(dataset):
  """The text and teacher caches of the tiny run."""
  config = validate(_config(dataset))
  teacher_features.encode_teacher_features(config, batch_size=1, progress=False)
  return caption_cache.encode_captions(config, batch_size=1, progress=False)


def test_cached_encodings_equal_the_live_encoder(dataset, cache):
  config = _config(dataset)
  source = FolderSource(dataset)
  stored = text_cache.TextCache(dataset, "train", caption_cache.cache_settings(config, source), config.text.max_length)
  indices = np.arange(len(source))
  dropped = indices % 5 == 0
  batch = stored.batch(indices, dropped)
  encoder, params = build_text_encoder(config)
  ids, mask = encoder.tokenizer(["" if d else source.caption(i) for i, d in zip(indices, dropped)])
  live = jax.device_get(encoder.encode(params, ids, mask))
  np.testing.assert_array_equal(batch["text_mask"], live.mask)
  np.testing.assert_allclose(batch["text_pooled"], live.pooled, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.where(live.mask[..., None], batch["text_hidden"], 0),
                             np.where(live.mask[..., None], live.hidden, 0), rtol=1e-5, atol=1e-6)
  assert not batch["text_hidden"][~live.mask].any()  # pads are zeros


def _step_losses(config, steps=3):
  """Losses of `steps` train steps of `config` on one device (the step and the loader, without the loop)."""
  config.mesh.shape = (1, 1, 1)
  mesh = parallel.create_mesh(config.mesh, jax.devices()[:1])
  rules = parallel.logical_rules(config.mesh)
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    trainer = setup.build_trainer(config, mesh, rules)
    init_rng, rng = jax.random.split(jax.random.key(config.seed))
    state = trainer.new_state(init_rng)
    loader = loop._loader(trainer)
    losses = []
    for _ in range(steps):
      state, metrics = trainer.step_fn(repa=True)(state, trainer.frozen, trainer.global_batch(next(loader)), rng)
      losses.append(float(metrics["loss"]))
  return losses


def _no_text_encoder(*args, **kwargs):
  raise AssertionError("a run with text.cache=True built the text encoder")


def _no_teacher(*args, **kwargs):
  raise AssertionError("a step on cached teacher features ran DINOv3")


def test_train_steps_on_the_caches_equal_the_live_ones(dataset, cache, monkeypatch):
  live = _step_losses(_config(dataset))
  monkeypatch.setattr(setup, "build_text_encoder", _no_text_encoder)
  monkeypatch.setattr(DinoTeacher, "features", _no_teacher)
  np.testing.assert_allclose(_step_losses(_config(dataset, dino_cache=True, cache=True)), live, rtol=1e-5)


@pytest.mark.slow
def test_cached_teacher_features_equal_the_live_teacher_on_the_loaders_images(dataset):
  """Two buckets (32x32 and 64x48): each batch's stored features are DINOv3's of the batch's images (7 s; the
  default run's single bucket is covered by the equal losses above)."""
  config = _config(dataset)
  config.data.max_resolution = 64
  teacher_features.encode_teacher_features(config, batch_size=1, progress=False)
  settings = teacher_features.cache_settings(config, FolderSource(dataset))
  loader = build_train_loader(config, ByteTokenizer(config.text.max_length), teacher_cache_settings=settings)
  teacher, params = build_dino_teacher(config)
  shapes = set()
  for _ in range(4):
    batch = next(loader)
    live = teacher.features(params, images_to_model_range(batch["images"]))
    np.testing.assert_allclose(batch[teacher_cache.FEATURES], live, rtol=1e-5, atol=1e-5)
    shapes.add(batch["images"].shape)
  assert len(shapes) == 2, shapes


def test_random_crops_or_flips_use_the_live_teacher_and_the_features_stop_with_repa(dataset, cache, caplog):
  config = _config(dataset, dino_cache=True)
  config.data.random_flip = True
  trainer = types.SimpleNamespace(config=config, text_encoder=build_text_encoder(config)[0], has_teacher=True)
  with caplog.at_level(logging.INFO):
    batch = next(loop._loader(trainer))
  assert teacher_cache.FEATURES not in batch
  assert "REPA targets come from the live teacher" in caplog.text
  config.data.random_flip = False
  config.loss.repa_early_stop = 1  # REPA's targets in the first batch only
  loader = loop._loader(trainer)
  assert teacher_cache.FEATURES in next(loader) and teacher_cache.FEATURES not in next(loader)


@pytest.mark.slow
def test_training_on_the_cache_equals_training_live(dataset, cache, tmp_path, monkeypatch):
  """The whole loop (8 devices, checkpoints), 60 s on the 2-core CPU VM."""
  short = lambda config: config.train.update(num_steps=3, checkpoint_every=100) or config
  live = train_and_evaluate(short(_config(dataset)), tmp_path / "live")
  monkeypatch.setattr(setup, "build_text_encoder", _no_text_encoder)
  monkeypatch.setattr(DinoTeacher, "features", _no_teacher)
  cached = train_and_evaluate(short(_config(dataset, dino_cache=True, cache=True)), tmp_path / "cached")
  rows = lambda run: [json.loads(line) for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
  losses = lambda run: [row["loss"] for row in rows(run) if "loss" in row]
  assert len(losses("live")) == 3
  np.testing.assert_allclose(losses("cached"), losses("live"), rtol=1e-5)
  assert cached["loss"] == pytest.approx(live["loss"], rel=1e-5)


def test_an_interrupted_job_resumes_to_the_same_cache(dataset, cache, monkeypatch):
  config = _config(dataset, max_length=24)  # another cache: the module's stays as it is
  commits = {"left": 2}
  real_commit = feature_cache.SplitWriter.commit

  def interrupted_commit(self):
    real_commit(self)
    commits["left"] -= 1
    if commits["left"] == 0:
      raise KeyboardInterrupt

  monkeypatch.setattr(feature_cache.SplitWriter, "commit", interrupted_commit)
  with pytest.raises(KeyboardInterrupt):
    caption_cache.encode_captions(config, batch_size=1, progress=False)
  settings = caption_cache.cache_settings(config, FolderSource(dataset))
  directory = feature_cache.cache_dir(dataset, text_cache.KIND, settings)
  assert json.loads((directory / "train_progress.json").read_text())["done"] == 8  # empty prompt, then one batch
  with pytest.raises(ConfigError, match="holds 8 of 12 records of split 'train'.*resumes"):
    text_cache.TextCache(dataset, "train", settings, 24)
  monkeypatch.setattr(feature_cache.SplitWriter, "commit", real_commit)
  caption_cache.encode_captions(config, batch_size=1, progress=False)
  resumed = {name: np.load(directory / f"train_{name}.npy") for name in ("rows", "pooled", "offsets")}
  for path in directory.glob("*"):
    path.unlink()
  caption_cache.encode_captions(config, batch_size=1, progress=False)
  for name, array in resumed.items():
    np.testing.assert_array_equal(np.load(directory / f"train_{name}.npy"), array)


@pytest.mark.parametrize("change, named", [({"hidden_layer": -2}, "text.hidden_layer"),
                                           ({"max_length": 16}, "text.max_length"),
                                           ({"compute_dtype": "bfloat16"}, "text.compute_dtype")])
def test_a_cache_made_with_other_settings_is_refused_naming_the_setting(dataset, cache, change, named):
  config = _config(dataset, **change)
  with pytest.raises(ConfigError, match=f"made with other {named}.*launch/encode_text.py"):
    text_cache.TextCache(dataset, "train", caption_cache.cache_settings(config, FolderSource(dataset)), 32)


def test_other_encoder_weights_give_another_fingerprint(tmp_path):
  fingerprints = []
  for name, weights in (("a", b"\0" * 64), ("b", b"\0" * 63 + b"\1"), ("c", b"\0" * 64)):
    (tmp_path / name).mkdir()
    (tmp_path / name / "config.json").write_text("{}")
    (tmp_path / name / "model.safetensors").write_bytes(weights)
    config = tiny_run_config()
    config.text.update(source="pretrained", path=str(tmp_path / name))
    fingerprints.append(caption_cache.weights_fingerprint(config))
  assert fingerprints[0] != fingerprints[1] and fingerprints[0] == fingerprints[2]


def test_a_teacher_cache_made_with_other_settings_is_refused_naming_the_setting(dataset, cache):
  config = _config(dataset)
  config.data.jpeg_draft = False
  settings = teacher_features.cache_settings(config, FolderSource(dataset))
  with pytest.raises(ConfigError, match="made with other data.jpeg_draft .*launch/encode_teacher.py"):
    teacher_cache.TeacherCache(dataset, "train", settings)


@pytest.mark.parametrize("field, encode, read, kind, launcher", [
    ("text", caption_cache.encode_captions, lambda path: text_cache.TextCache(path, "train", {}, 32), "text_cache",
     "encode_text"),
    ("dino", teacher_features.encode_teacher_features, lambda path: teacher_cache.TeacherCache(path, "train", {}),
     "teacher_cache", "encode_teacher")])
def test_a_cache_needs_a_prepared_folder(field, encode, read, kind, launcher, tmp_path):
  config = tiny_run_config()
  config[field].cache = True
  with pytest.raises(ConfigError, match=f"{field}.cache=True .* set data.source=folder and data.path"):
    validate(config)
  with pytest.raises(ConfigError, match="set --config.data.path to the --output of launch/prepare_data.py"):
    encode(tiny_run_config(), progress=False)
  with pytest.raises(ConfigError, match=f"{tmp_path} holds no {kind}: build it with python launch/{launcher}.py"):
    read(tmp_path)
