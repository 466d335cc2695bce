"""PixelHDM-JAX configuration: one file, four presets, every field overridable.

Pick a preset in the config string and override any field on the command line:

  python launch/train.py --config=configs/base.py:tiny --workdir=/tmp/pixelhdm_tiny
  python launch/train.py --config=configs/base.py:default --workdir=DIR \
      --config.train.batch_size=64 --config.model.attention=cudnn

Presets (parameter counts of the PixelHDM network, pinned by tests/test_model_params.py):
  tiny     CPU, seconds per step: 64-wide, 2 patch + 2 pixel blocks, random tiny Qwen3 and
           DINOv3, synthetic 32..64 px data. Needs no download.
  small    44M (+0.5M text projection): 512-wide, 8 + 1 blocks, Qwen3-0.6B.
  default  356,364,355 parameters: the original's default (1024-wide, 16 + 4 blocks).
  large    676M: 1152-wide, 26 + 4 blocks, head_dim 72, mRoPE 16/28/28.

`validate(config)` (from `pixelhdm_jax.config`) rejects inconsistent settings; the launchers call it.
"""

import ml_collections

from pixelhdm_jax.config import validate  # noqa: F401  (re-exported for `configs.base.validate`)

PRESETS = ("tiny", "small", "default", "large")


def _model(preset: str) -> ml_collections.ConfigDict:
  """The PixelHDM network (`reference/original_pytorch.md` §1.1-1.2; head_dim = hidden / heads)."""
  m = ml_collections.ConfigDict()
  m.hidden_dim = 1024
  m.pixel_dim = 16
  m.patch_size = 16
  m.patch_layers = 16
  m.pixel_layers = 4
  m.num_heads = 16
  m.num_kv_heads = 4
  m.mlp_ratio = 3.0
  m.bottleneck_dim = 64
  m.time_embed_dim = 256
  # mRoPE split of head_dim over (text position, patch row, patch column); must sum to head_dim.
  m.mrope_split = (16, 24, 24)
  m.mrope_theta = 10000.0
  # Largest position on each mRoPE axis (the original's tables): text tokens, patch rows, patch columns.
  m.mrope_max_text_len = 511
  m.mrope_max_height = 128
  m.mrope_max_width = 128
  m.repa_align_layer = 8  # 1-based patch block whose output feeds iREPA.
  m.text_dim = 1024  # width of the text encoder's hidden states; a projection is learned if != hidden_dim
  m.use_pooled_text = True  # add the pooled (last valid token) text vector to s_cond, as the original
  m.compute_dtype = "auto"  # auto = bfloat16 on GPU/TPU, float32 on CPU
  m.attention = "auto"  # xla | cudnn | pallas_gpu | splash | auto
  m.scan_layers = True
  m.remat_policy = "full"  # none | full | dots | dots_no_batch | save_attention
  if preset == "tiny":
    m.update(hidden_dim=64, pixel_dim=4, patch_layers=2, pixel_layers=2, num_heads=4, num_kv_heads=2,
             bottleneck_dim=32, time_embed_dim=64, mrope_split=(4, 6, 6), repa_align_layer=1, text_dim=64,
             remat_policy="none")
  elif preset == "small":
    m.update(hidden_dim=512, patch_layers=8, pixel_layers=1, num_heads=8, num_kv_heads=2)
  elif preset == "large":
    m.update(hidden_dim=1152, patch_layers=26, num_heads=16, num_kv_heads=4, mrope_split=(16, 28, 28))
  return m


def _text(preset: str) -> ml_collections.ConfigDict:
  """Text conditioning: prompts are padded (right) to `max_length` tokens and always masked."""
  t = ml_collections.ConfigDict()
  t.max_length = 32 if preset == "tiny" else 256
  return t


def _train(preset: str) -> ml_collections.ConfigDict:
  """The training run: global batch size (images per optimizer micro-step) and length in optimizer steps."""
  t = ml_collections.ConfigDict()
  t.batch_size = 8 if preset == "tiny" else 256
  t.num_steps = 300 if preset == "tiny" else 500_000
  return t


def _mesh() -> ml_collections.ConfigDict:
  """Device mesh `data x fsdp x tensor` (one axis may be -1) and the logical-axis rules."""
  m = ml_collections.ConfigDict()
  m.shape = (1, -1, 1)
  m.logical_axis_rules = (
      ("batch", ("data", "fsdp")),
      ("activation_batch", ("data", "fsdp")),
      ("activation_length", None),
      ("activation_embed", None),
      ("activation_heads", "tensor"),
      ("activation_kv_heads", "tensor"),
      ("activation_mlp", "tensor"),
      ("embed", "fsdp"),
      ("mlp", "tensor"),
      ("q_heads", "tensor"),
      ("kv_heads", "tensor"),
      ("adaln", "tensor"),
      ("pixel_features", "tensor"),
      ("vocab", "tensor"),
      ("embed_out", "tensor"),
      ("head_dim", None),
      ("gate", None),
      ("norm", None),
      ("layers", None),
      ("text_embed", None),
      ("patch_pixels", None),
      ("bottleneck", None),
      ("time_freq", None),
      ("rgb", None),
      ("pixel_dim", None),
      ("pixel_adaln", None),
      ("pixel_mlp", None),
  )
  return m


def get_config(arg: str = "default") -> ml_collections.ConfigDict:
  """Returns the config of a preset (`tiny`, `small`, `default`, `large`)."""
  preset = arg or "default"
  if preset not in PRESETS:
    raise ValueError(f"unknown preset {preset!r} in the config string: choose one of {', '.join(PRESETS)} "
                     "(e.g. --config=configs/base.py:tiny)")
  config = ml_collections.ConfigDict()
  config.preset = preset
  config.seed = 0
  config.model = _model(preset)
  config.text = _text(preset)
  config.train = _train(preset)
  config.mesh = _mesh()
  return config
