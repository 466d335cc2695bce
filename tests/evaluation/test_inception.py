"""The FID InceptionV3 against torch-fidelity's copy of the 2015-12-05 graph (same random weights through a `.pth`),
the pytorch-fid resize against `F.interpolate`, the weight loader's failure paths (sharded features:
test_features.py).

torch-fidelity is loaded module by module: its package `__init__` imports torchvision, which need not import here.
Its state-dict names are pytorch-fid's (the same converted file, `...-2015-12-05-6726825d.pth`), so no renaming.
"""

import functools
import hashlib
import http.server
import importlib
import importlib.util
import sys
import threading
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pixelhdm_jax.errors import ConfigError
from pixelhdm_jax.evaluation import inception
from tests.helpers import require_torch

SIZES = ((64, 64), (128, 96), (299, 299), (320, 320))
FIDELITY_REASON = "compares with torch-fidelity's InceptionV3: pip install --no-deps torch-fidelity==0.4.0"


def relative_error(actual, expected) -> float:
  return float(np.max(np.abs(np.asarray(actual) - expected)) / np.max(np.abs(expected)))


def random_images(seed: int, height: int, width: int, batch: int = 2) -> np.ndarray:
  return np.random.default_rng(seed).integers(0, 256, (batch, height, width, 3), dtype=np.uint8)


def import_fidelity_inception(patch: pytest.MonkeyPatch):
  """torch-fidelity's InceptionV3 module, imported under a bare package (`patch` undoes it) so that the package's
  `__init__`, and its torchvision import, never run."""
  require_torch()
  spec = importlib.util.find_spec("torch_fidelity")
  if spec is None:
    pytest.skip(FIDELITY_REASON)
  package = types.ModuleType("torch_fidelity")
  package.__path__ = list(spec.submodule_search_locations)
  patch.setitem(sys.modules, "torch_fidelity", package)
  return importlib.import_module("torch_fidelity.feature_extractor_inceptionv3")


def randomize(model, seed: int):
  """Seeded weights with non-trivial BatchNorm statistics, so that every tensor matters in the comparison."""
  import torch
  generator = torch.Generator().manual_seed(seed)
  uniform = lambda shape: 0.5 + torch.rand(shape, generator=generator)
  normal = lambda shape, std: std * torch.randn(shape, generator=generator)
  with torch.no_grad():
    for name, tensor in model.state_dict().items():
      if name.endswith("conv.weight"):
        tensor.copy_(normal(tensor.shape, (2.0 / tensor[0].numel()) ** 0.5))
      elif name.endswith(("bn.weight", "running_var")):
        tensor.copy_(uniform(tensor.shape))
      elif name.endswith(("bn.bias", "running_mean")) or name.startswith("fc."):
        tensor.copy_(normal(tensor.shape, 0.1))
  return model


@pytest.fixture(scope="module")
def fidelity(tmp_path_factory):
  """(torch-fidelity's extractor with seeded random weights, the `.pth` of its state dict)."""
  torch = require_torch()
  with pytest.MonkeyPatch.context() as patch:
    module = import_fidelity_inception(patch)
    empty = tmp_path_factory.mktemp("inception") / "empty.pth"
    torch.save({}, empty)
    with pytest.MonkeyPatch.context() as build:  # built empty, then filled with our random weights
      build.setattr(module.FeatureExtractorInceptionV3, "load_state_dict", lambda self, state: None)
      model = module.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"],
                                                 feature_extractor_weights_path=empty)
    randomize(model, seed=0)
    path = empty.with_name("pt_inception-random.pth")
    torch.save(model.state_dict(), path)
    yield model, path


@pytest.fixture(scope="module")
def loaded(fidelity):
  return inception.load_inception(str(fidelity[1]))


def test_tf1_features_match_torch_fidelity(fidelity, loaded):
  """torch-fidelity's whole forward (TF1 resize, (x - 128)/128, the graph) against ours, square and non-square,
  up and down to 299; at 299 (two images, which must stay apart) the resize is the identity: the body alone."""
  import torch
  model, _ = fidelity
  images = [random_images(index, *size, batch=2 if size == (299, 299) else 1) for index, size in enumerate(SIZES)]
  with torch.no_grad():
    expected = [model(torch.from_numpy(x).permute(0, 3, 1, 2).contiguous())[0].numpy() for x in images]
  prepared = jnp.concatenate([jax.jit(inception.preprocess, static_argnums=1)(x, "tf1") for x in images])
  features = np.split(np.asarray(jax.jit(inception.InceptionV3().apply)({"params": loaded}, prepared)),
                      np.cumsum([len(x) for x in images])[:-1])
  for size, actual, reference in zip(SIZES, features, expected):
    assert np.mean(reference > 0) > 0.2, "degenerate reference features"
    assert relative_error(actual, reference) < 1e-5, size


def test_tf1_resize_is_bit_exact(fidelity):
  """Our TF1 resize against torch-fidelity's `interpolate_bilinear_2d_like_tensorflow1x`, to the bit."""
  import torch
  resize = importlib.import_module("torch_fidelity.interpolate_compat_tensorflow")
  for index, size in enumerate((*SIZES, (512, 400), (300, 37))):
    images = random_images(index, *size)
    expected = resize.interpolate_bilinear_2d_like_tensorflow1x(
        torch.from_numpy(images).permute(0, 3, 1, 2).float(), size=(299, 299), align_corners=False)
    actual = inception.resize_tf1(jnp.asarray(images, jnp.float32))
    np.testing.assert_array_equal(actual, expected.permute(0, 2, 3, 1).numpy(), err_msg=str(size))


def test_pytorch_fid_resize_matches_interpolate():
  """pytorch-fid: x/255, `F.interpolate(bilinear, align_corners=False)` (no antialias, also when shrinking), 2x-1."""
  torch = require_torch()
  for index, size in enumerate((*SIZES, (512, 400), (300, 37))):
    images = random_images(index, *size)
    scaled = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    expected = 2 * torch.nn.functional.interpolate(scaled, size=(299, 299), mode="bilinear", align_corners=False) - 1
    actual = inception.preprocess(jnp.asarray(images), "pytorch_fid")
    np.testing.assert_allclose(actual, expected.permute(0, 2, 3, 1).numpy(), atol=1e-6, err_msg=str(size))


def test_flops_per_image():
  """torchvision documents InceptionV3 at 5.71 G multiply-adds ("GFLOPS"); XLA's cost analysis, which skips
  the taps on padding, counts a little less."""
  flops = inception.flops_per_image()
  assert round(flops / 2e9, 2) == 5.71
  image = jax.ShapeDtypeStruct((1, 299, 299, 3), jnp.float32)
  lowered = jax.jit(inception.InceptionV3().apply).lower({"params": inception.abstract_params()}, image)
  assert 0.9 * flops < lowered.cost_analysis()["flops"] < flops


def test_random_weights_are_seeded():
  first, again, other = (inception.load_inception(None, seed=seed) for seed in (0, 0, 1))
  kernel = lambda params: params["Mixed_6b"]["branch7x7_2"]["kernel"]
  assert kernel(first).shape == (1, 7, 128, 128)
  np.testing.assert_array_equal(kernel(first), kernel(again))
  assert not np.array_equal(kernel(first), kernel(other))


def fidelity_state(fidelity):
  return {name: tensor.numpy() for name, tensor in fidelity[0].state_dict().items()}


def test_loader_names_bad_keys(fidelity):
  state = fidelity_state(fidelity)
  with pytest.raises(ConfigError, match=r"1 missing keys \['Mixed_7c.branch_pool.bn.running_var'\], 1 unexpected "
                                        r"keys \['AuxLogits.conv0.conv.weight'\]"):
    inception.params_from_state_dict({**{k: v for k, v in state.items() if k != "Mixed_7c.branch_pool.bn.running_var"},
                                      "AuxLogits.conv0.conv.weight": np.zeros(1)}, "test.pth")
  state["Conv2d_1a_3x3.conv.weight"] = np.zeros((32, 1, 3, 3))
  with pytest.raises(ConfigError, match=r"Conv2d_1a_3x3.conv.weight in test.pth has shape \(32, 1, 3, 3\); the "
                                        r"FID InceptionV3 needs \(32, 3, 3, 3\)"):
    inception.params_from_state_dict(state, "test.pth")


def test_loader_errors_without_torch_or_file(tmp_path, monkeypatch):
  with pytest.raises(ConfigError, match="does not exist"):
    inception.load_inception(str(tmp_path / "absent.pth"))
  (tmp_path / "weights.pth").write_bytes(b"")
  monkeypatch.setitem(sys.modules, "torch", None)
  with pytest.raises(ConfigError, match=r"needs torch: pip install torch --index-url .*/whl/cpu$"):
    inception.load_inception(str(tmp_path / "weights.pth"))


class QuietHandler(http.server.SimpleHTTPRequestHandler):
  def log_message(self, *args):
    pass


@pytest.fixture
def web_folder(tmp_path, monkeypatch):
  """(a folder served over http on localhost, its base URL); the user cache moved into tmp_path."""
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
  folder = tmp_path / "web"
  folder.mkdir()
  server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=folder))
  thread = threading.Thread(target=server.serve_forever, daemon=True)
  thread.start()
  yield folder, f"http://127.0.0.1:{server.server_address[1]}"
  server.shutdown()
  server.server_close()


def test_download_from_url_is_cached(fidelity, loaded, web_folder, tmp_path):
  folder, url = web_folder
  data = fidelity[1].read_bytes()
  name = f"pt_inception-{hashlib.sha256(data).hexdigest()[:8]}.pth"
  (folder / name).write_bytes(data)
  params = inception.load_inception(f"{url}/{name}")
  assert (tmp_path / "cache" / "pixelhdm_jax" / "inception" / name).is_file()
  jax.tree.map(np.testing.assert_array_equal, params, loaded)
  (folder / name).unlink()  # a second load reads the cache
  jax.tree.map(np.testing.assert_array_equal, inception.load_inception(f"{url}/{name}"), loaded)


def test_download_failures(web_folder, tmp_path):
  folder, url = web_folder
  (folder / "pt_inception-0123abcd.pth").write_bytes(b"not the weights")
  with pytest.raises(ConfigError, match="does not start with the 0123abcd its name promises"):
    inception.download(f"{url}/pt_inception-0123abcd.pth")
  assert not any((tmp_path / "cache").rglob("*.pth*"))
  with pytest.raises(ConfigError, match="failed .*404.*; fetch the file yourself and pass its local path"):
    inception.download(f"{url}/absent.pth")


def test_preprocess_refuses_bad_inputs():
  with pytest.raises(ValueError, match=r"resize='antialias' is not one of \('pytorch_fid', 'tf1'\)"):
    inception.preprocess(jnp.zeros((1, 8, 8, 3)), "antialias")
  with pytest.raises(ValueError, match=r"\(batch, height, width, 3\) uint8 values, got shape \(1, 3, 8, 8\)"):
    inception.preprocess(jnp.zeros((1, 3, 8, 8)))
