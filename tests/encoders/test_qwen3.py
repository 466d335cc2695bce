"""Qwen3 port vs transformers' PyTorch `Qwen3Model` (float32, tiny random weights), pooling and bf16."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import transformers

from pixelhdm_jax.encoders.hf_checkpoint import open_safetensors
from pixelhdm_jax.encoders.qwen3 import Qwen3Encoder, load_qwen3
from tests.helpers import hf_qwen3_config, randomize, require_torch

torch = require_torch()

LENGTHS = (0, 3, 9, 5)  # an empty prompt, a full row (T = 9) and padded rows
T = 9


def padded_batch():
  """Right-padded ids (pad 0) and masks for `LENGTHS`."""
  rng = np.random.default_rng(0)
  ids = np.zeros((len(LENGTHS), T), np.int32)
  for row, n in enumerate(LENGTHS):
    ids[row, :n] = rng.integers(1, 257, n)
  return ids, np.arange(T)[None, :] < np.array(LENGTHS)[:, None]


def torch_hidden_states(model, ids, mask):
  with torch.no_grad():
    out = model(input_ids=torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask, dtype=torch.long),
                output_hidden_states=True)
  return [h.numpy() for h in out.hidden_states]


@pytest.fixture(scope="module")
def reference(hf_qwen3):
  ids, mask = padded_batch()
  return ids, mask, torch_hidden_states(hf_qwen3[1], ids, mask)


@pytest.mark.parametrize("hidden_layer", [-1, -2])
def test_matches_transformers(hf_qwen3, reference, hidden_layer):
  ids, mask, states = reference
  module, params = load_qwen3(hf_qwen3[0], hidden_layer)
  out = jax.jit(module.apply)({"params": params}, ids, mask)
  expected = states[hidden_layer]
  valid = mask.astype(bool)
  np.testing.assert_allclose(np.asarray(out.hidden)[valid], expected[valid], atol=2e-5, rtol=1e-5)
  # Pads too: rows with no valid key get a zero attention output, as HF's default SDPA path.
  np.testing.assert_allclose(np.asarray(out.hidden), expected, atol=2e-5, rtol=1e-5)
  np.testing.assert_array_equal(np.asarray(out.mask), valid)


def test_pooled_is_last_valid_token(hf_qwen3, reference):
  ids, mask, states = reference
  module, params = load_qwen3(hf_qwen3[0])
  out = jax.jit(module.apply)({"params": params}, ids, mask)
  hidden = np.asarray(out.hidden)
  for row, n in enumerate(LENGTHS):
    index = n - 1 if n else T - 1  # the empty prompt takes index -1, the last pad slot (as the original)
    np.testing.assert_array_equal(np.asarray(out.pooled[row]), hidden[row, index])
    np.testing.assert_allclose(np.asarray(out.pooled[row]), states[-1][row, index], atol=2e-5, rtol=1e-5)


def test_sharded_checkpoint_loads_the_same(hf_qwen3, tmp_path):
  hf_qwen3[1].save_pretrained(tmp_path, max_shard_size="50KB")
  index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
  assert len(set(index["weight_map"].values())) > 2
  _, sharded = load_qwen3(tmp_path)
  _, single = load_qwen3(hf_qwen3[0])
  jax.tree.map(np.testing.assert_array_equal, sharded, single)


def test_causal_lm_checkpoint_with_tied_embeddings(tmp_path):
  """The hub layout of Qwen3-0.6B: `Qwen3ForCausalLM`, names under `model.`, LM head tied (skipped)."""
  model = randomize(transformers.Qwen3ForCausalLM(hf_qwen3_config(num_hidden_layers=2, tie_word_embeddings=True)), 2)
  model.save_pretrained(tmp_path)
  assert "model.embed_tokens.weight" in open_safetensors(tmp_path)
  ids, mask = padded_batch()
  expected = torch_hidden_states(model.model, ids, mask)[-1]
  module, params = load_qwen3(tmp_path)
  out = jax.jit(module.apply)({"params": params}, ids, mask)
  np.testing.assert_allclose(np.asarray(out.hidden), expected, atol=2e-5, rtol=1e-5)


def test_bfloat16_checkpoint_is_read_as_float32(tmp_path):
  model = randomize(transformers.Qwen3Model(hf_qwen3_config(num_hidden_layers=1)), 3).to(torch.bfloat16)
  model.save_pretrained(tmp_path)
  _, params = load_qwen3(tmp_path)
  kernel = params["layers"]["self_attn"]["q_proj"]["kernel"][0]
  assert kernel.dtype == np.float32
  np.testing.assert_array_equal(kernel, model.layers[0].self_attn.q_proj.weight.detach().float().numpy().T)


def test_bfloat16_compute_is_close_to_float32(hf_qwen3, reference):
  """bf16 activations (float32 params, norms and softmax): max error below 3% of the hidden states' scale."""
  ids, mask, _ = reference
  module, params = load_qwen3(hf_qwen3[0])
  f32 = np.asarray(jax.jit(module.apply)({"params": params}, ids, mask).hidden)
  bf16 = jax.jit(Qwen3Encoder(module.arch, dtype=jnp.bfloat16).apply)({"params": params}, ids, mask).hidden
  assert bf16.dtype == jnp.bfloat16
  error = np.abs(np.asarray(bf16, np.float32) - f32)[mask]
  assert error.max() < 0.03 * np.abs(f32).max(), (error.max(), np.abs(f32).max())
