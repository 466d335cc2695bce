"""Original PyTorch checkpoints in, original-layout safetensors out: the tiny fixture through
`launch/convert.py` and `launch/export.py`, the round trip, and every error a user can hit."""

import json
import os
import pathlib
import subprocess
import sys

import flax
import flax.linen as nn
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy

from configs import base
from pixelhdm_jax.models.pixelhdm import PixelHDM, abstract_params
from pixelhdm_jax.weights import interop
from pixelhdm_jax.weights.inference import config_json, load_for_inference
from pixelhdm_jax.weights.original import OriginalWeightsError, export_state_dict, import_state_dict
from pixelhdm_jax.weights.original_config import OriginalConfigError, config_from_original
from tests.helpers import original_config, original_inputs, require_torch

torch = require_torch()  # the original's checkpoints are torch files
REPO = pathlib.Path(__file__).resolve().parents[2]
ARCHITECTURE = ("hidden_dim", "pixel_dim", "patch_size", "patch_layers", "pixel_layers", "num_heads", "num_kv_heads",
                "mlp_ratio", "bottleneck_dim", "time_embed_dim", "mrope_split", "mrope_theta", "repa_align_layer",
                "text_dim")


def _run(script: str, *flags: str) -> subprocess.CompletedProcess:
  env = {key: value for key, value in os.environ.items() if key != "XLA_FLAGS"}  # one CPU device
  env["JAX_PLATFORMS"] = "cpu"
  return subprocess.run([sys.executable, str(REPO / "launch" / script), *flags], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=300, check=False)


def _state_dict(spec, arrays, scale: float = 1.0) -> dict:
  """Every key of the original's `state_dict` (attention aliases included) as torch tensors."""
  return {name: torch.from_numpy(scale * arrays["param/" + info.get("alias_of", name)])
          for name, info in spec["state_dict"].items()}


def _assert_trees_equal(a, b):
  flat_a, flat_b = flax.traverse_util.flatten_dict(a), flax.traverse_util.flatten_dict(b)
  assert sorted(flat_a) == sorted(flat_b)
  for path, value in flat_a.items():
    np.testing.assert_array_equal(np.asarray(value), np.asarray(flat_b[path]), err_msg="/".join(path))


@pytest.fixture(scope="module")
def original_pt(original_tiny, tmp_path_factory):
  """The fixture as the original's training checkpoint: aliases, an unused DINO projector key, its config."""
  spec, arrays = original_tiny
  model = {**_state_dict(spec, arrays), "_dino_projector.0.weight": torch.zeros(8, 8)}
  path = tmp_path_factory.mktemp("original") / "checkpoint_step_10.pt"
  torch.save({"model": model, "config": spec["config"], "state": {"step": 10}}, path)
  return path


@pytest.fixture(scope="module")
def imported(original_pt, tmp_path_factory):
  output = tmp_path_factory.mktemp("imported")
  result = _run("convert.py", "import-original", f"--input={original_pt}", f"--output={output}")
  assert result.returncode == 0, result.stderr[-3000:]
  return output, result.stdout


@pytest.fixture(scope="module")
def exported(imported, tmp_path_factory):
  output = tmp_path_factory.mktemp("exported") / "out"
  result = _run("export.py", f"--workdir={imported[0]}", f"--output={output}", "--format=orbax",
                "--format=safetensors")
  assert result.returncode == 0, result.stderr[-3000:]
  return output


def test_imported_checkpoint_reproduces_the_original_output(original_tiny, imported):
  spec, arrays = original_tiny
  output, stdout = imported
  config, params, step = load_for_inference(output)
  assert step == 10
  expected = original_config(spec).model
  assert {f: tuple(config.model[f]) if f == "mrope_split" else config.model[f] for f in ARCHITECTURE} == {
      f: tuple(expected[f]) if f == "mrope_split" else expected[f] for f in ARCHITECTURE}
  assert config.text.max_length == spec["config"]["text_max_length"] == 8
  assert config.loss.repa_lambda == 0.5 and config.flow.t_eps == 0.05
  velocity = PixelHDM.from_config(config.model, dtype=jnp.float32).apply({"params": params},
                                                                         *original_inputs(arrays)).velocity
  reference = np.asarray(arrays["out/v"], np.float64)
  error = np.max(np.abs(np.asarray(velocity, np.float64) - reference)) / np.max(np.abs(reference))
  assert error < 1e-5, f"out/v: max error relative to max |value| = {error:.2e}"
  assert "note: dropped 1 tensor under _dino_projector.* (the original's unused" in stdout
  assert "note: dropped 20 attention alias keys" in stdout
  assert "the checkpoint has no EMA: imported `model`" in stdout
  assert "not mapped" in stdout and "cfg_dropout=0.1" in stdout and "gate_type" not in stdout


def test_export_has_the_original_names_shapes_and_values(original_tiny, exported):
  spec, arrays = original_tiny
  tensors = safetensors.numpy.load_file(exported / "model.safetensors")
  assert sorted(tensors) == sorted(spec["parameters"])
  for name, info in spec["parameters"].items():
    assert list(tensors[name].shape) == info["shape"], name
    np.testing.assert_array_equal(tensors[name], arrays["param/" + name], err_msg=name)
  original = json.loads((exported / "config.json").read_text())
  assert {k: original[k] for k in original if k in spec["config"]} == {
      k: spec["config"][k] for k in original if k in spec["config"]}
  assert sorted(p.name for p in exported.iterdir()) == ["10", "config.json", "model.safetensors"]


def test_round_trip_import_export_import_is_the_identity(imported, exported, tmp_path):
  result = _run("convert.py", "import-original", f"--input={exported}", f"--output={tmp_path}")
  assert result.returncode == 0, result.stderr[-3000:]
  first, again, orbax_export = (load_for_inference(p) for p in (imported[0], tmp_path, exported))
  for config, params, step in (again, orbax_export):
    assert step == first[2] == 10
    assert config_json(config) == config_json(first[0])
    _assert_trees_equal(params, first[1])


def test_ema_weights_by_default_raw_on_request(original_tiny, tmp_path):
  spec, arrays = original_tiny
  shadow = {name: torch.from_numpy(2 * arrays["param/" + name]) for name in spec["parameters"]}
  path = tmp_path / "with_ema.pt"
  torch.save({"model": _state_dict(spec, arrays), "ema": {"shadow": shadow, "decay": 0.999},
              "config": spec["config"]}, path)
  default = base.get_config("default")
  ema = interop.import_original(interop.read_original(path), default)
  raw = interop.import_original(interop.read_original(path, use_ema=False), default)
  assert "imported the EMA weights (ema.shadow)" in ema.notes
  np.testing.assert_array_equal(ema.params["output_proj"]["kernel"], 2 * raw.params["output_proj"]["kernel"])


def test_bare_state_dict_network_is_read_off_its_shapes(original_tiny, tmp_path):
  spec, arrays = original_tiny
  torch.save(_state_dict(spec, arrays), tmp_path / "bare.pt")
  refused = _run("convert.py", "import-original", f"--input={tmp_path / 'bare.pt'}", f"--output={tmp_path / 'no'}")
  assert refused.returncode == 2 and not (tmp_path / "no").exists()
  split = tuple(spec["config"][k] for k in ("mrope_text_dim", "mrope_img_h_dim", "mrope_img_w_dim"))
  assert f"add --config.model.mrope_split='{split}'" in refused.stderr  # the default preset's split does not fit
  result = _run("convert.py", "import-original", f"--input={tmp_path / 'bare.pt'}", f"--output={tmp_path / 'out'}",
                f"--config.model.mrope_split={split}")
  assert result.returncode == 0, result.stderr[-3000:]
  config, params, _ = load_for_inference(tmp_path / "out")
  expected = original_config(spec).model
  network = [f for f in ARCHITECTURE if f != "repa_align_layer"]  # training only: no tensor shows it
  assert {f: tuple(config.model[f]) if f == "mrope_split" else config.model[f] for f in network} == {
      f: tuple(expected[f]) if f == "mrope_split" else expected[f] for f in network}
  np.testing.assert_array_equal(params["pixel_embed"]["proj"]["kernel"], arrays["param/pixel_embed.proj.weight"].T)


@pytest.fixture(scope="module")
def original_abstract(original_tiny):
  return abstract_params(PixelHDM.from_config(original_config(original_tiny[0]).model))


def _edited(spec, arrays, edit: str) -> dict:
  state_dict = {name: value.numpy() for name, value in _state_dict(spec, arrays).items()}
  if edit == "unknown":
    state_dict["patch_blocks.0.attention.extra.weight"] = np.zeros((4, 4), np.float32)
  elif edit == "extra layer":
    state_dict["patch_blocks.2.pre_attn_norm.weight"] = np.ones(64, np.float32)
  elif edit == "missing":
    del state_dict["output_proj.proj.bias"]
  elif edit == "missing layer":
    for name in [n for n in state_dict if n.startswith("pixel_blocks.1.")]:
      del state_dict[name]
  elif edit == "mis-shaped":
    state_dict["pixel_blocks.1.mlp.up_proj.weight"] = np.zeros((24, 4), np.float32)
  elif edit == "alias differs":
    state_dict["patch_blocks.1.attention.q_proj.weight"] = state_dict["patch_blocks.1.attention.q_proj.weight"] + 1
  return state_dict


@pytest.mark.parametrize("edit, message", [
    ("unknown", "unknown tensors: patch_blocks.0.attention.extra.weight"),
    ("extra layer", "unknown tensors: patch_blocks.2.pre_attn_norm.weight"),
    ("missing", "missing tensors: output_proj.proj.bias"),
    ("missing layer", "missing tensors: pixel_blocks.1.adaln.cond_expand.weight, pixel_blocks.1.adaln.norm.weight"),
    ("mis-shaped", ("shape mismatches: pixel_blocks.1.mlp.up_proj.weight: (24, 4) in the state dict, the network "
                    "expects (24, 8)")),
    ("alias differs", ("patch_blocks.1.attention.q_proj.weight is an alias of "
                       "patch_blocks.1.attention.qkv_proj.q_proj.weight but holds different values")),
])
def test_state_dict_errors_name_the_tensor(original_tiny, original_abstract, edit, message):
  with pytest.raises(OriginalWeightsError) as error:
    import_state_dict(_edited(*original_tiny, edit), original_abstract)
  assert message in str(error.value)


def test_convert_prints_every_problem(original_tiny, tmp_path):
  spec, arrays = original_tiny
  state_dict = _edited(spec, arrays, "unknown")
  state_dict.update({k: v for k, v in _edited(spec, arrays, "mis-shaped").items() if k.endswith("up_proj.weight")})
  del state_dict["output_proj.proj.bias"]
  torch.save({"model": {k: torch.from_numpy(v) for k, v in state_dict.items()}, "config": spec["config"]},
             tmp_path / "broken.pt")
  result = _run("convert.py", "import-original", f"--input={tmp_path / 'broken.pt'}", f"--output={tmp_path / 'out'}")
  assert result.returncode != 0
  for name in ("patch_blocks.0.attention.extra.weight", "output_proj.proj.bias", "pixel_blocks.1.mlp.up_proj.weight"):
    assert name in result.stderr
  assert not (tmp_path / "out").exists()


def test_unsupported_original_architecture_is_rejected(original_tiny):
  spec, _ = original_tiny
  with pytest.raises(OriginalConfigError, match="gate_type='elementwise' \\(supported: 'headwise'\\)"):
    config_from_original({**spec["config"], "gate_type": "elementwise"}, base.get_config("default"))


@pytest.mark.parametrize("scan_layers", [True, False])
def test_tiny_export_import_round_trip(scan_layers):
  config = base.get_config("tiny")
  abstract = abstract_params(PixelHDM.from_config(config.model, scan_layers=scan_layers))
  rng = np.random.default_rng(0)
  params = flax.core.meta.unbox(abstract)
  params = flax.traverse_util.unflatten_dict({path: rng.standard_normal(leaf.shape).astype(np.float32) for path, leaf
                                              in flax.traverse_util.flatten_dict(params).items()})
  state_dict = export_state_dict(params)
  assert "patch_blocks.1.attention.qkv_proj.k_proj.weight" in state_dict
  again, notes = import_state_dict(state_dict, abstract, scan_layers=scan_layers)
  _assert_trees_equal(again, params)
  assert notes == []


def test_export_names_parameters_the_original_cannot_hold():
  config = base.get_config("tiny")
  config.model.text_dim = 32  # a learned text projection, which the original does not have
  abstract = nn.unbox(abstract_params(PixelHDM.from_config(config.model)))
  params = flax.traverse_util.unflatten_dict({p: np.zeros(v.shape, np.float32)
                                              for p, v in flax.traverse_util.flatten_dict(abstract).items()})
  with pytest.raises(OriginalWeightsError, match="without a counterpart in the original network: text_proj/kernel"):
    export_state_dict(params)


def test_export_never_overwrites(imported, exported):
  with pytest.raises(interop.ConversionError, match="already exist: choose a new output folder"):
    interop.export(imported[0], exported, formats=("safetensors",))
