"""InceptionV3 as FID uses it: the 2015-12-05 TensorFlow graph (pytorch-fid's `pt_inception-2015-12-05` weights).

The graph differs from torchvision's InceptionV3 where pytorch-fid's `FIDInception*` blocks patch it: average pools
leave the padding out of the mean, and the last block pools by max. BatchNorm runs in eval mode (eps 1e-3) with its
running statistics stored as params. Images go in as uint8 values (B, H, W, 3), are resized to 299x299 the way the
named tool does, scaled to [-1, 1] and mapped to the 2048-d pool features after Mixed_7c.
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import re
import shutil
import urllib.request
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from pixelhdm_jax.errors import ConfigError
from pixelhdm_jax.user_cache import user_cache_root

INPUT_SIZE = 299
FEATURE_DIM = 2048
BATCHNORM_EPS = 1e-3
RESIZES = ("pytorch_fid", "tf1")
# pytorch-fid's state-dict names: `<layer>.conv.weight` (OIHW) and `<layer>.bn.*` for each of our ConvBN params.
TORCH_SUFFIXES = {"kernel": "conv.weight", "scale": "bn.weight", "bias": "bn.bias", "mean": "bn.running_mean",
                  "var": "bn.running_var"}
IGNORED_KEYS = re.compile(r"fc\.(weight|bias)|.+\.num_batches_tracked")  # the classifier; a training counter
TORCH_INSTALL = "pip install torch --index-url https://download.pytorch.org/whl/cpu"


class ConvBN(nn.Module):
  """Convolution without bias, eval-mode BatchNorm with running statistics as params, ReLU (`BasicConv2d`)."""
  features: int
  kernel: tuple[int, int] = (1, 1)
  stride: int = 1
  padding: str = "SAME"

  @nn.compact
  def __call__(self, x):
    kernel = self.param("kernel", nn.initializers.he_normal(), (*self.kernel, x.shape[-1], self.features))
    scale = self.param("scale", nn.initializers.ones, (self.features,))
    bias = self.param("bias", nn.initializers.zeros, (self.features,))
    mean = self.param("mean", nn.initializers.zeros, (self.features,))
    var = self.param("var", nn.initializers.ones, (self.features,))
    y = jax.lax.conv_general_dilated(x, kernel, (self.stride, self.stride), self.padding,
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=jax.lax.Precision.HIGHEST)
    return nn.relu((y - mean) * (scale * jax.lax.rsqrt(var + BATCHNORM_EPS)) + bias)


def average_pool(x):
  """3x3 stride-1 average over the window's pixels inside the image (TensorFlow's pool, no padded zeros)."""
  return nn.avg_pool(x, (3, 3), padding=((1, 1), (1, 1)), count_include_pad=False)


def max_pool(x, stride: int = 2):
  return nn.max_pool(x, (3, 3), strides=(stride, stride), padding="VALID" if stride == 2 else ((1, 1), (1, 1)))


class InceptionA(nn.Module):
  """Mixed_5b-d: 1x1, 5x5, double 3x3 and average-pool branches at 35x35."""
  pool_features: int

  @nn.compact
  def __call__(self, x):
    b5 = ConvBN(64, (5, 5), name="branch5x5_2")(ConvBN(48, name="branch5x5_1")(x))
    b3 = ConvBN(64, name="branch3x3dbl_1")(x)
    b3 = ConvBN(96, (3, 3), name="branch3x3dbl_3")(ConvBN(96, (3, 3), name="branch3x3dbl_2")(b3))
    pool = ConvBN(self.pool_features, name="branch_pool")(average_pool(x))
    return jnp.concatenate([ConvBN(64, name="branch1x1")(x), b5, b3, pool], axis=-1)


class InceptionB(nn.Module):
  """Mixed_6a: 35x35 -> 17x17 by a strided 3x3, a strided double 3x3 and a max pool."""

  @nn.compact
  def __call__(self, x):
    b3 = ConvBN(384, (3, 3), 2, "VALID", name="branch3x3")(x)
    dbl = ConvBN(96, (3, 3), name="branch3x3dbl_2")(ConvBN(64, name="branch3x3dbl_1")(x))
    dbl = ConvBN(96, (3, 3), 2, "VALID", name="branch3x3dbl_3")(dbl)
    return jnp.concatenate([b3, dbl, max_pool(x)], axis=-1)


class InceptionC(nn.Module):
  """Mixed_6b-e: factorised 7x7 branches (1x7 then 7x1) at 17x17."""
  channels_7x7: int

  @nn.compact
  def __call__(self, x):
    c7 = self.channels_7x7
    b7 = ConvBN(c7, name="branch7x7_1")(x)
    b7 = ConvBN(192, (7, 1), name="branch7x7_3")(ConvBN(c7, (1, 7), name="branch7x7_2")(b7))
    dbl = ConvBN(c7, name="branch7x7dbl_1")(x)
    for index, (features, kernel) in enumerate(((c7, (7, 1)), (c7, (1, 7)), (c7, (7, 1)), (192, (1, 7))), start=2):
      dbl = ConvBN(features, kernel, name=f"branch7x7dbl_{index}")(dbl)
    pool = ConvBN(192, name="branch_pool")(average_pool(x))
    return jnp.concatenate([ConvBN(192, name="branch1x1")(x), b7, dbl, pool], axis=-1)


class InceptionD(nn.Module):
  """Mixed_7a: 17x17 -> 8x8 by a strided 3x3, a 7x7-then-strided-3x3 branch and a max pool."""

  @nn.compact
  def __call__(self, x):
    b3 = ConvBN(320, (3, 3), 2, "VALID", name="branch3x3_2")(ConvBN(192, name="branch3x3_1")(x))
    b7 = ConvBN(192, name="branch7x7x3_1")(x)
    b7 = ConvBN(192, (7, 1), name="branch7x7x3_3")(ConvBN(192, (1, 7), name="branch7x7x3_2")(b7))
    b7 = ConvBN(192, (3, 3), 2, "VALID", name="branch7x7x3_4")(b7)
    return jnp.concatenate([b3, b7, max_pool(x)], axis=-1)


class InceptionE(nn.Module):
  """Mixed_7b/c: 3x3 branches split into parallel 1x3 and 3x1; Mixed_7c pools by max (the graph's quirk)."""
  max_pool_branch: bool = False

  @nn.compact
  def __call__(self, x):
    b3 = ConvBN(384, name="branch3x3_1")(x)
    dbl = ConvBN(384, (3, 3), name="branch3x3dbl_2")(ConvBN(448, name="branch3x3dbl_1")(x))
    pooled = max_pool(x, stride=1) if self.max_pool_branch else average_pool(x)
    return jnp.concatenate([
        ConvBN(320, name="branch1x1")(x),
        ConvBN(384, (1, 3), name="branch3x3_2a")(b3), ConvBN(384, (3, 1), name="branch3x3_2b")(b3),
        ConvBN(384, (1, 3), name="branch3x3dbl_3a")(dbl), ConvBN(384, (3, 1), name="branch3x3dbl_3b")(dbl),
        ConvBN(192, name="branch_pool")(pooled)], axis=-1)


class InceptionV3(nn.Module):
  """The FID InceptionV3 body: (B, 299, 299, 3) float32 in [-1, 1] -> (B, 2048) pool features."""

  @nn.compact
  def __call__(self, x):
    x = ConvBN(32, (3, 3), 2, "VALID", name="Conv2d_1a_3x3")(x)
    x = ConvBN(32, (3, 3), padding="VALID", name="Conv2d_2a_3x3")(x)
    x = max_pool(ConvBN(64, (3, 3), name="Conv2d_2b_3x3")(x))
    x = ConvBN(80, name="Conv2d_3b_1x1")(x)
    x = max_pool(ConvBN(192, (3, 3), padding="VALID", name="Conv2d_4a_3x3")(x))
    for name, pool_features in (("Mixed_5b", 32), ("Mixed_5c", 64), ("Mixed_5d", 64)):
      x = InceptionA(pool_features, name=name)(x)
    x = InceptionB(name="Mixed_6a")(x)
    for name, channels in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160), ("Mixed_6e", 192)):
      x = InceptionC(channels, name=name)(x)
    x = InceptionD(name="Mixed_7a")(x)
    x = InceptionE(name="Mixed_7b")(x)
    x = InceptionE(max_pool_branch=True, name="Mixed_7c")(x)
    return jnp.mean(x, axis=(1, 2))


def _tf1_sample_points(in_size: int, out_size: int):
  """TensorFlow 1.x `resize_bilinear` (align_corners=False, no half-pixel centres): source rows lo/hi and the
  weight of hi, for output index i at source coordinate i * in/out, computed in float32 as TF does."""
  coords = np.arange(out_size, dtype=np.float32) * np.float32(in_size / out_size)
  low = np.floor(coords).astype(np.int32)
  return low, np.minimum(low + 1, in_size - 1), coords - low.astype(np.float32)


def resize_tf1(x, size: int = INPUT_SIZE):
  """Bilinear resize of (B, H, W, C) as TensorFlow 1.x does (the FID graph's own resize, used by the TF and
  ADM-style evaluators and torch-fidelity); no antialiasing."""
  row_low, row_high, row_weight = _tf1_sample_points(x.shape[1], size)
  col_low, col_high, col_weight = _tf1_sample_points(x.shape[2], size)

  def across_columns(rows):
    left, right = rows[:, :, col_low], rows[:, :, col_high]
    return left + (right - left) * col_weight[:, None]

  top, bottom = across_columns(x[:, row_low]), across_columns(x[:, row_high])
  return top + (bottom - top) * row_weight[:, None, None]


def preprocess(images, resize: str = "pytorch_fid"):
  """uint8-valued (B, H, W, 3) images -> float32 (B, 299, 299, 3) in [-1, 1], as the named tool prepares them.

  `pytorch_fid`: x/255, bilinear resize with half-pixel centres and no antialiasing (`F.interpolate`,
  align_corners=False), then 2x - 1. `tf1`: the TF graph's resize (`resize_tf1`), then (x - 128)/128.
  """
  if resize not in RESIZES:
    raise ValueError(f"resize={resize!r} is not one of {RESIZES}")
  if images.ndim != 4 or images.shape[-1] != 3:
    raise ValueError(f"images must be (batch, height, width, 3) uint8 values, got shape {images.shape}")
  x = images.astype(jnp.float32)
  if resize == "tf1":
    return (resize_tf1(x) - 128.0) / 128.0
  x = x / 255.0
  if x.shape[1:3] != (INPUT_SIZE, INPUT_SIZE):
    x = jax.image.resize(x, (x.shape[0], INPUT_SIZE, INPUT_SIZE, 3), "bilinear", antialias=False)
  return 2.0 * x - 1.0


def pool_features(params: Any, images, resize: str = "pytorch_fid"):
  """(B, 2048) float32 FID features of uint8-valued (B, H, W, 3) images; pure and batch-leading, so it can be
  jitted (`resize` static) with the batch sharded over any mesh axes."""
  return InceptionV3().apply({"params": params}, preprocess(images, resize))


def abstract_params() -> Any:
  """The params' shapes and dtypes (`jax.ShapeDtypeStruct`s), without computing anything."""
  image = jax.ShapeDtypeStruct((1, INPUT_SIZE, INPUT_SIZE, 3), jnp.float32)
  return jax.eval_shape(InceptionV3().init, jax.random.key(0), image)["params"]


def random_params(seed: int = 0) -> Any:
  """Seeded random weights (He-normal kernels, identity BatchNorm), drawn with numpy: a stand-in when no checkpoint
  is given, whose features are not comparable with published FIDs. (A jitted Flax init compiles for ~15 s on CPU.)"""
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    if path[-1].key != "kernel":
      return np.full(leaf.shape, 1.0 if path[-1].key in ("scale", "var") else 0.0, np.float32)
    fan_in = np.prod(leaf.shape[:-1])
    return rng.standard_normal(leaf.shape, dtype=np.float32) * np.float32(np.sqrt(2.0 / fan_in))

  return jax.tree_util.tree_map_with_path(draw, abstract_params())


def flops_per_image() -> int:
  """Convolution FLOPs of one 299x299 forward (2 * kh * kw * Cin * Cout * Hout * Wout summed over the 94 convs;
  pools, BatchNorm and the resize are left out), counted from the shapes of an abstract trace."""
  counts = {}  # by module path: Flax calls the interceptor twice for a compact `__call__`

  def count_conv(call, args, kwargs, context):
    out = call(*args, **kwargs)
    if isinstance(context.module, ConvBN) and context.method_name == "__call__":
      kh, kw = context.module.kernel
      counts[context.module.path] = 2 * kh * kw * args[0].shape[-1] * out.shape[-1] * out.shape[1] * out.shape[2]
    return out

  image = jax.ShapeDtypeStruct((1, INPUT_SIZE, INPUT_SIZE, 3), jnp.float32)
  with nn.intercept_methods(count_conv):
    jax.eval_shape(InceptionV3().apply, {"params": abstract_params()}, image)
  return sum(counts.values())


def load_inception(source: str | None, *, seed: int = 0) -> Any:
  """Params from pytorch-fid's `pt_inception-2015-12-05-6726825d.pth` (a local path, or an http(s) URL fetched
  once into the user cache). `source=None` gives `random_params(seed)`: label such results "random Inception
  weights", their FIDs are not comparable with published numbers."""
  if source is None:
    return random_params(seed)
  path = download(source) if source.startswith(("http://", "https://")) else pathlib.Path(source).expanduser()
  return params_from_state_dict(read_state_dict(path), source)


def read_state_dict(path: pathlib.Path) -> dict[str, np.ndarray]:
  """A `.pth` state dict as numpy arrays, read by torch with `weights_only=True` (torch is needed only here)."""
  if not path.is_file():
    raise ConfigError(f"Inception checkpoint {str(path)!r} does not exist")
  try:
    import torch
  except ImportError:
    raise ConfigError(f"reading Inception weights from {str(path)!r} needs torch: {TORCH_INSTALL}") from None
  state = torch.load(path, map_location="cpu", weights_only=True)
  if not isinstance(state, Mapping):
    raise ConfigError(f"{str(path)!r} holds a {type(state).__name__}, not a state dict of tensors")
  return {name: tensor.float().numpy() for name, tensor in state.items()}


def _torch_name(path) -> str:
  *layers, leaf = (key.key for key in path)
  return ".".join([*layers, TORCH_SUFFIXES[leaf]])


def params_from_state_dict(state: Mapping[str, np.ndarray], where: str) -> Any:
  """pytorch-fid's state-dict names -> our params (conv OIHW -> HWIO); the classifier `fc.*` is ignored. Missing,
  unexpected and misshapen keys are a `ConfigError` naming them."""
  abstract = abstract_params()
  expected = {_torch_name(path): leaf for path, leaf in jax.tree_util.tree_leaves_with_path(abstract)}
  missing = sorted(set(expected) - set(state))
  unexpected = sorted(name for name in state if name not in expected and not IGNORED_KEYS.fullmatch(name))
  if missing or unexpected:
    raise ConfigError(f"{where} is not pytorch-fid's InceptionV3 state dict: {len(missing)} missing keys "
                      f"{missing[:4]}, {len(unexpected)} unexpected keys {unexpected[:4]}")

  def take(path, leaf):
    name = _torch_name(path)
    value = np.asarray(state[name], np.float32)
    is_kernel = path[-1].key == "kernel"
    torch_shape = (leaf.shape[3], leaf.shape[2], *leaf.shape[:2]) if is_kernel else leaf.shape
    if value.shape != torch_shape:
      raise ConfigError(f"{name} in {where} has shape {value.shape}; the FID InceptionV3 needs {torch_shape}")
    return value.transpose(2, 3, 1, 0) if is_kernel else value

  return jax.tree_util.tree_map_with_path(take, abstract)


def download(url: str) -> pathlib.Path:
  """`url`'s file in the user cache (`<cache>/inception/<name>`), fetched once. A name ending in `-<hex>.<ext>`
  (torch hub's convention, as in `pt_inception-2015-12-05-6726825d.pth`) must match the file's SHA-256 prefix."""
  target = user_cache_root() / "inception" / url.rsplit("/", 1)[-1]
  if target.is_file():
    return target
  target.parent.mkdir(parents=True, exist_ok=True)
  partial = target.with_name(target.name + ".partial")
  try:
    with urllib.request.urlopen(url) as response, partial.open("wb") as file:
      shutil.copyfileobj(response, file)
  except OSError as error:
    partial.unlink(missing_ok=True)
    raise ConfigError(f"downloading Inception weights from {url} failed ({error}); fetch the file yourself and "
                      "pass its local path") from error
  expected = re.search(r"-([0-9a-f]{8,64})\.\w+$", target.name)
  digest = hashlib.sha256(partial.read_bytes()).hexdigest()
  if expected and not digest.startswith(expected.group(1)):
    partial.unlink()
    raise ConfigError(f"{url} downloaded with SHA-256 {digest[:16]}..., which does not start with the "
                      f"{expected.group(1)} its name promises: a corrupt or different file")
  os.replace(partial, target)
  return target
