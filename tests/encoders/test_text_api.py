"""The conditioning API: tiny presets without download, pure jittable encoders, tokenizers, sharding."""

import shutil

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import transformers
from tokenizers import Tokenizer, models, pre_tokenizers

from configs import base
from pixelhdm_jax import parallel
from pixelhdm_jax.encoders.qwen3 import load_qwen3
from pixelhdm_jax.encoders.teacher import build_dino_teacher
from pixelhdm_jax.encoders.text import build_text_encoder
from pixelhdm_jax.encoders.tokenizers import ByteTokenizer, HFTokenizer, build_tokenizer
from pixelhdm_jax.encoders.transformer import place_frozen

PROMPTS = ["a red cat", "", "x" * 100]


@pytest.fixture(scope="module")
def tiny_config():
  return base.get_config("tiny")


@pytest.fixture(scope="module")
def text_encoder(tiny_config):
  """(encoder, its host params)."""
  return build_text_encoder(tiny_config)


@pytest.fixture(scope="module")
def teacher(tiny_config):
  """(teacher, its host params)."""
  return build_dino_teacher(tiny_config)


def save_word_tokenizer(directory):
  """A word-level HF tokenizer with an EOS token but no pad token, saved offline."""
  vocab = {"<eos>": 0, "<unk>": 1, "a": 2, "red": 3, "cat": 4, "on": 5, "the": 6, "mat": 7}
  tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
  tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
  fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<eos>", unk_token="<unk>")
  fast.save_pretrained(directory)


def test_tiny_text_encoder(text_encoder, tiny_config):
  text_encoder, params = text_encoder
  out = text_encoder.encode(params, *text_encoder.tokenizer(PROMPTS))
  max_length = tiny_config.text.max_length
  assert out.hidden.shape == (3, max_length, tiny_config.model.text_dim) and out.pooled.shape == (3, 64)
  np.testing.assert_array_equal(np.asarray(out.mask).sum(-1), [9, 0, max_length])
  hidden = np.asarray(out.hidden)
  np.testing.assert_array_equal(np.asarray(out.pooled), hidden[[0, 1, 2], [8, max_length - 1, max_length - 1]])
  assert isinstance(text_encoder.tokenizer, ByteTokenizer)


def test_encode_is_pure_and_gradient_free(text_encoder, teacher):
  (text_encoder, text_params), (teacher, dino_params) = text_encoder, teacher
  ids, mask = text_encoder.tokenizer(PROMPTS)

  def text_loss(params):
    return jnp.sum(text_encoder.encode(params, ids, mask).hidden ** 2)

  grads = jax.jit(jax.grad(text_loss))(text_params)
  assert all(not np.asarray(g).any() for g in jax.tree.leaves(grads))
  images = jnp.zeros((2, 32, 48, 3))
  features = jax.jit(teacher.features)(dino_params, images)
  assert features.shape == (2, 2 * 3, teacher.feature_dim)
  image_grad = jax.grad(lambda x: jnp.sum(teacher.features(dino_params, x)))(images)
  assert not np.asarray(image_grad).any()


def test_sharded_encoders_match_unsharded(text_encoder, teacher, tiny_config):
  (text_encoder, host_text), (teacher, host_dino) = text_encoder, teacher
  mesh = jax.make_mesh((2, 2, 2), ("data", "fsdp", "tensor"), axis_types=(jax.sharding.AxisType.Auto,) * 3)
  rules = parallel.logical_rules(tiny_config.mesh)
  ids, mask = text_encoder.tokenizer(PROMPTS + ["the cat"])
  images = np.random.default_rng(0).uniform(-1, 1, (4, 32, 16, 3)).astype(np.float32)
  expected_text = text_encoder.encode(host_text, ids, mask)
  expected_features = teacher.features(host_dino, images)
  text_shardings = parallel.param_shardings(text_encoder.abstract_params(), mesh, rules)
  assert parallel.sharded_fraction(text_encoder.abstract_params(), text_shardings) > 0.9
  text_params = place_frozen(text_encoder, host_text, mesh, rules)
  dino_params = place_frozen(teacher, host_dino, mesh, rules)
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    text = jax.jit(text_encoder.encode)(text_params, ids, mask)
    features = jax.jit(teacher.features)(dino_params, images)
  np.testing.assert_allclose(np.asarray(text.hidden), np.asarray(expected_text.hidden), atol=1e-5)
  np.testing.assert_allclose(np.asarray(features), np.asarray(expected_features), atol=1e-5)


def test_frozen_params_are_placed_in_the_compute_dtype(tiny_config):
  """With text.compute_dtype=bfloat16 (what `auto` is on accelerators) the placed matrices and embeddings are
  bfloat16 and the vectors (norm scales) float32, split over the mesh as the shapes for AOT say, and the encoder
  computes exactly what it computes from the float32 weights."""
  config = base.get_config("tiny")
  config.text.compute_dtype = "bfloat16"
  encoder, host_params = build_text_encoder(config)
  mesh = jax.make_mesh((1, 8, 1), ("data", "fsdp", "tensor"), axis_types=(jax.sharding.AxisType.Auto,) * 3)
  rules = parallel.logical_rules(config.mesh)
  placed = place_frozen(encoder, host_params, mesh, rules)
  shapes = place_frozen(encoder, None, mesh, rules)
  for leaf, shape in zip(jax.tree.leaves(placed), jax.tree.leaves(shapes)):
    assert leaf.dtype == (jnp.bfloat16 if leaf.ndim >= 2 else jnp.float32), (leaf.shape, leaf.dtype)
    assert (leaf.shape, leaf.dtype, leaf.sharding) == (shape.shape, shape.dtype, shape.sharding)
  embedding = placed["embed_tokens"]["embedding"]
  assert embedding.addressable_shards[0].data.shape[1] == embedding.shape[1] // 8  # split over fsdp
  stored = sum(leaf.nbytes for leaf in jax.tree.leaves(placed))
  assert stored < 0.51 * sum(np.asarray(leaf).nbytes for leaf in jax.tree.leaves(host_params))
  ids, mask = encoder.tokenizer(PROMPTS)
  float32, _ = parallel.place_params(host_params, encoder.abstract_params(), mesh, rules)  # the same split
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    hidden = jax.jit(encoder.encode)(placed, ids, mask).hidden
    reference = jax.jit(encoder.encode)(float32, ids, mask).hidden  # float32 weights, bf16 compute
  np.testing.assert_array_equal(np.asarray(hidden, np.float32), np.asarray(reference, np.float32))


def test_hf_tokenizer_pads_right_with_eos_fallback(tmp_path):
  save_word_tokenizer(tmp_path)
  tokenizer = HFTokenizer(tmp_path, max_length=4)
  assert tokenizer.pad_id == 0 and tokenizer.vocab_size == 8
  ids, mask = tokenizer(["a red cat", "", "the cat on the mat"])
  np.testing.assert_array_equal(ids, [[2, 3, 4, 0], [0, 0, 0, 0], [6, 4, 5, 6]])
  np.testing.assert_array_equal(mask, [[1, 1, 1, 0], [0, 0, 0, 0], [1, 1, 1, 1]])
  assert ids.dtype == np.int32 and mask.dtype == bool
  with pytest.raises(TypeError, match="list of prompts"):
    tokenizer("a cat")


def test_pretrained_text_encoder_from_config(hf_qwen3, tmp_path, tiny_config):
  """config.text.source='pretrained' reads weights, config and tokenizer from one local directory."""
  directory = tmp_path / "qwen3"
  shutil.copytree(hf_qwen3[0], directory)
  save_word_tokenizer(directory)
  config = base.get_config("tiny")
  config.text.source, config.text.path, config.text.max_length = "pretrained", str(directory), 6
  assert isinstance(build_tokenizer(config.text), HFTokenizer)
  encoder, params = build_text_encoder(config)
  out = encoder.encode(params, *encoder.tokenizer(["a red cat on the mat", ""]))
  module, params = load_qwen3(hf_qwen3[0])
  ids = np.array([[2, 3, 4, 5, 6, 7], [0] * 6], np.int32)
  expected = module.apply({"params": params}, ids, ids > 0)
  np.testing.assert_array_equal(np.asarray(out.mask), ids > 0)
  np.testing.assert_allclose(np.asarray(out.hidden), np.asarray(expected.hidden), atol=1e-6)
