"""PixelHDM-JAX configuration: one file, four presets, every field overridable.

Pick a preset in the config string and override any field on the command line:

  python launch/train.py --config=configs/base.py:tiny --workdir=/tmp/pixelhdm_tiny
  python launch/train.py --config=configs/base.py:default --workdir=DIR \
      --config.train.batch_size=64 --config.model.attention=cudnn

Presets (parameter counts of the PixelHDM network, pinned by tests/models/test_model_params.py):
  tiny     CPU: 64-wide, 2 patch + 2 pixel blocks, random tiny Qwen3 and DINOv3, synthetic 32x32 shapes,
           batch 8, 6,000 steps, lr 5e-3 with a cosine decay, training times shifted toward noise
           (flow.time_shift=3), no frequency loss: the settings with which its samples show the prompt
           (docs/quality.md). Needs no download; under 3 minutes on a 2-core CPU VM (one compile, then ~40
           steps/s); writes checkpoints/, metrics.jsonl, tb/, samples/step_00006000.png and
           eval/step_00006000.json.
  small    44,731,507 (the original's 44,207,219 + a 1024 x 512 text projection): 512-wide, 8 + 1 blocks.
  default  356,364,355 parameters: the original's default (1024-wide, 16 + 4 blocks).
  large    677,535,267 (the original's 676,355,619 + a 1024 x 1152 text projection): 1152-wide, 26 + 4
           blocks, head_dim 72, mRoPE 16/28/28.

`validate(config)` (from `pixelhdm_jax.config`) rejects inconsistent settings; the launchers call it.
"""

import ml_collections

PRESETS = ("tiny", "small", "default", "large")


def _model(preset: str) -> ml_collections.ConfigDict:
  """The PixelHDM network (the original's presets: docs/original.md §1; head_dim = hidden / heads)."""
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
  # Pixel blocks' AdaLN: pre = the original (modulate the input, gate the output); post = PixelDiT's
  # post-modulation (modulate the output, no gates; docs/deviations.md). Checkpoints of one do not load in the other.
  m.pixel_adaln = "pre"
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
  # random: a tiny Qwen3 (width model.text_dim) from a fixed seed with the byte tokenizer, no download;
  # random_full: the same at Qwen3-0.6B's size (benchmarks, AOT compiles: launch/bench.py, launch/compile.py);
  # pretrained: a local Hugging Face Qwen3 directory (config.json, *.safetensors, tokenizer files) in `path`.
  t.source = "random" if preset == "tiny" else "pretrained"
  t.path = ""
  t.hub_id = "Qwen/Qwen3-0.6B"  # fetched only when `path` is empty and `allow_download` is True
  t.allow_download = False
  t.hidden_layer = -1  # HF hidden_states index: -1 = last_hidden_state (after the final norm), -2 = Z-Image's
  t.compute_dtype = "auto"
  # True: train on the caption encodings stored beside the prepared folder (launch/encode_text.py with the same
  # config) instead of running Qwen3 in the step; sample grids and evaluations still encode their prompts live.
  t.cache = False
  return t


def _dino(preset: str) -> ml_collections.ConfigDict:
  """The frozen DINOv3 ViT whose patch tokens are the iREPA targets (ViT-B/16 unless `tiny`)."""
  d = ml_collections.ConfigDict()
  # random: a tiny DINOv3 (32 wide, 2 layers, patch 16) from a fixed seed; random_full: ViT-B/16's size, random
  # (benchmarks, AOT compiles); pretrained: `path` is a local Hugging Face directory (config.json +
  # *.safetensors) or Meta's official .pth file.
  d.source = "random" if preset == "tiny" else "pretrained"
  d.path = ""
  d.hub_id = "facebook/dinov3-vitb16-pretrain-lvd1689m"  # gated on the hub; fetched only if allow_download
  d.allow_download = False
  d.compute_dtype = "auto"
  # True: the REPA targets are the patch features stored beside the prepared folder (launch/encode_teacher.py with
  # the same config) and DINOv3 does not run in the step; with data.random_crop or random_flip it runs live anyway.
  d.cache = False
  return d


def _flow(preset: str) -> ml_collections.ConfigDict:
  """Training-time flow matching (t = 0 noise, t = 1 clean): logit-normal t in [t_eps, 1 - t_eps]."""
  f = ml_collections.ConfigDict()
  f.p_mean = 0.0
  f.p_std = 1.0
  # 0: t covers [0, 1], every time a solver evaluates (t = 0 first, up to 1 - 1/N, image-to-image starts);
  # the original's 0.05 leaves the first and last sampling steps untrained (docs/deviations.md T9)
  f.t_eps = 0.0
  # fixed: s = time_shift for every size; resolution: s = sqrt(H W) / 256 per bucket (SD3's rule, as sample.*)
  f.time_shift_mode = "fixed"
  # s > 1 samples more noisy t: t / (t + s (1 - t)); 1 = off (the original). tiny: 3, so that more of its short run
  # trains the times where only the prompt tells the colours (docs/quality.md)
  f.time_shift = 3.0 if preset == "tiny" else 1.0
  return f


def _train(preset: str) -> ml_collections.ConfigDict:
  """The training run; every count is in optimizer steps (`optim.grad_accum_steps` micro-steps each)."""
  t = ml_collections.ConfigDict()
  t.batch_size = 8 if preset == "tiny" else 256  # global images per micro-step
  t.num_steps = 6_000 if preset == "tiny" else 500_000
  t.log_every = 100 if preset == "tiny" else 50  # console / TensorBoard / metrics.jsonl
  t.checkpoint_every = 2_000
  t.keep_checkpoints = 3
  t.sample_every = 0 if preset == "tiny" else 5_000  # grids of `sample_prompts` (none if empty); 0 = at the end only
  # tiny: in the synthetic captions' wording
  t.sample_prompts = ("a red circle on blue", "a yellow square on green") \
      if preset == "tiny" else ("a photo of a cat", "a watercolor painting of a lighthouse at dusk")
  t.sample_size = 32 if preset == "tiny" else 512  # square sample grids, pixels per side
  t.max_nonfinite_steps = 20  # consecutive skipped (non-finite) steps before training stops
  # Fine-tuning: a new run starts from the network (and EMA) weights of a workdir, an export or an imported original
  # checkpoint, with a fresh optimizer at step 0 (docs/training.md); "" = random init. A resumed run ignores it.
  t.init_from = ""
  # FID, FD-DINOv3, precision and recall of eval_num_images EMA samples at sample_size (docs/evaluation.md), every
  # eval_every steps and at the end; 0 = off. tiny: at the end (num_steps).
  t.eval_every = 6_000 if preset == "tiny" else 10_000
  t.eval_num_images = 32 if preset == "tiny" else 2_000
  t.profile_steps = ()  # (first, last): a JAX profiler trace of those optimizer steps in WORKDIR/profile; () = off
  return t


def _data(preset: str) -> ml_collections.ConfigDict:
  """Training data (`pixelhdm_jax/data`, docs/data.md): source, aspect-ratio buckets, example order, Grain."""
  d = ml_collections.ConfigDict()
  d.source = "synthetic" if preset == "tiny" else "folder"  # folder | tfds | synthetic
  d.path = ""  # folder: the --output of launch/prepare_data.py; tfds: the TFDS data_dir ("" = TFDS default)
  d.tfds_name = ""  # tfds: dataset name, e.g. "my_dataset" or "my_dataset/config:1.0.0"
  d.split = "train"  # folder and tfds: the split to train on
  d.image_feature = "image"  # tfds: name of the image feature
  d.caption_feature = "caption"  # tfds: name of the text feature
  d.synthetic_size = 4096  # synthetic: number of generated samples
  # Buckets as the original (step 4 x model.patch_size); the original's effective YAML is 256..512.
  d.min_resolution = 32 if preset == "tiny" else 256
  d.max_resolution = 32 if preset == "tiny" else 512  # tiny: one 32x32 bucket, a quarter of 64 px's cost
  d.max_aspect_ratio = 2.0
  d.allow_upscale = False  # False: each image in the best bucket it covers (never upscaled), smaller ones skipped
  d.order = "buffered_shuffle"  # random | sequential | buffered_shuffle (reshuffled every epoch)
  d.chunk_size = 4  # buffered_shuffle: buckets per shuffled chunk
  d.random_crop = False  # False = centre crop after the cover resize
  d.random_flip = False  # horizontal flip with p = 0.5
  d.caption_dropout = 0.1  # probability of the empty prompt (classifier-free guidance)
  d.jpeg_draft = True  # decode JPEGs at a reduced DCT scale when still >= the bucket (much faster)
  d.num_workers = 0 if preset == "tiny" else 8  # Grain worker processes per host (0 = in the main process)
  d.num_threads = 2  # reading threads per worker (PIL releases the GIL while decoding)
  d.prefetch = 2  # batches buffered per worker
  return d


def _sample(preset: str) -> ml_collections.ConfigDict:
  """Sampling: ODE solver, time grid and classifier-free guidance (`pixelhdm_jax/sample`; t = 0 is noise)."""
  s = ml_collections.ConfigDict()
  s.solver = "heun"  # euler | heun | dpmpp_2m | dpmpp_2s | ab2 (NFE of each: pixelhdm_jax/sample/solvers.py)
  s.num_steps = 50
  # fixed: s = time_shift (1 = the original's uniform grid); resolution: s = sqrt(H W) / 256 (SD3's rule), which the
  # learning benchmarks did not find better (docs/quality.md)
  s.time_shift_mode = "fixed"
  s.time_shift = 1.0  # s > 1 spends more steps near noise
  s.guidance_scale = 4.0  # w; 1 = no guidance (the unconditional pass is skipped)
  s.guidance_rescale = 0.0  # phi of rescaled CFG on v; 0 = off, 0.7 in Lin et al.
  # guide for t in [lo, hi) only, the conditional velocity elsewhere. tiny: the noisiest 30% only, where the prompt
  # sets the colours and layout; guiding the later steps too amplifies its pixel noise (docs/quality.md)
  s.guidance_interval = (0.0, 0.3) if preset == "tiny" else (0.0, 1.0)
  s.guidance_schedule = "constant"  # constant | linear | cosine | quadratic: w from guidance_scale at t = 0 ...
  s.guidance_min_scale = 1.0  # ... to guidance_min_scale at t = 1
  return s


def _evaluation(preset: str) -> ml_collections.ConfigDict:
  """Image-quality metrics (`pixelhdm_jax/evaluation`, docs/evaluation.md), in training and launch/evaluate.py."""
  e = ml_collections.ConfigDict()
  # pytorch-fid's pt_inception-2015-12-05-6726825d.pth (a local file or a URL); "" = random weights, and every
  # result says so (random_inception_weights: true): such an FID compares runs with each other only.
  e.inception_weights = ""
  e.inception_resize = "pytorch_fid"  # pytorch_fid (bilinear, as pytorch-fid) | tf1 (the TF graph's, torch-fidelity)
  # launch/evaluate.py reference output; "" = computed from config.data at the start of training (cached per key)
  e.reference = ""
  e.batch_size = 8 if preset == "tiny" else 64  # images per sampling and feature batch
  return e


def _loss(preset: str) -> ml_collections.ConfigDict:
  """Loss weights (`pixelhdm_jax/losses.py`): V-MSE + freq + iREPA + gamma-L2, as the original's defaults."""
  loss = ml_collections.ConfigDict()
  # JPEG-weighted 8x8 DCT loss on the velocity; 0 = off. tiny: off, its samples keep a speckle with it (docs/quality.md)
  loss.freq_lambda = 0.0 if preset == "tiny" else 1.0
  loss.freq_quality = 90  # JPEG quality of the weight tables
  loss.freq_ycbcr = True  # BT.601 YCbCr (luma/chroma tables) instead of RGB (luma table on every channel)
  loss.freq_transform = "dct2"  # dct2 | original (the original's D X D block transform, for parity checks only)
  loss.repa_lambda = 0.5  # iREPA weight; 0 = REPA off (no teacher, no projector use)
  loss.repa_early_stop = 250_000  # optimizer step from which REPA is off
  loss.gamma_l2_lambda = 1e-4  # penalty on the pixel blocks' AdaLN gammas
  return loss


def _optim(preset: str) -> ml_collections.ConfigDict:
  """ZClip -> AdamW with a schedule, gradient accumulation and weight EMA (`pixelhdm_jax/optim`).

  Steps are optimizer steps; `train.batch_size` images per micro-step, `grad_accum_steps` micro-steps per step.
  """
  o = ml_collections.ConfigDict()
  o.learning_rate = 5e-3 if preset == "tiny" else 1e-4  # peak lr
  # constant | cosine | stepped_cosine_restart (the original's), each after a linear warm-up: cosine to min_lr at
  # train.num_steps (docs/training.md).
  o.schedule = "cosine"
  o.warmup_steps = 10 if preset == "tiny" else 1000
  o.min_lr = 1e-5  # cosine: the final lr (at train.num_steps); stepped_cosine_restart: the global floor
  o.restart_cycle_steps = 10_000  # stepped_cosine_restart: steps per cycle (the original: one epoch)
  o.restart_cycle_min_lr = 5e-5  # stepped_cosine_restart: trough of the first cycle
  o.restart_decay_rate = 0.9  # stepped_cosine_restart: peak and trough scale per cycle
  o.b1 = 0.9
  o.b2 = 0.999
  o.eps = 1e-8
  o.weight_decay = 0.01  # on kernels only: no decay on norms, biases, scalar gains
  o.max_grad_norm = ml_collections.config_dict.placeholder(float)  # hard cap after ZClip; None = no cap
  o.grad_accum_steps = 1  # micro-steps per optimizer step (optax.MultiSteps; ZClip sees their mean gradient)
  o.ema_decay = 0.99 if preset == "tiny" else 0.999
  o.zclip = ml_collections.ConfigDict()
  o.zclip.variant = "zclip"  # zclip (published) | pixelhdm (the original's variant) | off (max_grad_norm only)
  o.zclip.alpha = 0.97  # EMA decay of the norm statistics (the original's variant used 0.99)
  o.zclip.z_threshold = 2.5
  o.zclip.warmup_steps = 25  # zclip: norms collected before clipping starts
  o.zclip.mode = "zscore"  # zclip: zscore | percentile
  o.zclip.clip_option = "adaptive_scaling"  # zclip, zscore mode: adaptive_scaling | mean
  o.zclip.clip_factor = 1.0  # zclip, adaptive_scaling: 0.5-0.9 clips harder
  o.zclip.skip_update_on_spike = False  # zclip: keep the statistics unchanged on spikes
  return o


def _mesh() -> ml_collections.ConfigDict:
  """Device mesh `data x fsdp x tensor` (one axis may be -1) and the logical-axis rules."""
  m = ml_collections.ConfigDict()
  m.shape = (1, -1, 1)
  # The batch is split fsdp-major: with ("data", "fsdp") XLA (jax 0.10.2, Shardy and GSPMD) computes wrong
  # rows on meshes where data, fsdp and tensor are all > 1 (tests/test_parallel.py, 2x2x2).
  m.logical_axis_rules = (
      ("batch", ("fsdp", "data")),
      ("activation_batch", ("fsdp", "data")),
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
      ("conv_height", None),
      ("conv_width", None),
      ("teacher_embed", "tensor"),
  )
  return m


def get_config(arg: str = "default") -> ml_collections.ConfigDict:
  """Returns the config of a preset (`tiny`, `small`, `default`, `large`)."""
  preset = arg or "default"
  if preset not in PRESETS:
    raise ValueError(f"unknown preset {preset!r} in the config string: choose one of {', '.join(PRESETS)} "
                     "(e.g. --config=configs/base.py:tiny)")
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.model = _model(preset)
  config.text = _text(preset)
  config.dino = _dino(preset)
  config.flow = _flow(preset)
  config.train = _train(preset)
  config.data = _data(preset)
  config.loss = _loss(preset)
  config.optim = _optim(preset)
  config.sample = _sample(preset)
  config.evaluation = _evaluation(preset)
  config.mesh = _mesh()
  return config
