"""The sampling pipeline on the tiny preset: determinism, batch splits, img2img, guidance, errors, sharding."""

import flax.linen as nn
import jax
import numpy as np
import pytest

from configs import base
from pixelhdm_jax import parallel
from pixelhdm_jax.encoders.text import build_text_encoder
from pixelhdm_jax.models.pixelhdm import PixelHDM, abstract_params
from pixelhdm_jax.sample.guidance import Guidance
from pixelhdm_jax.sample.images import image_grid
from pixelhdm_jax.sample.pipeline import Pipeline
from pixelhdm_jax.sample.request import SampleRequest, tail_steps

PROMPTS = ["a red circle", "a blue square"]
FAST = dict(height=32, width=32, num_steps=2, solver="euler", num_images_per_prompt=2)


def request(prompts=PROMPTS, **options) -> SampleRequest:
  """A quick request (32x32, 2 Euler steps, 2 images per prompt) with `options` on top."""
  return SampleRequest(prompts, **{**FAST, **options})


def random_params(model, seed: int = 0):
  """Network params drawn N(0, 0.1^2) everywhere, so every input (text included) changes the output."""
  leaves, tree = jax.tree.flatten(nn.unbox(abstract_params(model)))

  @jax.jit
  def draw(key):
    keys = jax.random.split(key, len(leaves))
    return tree.unflatten([0.1 * jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves)])
  return draw(jax.random.key(seed))


@pytest.fixture(scope="module")
def pipeline():
  config = base.get_config("tiny")
  text_encoder, text_params = build_text_encoder(config)
  return Pipeline(config, random_params(PixelHDM.from_config(config.model)), text_encoder, text_params)


@pytest.fixture(scope="module")
def reference(pipeline):
  """Text-to-image of PROMPTS x 2 with seed 0 in one batch of 4 (guidance 4.0 from the config)."""
  return pipeline.generate(request(seed=0))


def _max_difference(a, b) -> int:
  return int(np.abs(a.astype(np.int32) - b.astype(np.int32)).max())


def test_same_seed_same_images_other_seed_other_images(pipeline, reference):
  assert reference.shape == (4, 32, 32, 3) and reference.dtype == np.uint8
  np.testing.assert_array_equal(pipeline.generate(request(seed=0)), reference)
  assert _max_difference(pipeline.generate(request(seed=1)), reference) > 10
  assert all(_max_difference(reference[i], reference[j]) > 10 for i in range(4) for j in range(i))


def test_images_do_not_depend_on_the_batch_split(pipeline, reference):
  # Batches of 3 and 1 (padded to 3) against one batch of 4.
  np.testing.assert_array_equal(pipeline.generate(request(seed=0, batch_size=3)), reference)


def test_image_to_image_strength_zero_is_the_input_and_one_is_text_to_image(pipeline, reference):
  init = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
  kept = pipeline.generate(request(init_image=init, strength=0.0))
  np.testing.assert_array_equal(kept, np.broadcast_to(init, kept.shape))
  np.testing.assert_array_equal(pipeline.generate(request(init_image=init, strength=1.0)), reference)


def test_tail_steps_keep_the_text_to_image_density():
  assert [tail_steps(50, s, 1.0) for s in (0.0, 0.01, 0.5, 1.0)] == [0, 1, 25, 50]
  # shift 3 puts t = 0.5 at 3/4 of the unshifted grid: a quarter of the steps for the clean half.
  assert tail_steps(40, 1.0, 3.0) == 40 and tail_steps(40, 0.5, 3.0) == 10


def test_guidance_scale_one_is_no_guidance_and_negative_prompts_matter(pipeline, reference):
  unguided = pipeline.generate(request(guidance=Guidance(scale=1.0)))  # conditional pass only
  # Both passes, but no step time falls in the guidance interval: the conditional velocity everywhere.
  stacked = pipeline.generate(request(guidance=Guidance(scale=4.0, interval=(0.999, 1.0))))
  assert _max_difference(unguided, stacked) <= 1
  np.testing.assert_array_equal(pipeline.generate(request(guidance=Guidance(scale=1.0), negative_prompt="noise")),
                                unguided)
  assert _max_difference(unguided, reference) > 1  # the random network's text path is weak
  assert _max_difference(pipeline.generate(request(negative_prompt="a green circle")), reference) > 1


@pytest.mark.parametrize("prompts, kwargs, message", [
    (PROMPTS, dict(height=40), "height=40 is not a positive multiple of the patch size 16: use 32 or 48"),
    (PROMPTS, dict(width=16 * 129), "width=2064 is 129 patches but the mRoPE table of the model holds 128 per side"),
    (PROMPTS, dict(init_image=np.zeros((32, 32, 3), np.uint8), strength=1.5), r"strength=1.5 must be in \[0, 1\]"),
    (PROMPTS, dict(init_image=np.zeros((32, 32, 3), np.uint8), strength=-0.1), r"strength=-0.1 must be in \[0, 1\]"),
    (PROMPTS, dict(strength=0.5), "strength is for image-to-image: pass an init_image too"),
    (PROMPTS, dict(solver="dpm_pp"), "unknown solver 'dpm_pp': choose one of euler, heun"),
    (PROMPTS, dict(num_steps=0), "num_steps must be a positive integer, got 0"),
    (PROMPTS, dict(negative_prompt=["x"]), "got 1 negative prompts for 2 prompts"),
    ([], {}, "prompts is empty: pass at least one prompt"),
    ("a cat", {}, "prompts must be a list of strings"),
])
def test_invalid_requests_name_the_problem(pipeline, prompts, kwargs, message):
  with pytest.raises(ValueError, match=message):
    pipeline.generate(SampleRequest(prompts, **kwargs))


def test_sharded_equals_unsharded(pipeline, reference):
  mesh = jax.make_mesh((2, 2, 2), parallel.MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * 3)
  rules = parallel.logical_rules(pipeline.config.mesh)
  params, _ = parallel.place_params(pipeline.params, abstract_params(pipeline.model), mesh, rules)
  text_params, _ = parallel.place_params(pipeline.text_params, pipeline.text_encoder.abstract_params(), mesh, rules)
  sharded = Pipeline(pipeline.config, params, pipeline.text_encoder, text_params, mesh=mesh)
  assert _max_difference(sharded.generate(request(seed=0)), reference) == 0


def test_image_grid_rows_of_columns():
  images = np.arange(3, dtype=np.uint8)[:, None, None, None] * np.ones((3, 2, 2, 3), np.uint8)
  grid = np.asarray(image_grid(images, columns=2))
  assert grid.shape == (4, 4, 3)
  np.testing.assert_array_equal(grid[::2, ::2, 0], [[0, 1], [2, 0]])


def test_seed_and_guidance_scale_do_not_recompile():
  """The sampling loop compiles once per shape/solver/steps; the seed and the guidance scale are inputs."""
  config = base.get_config("tiny")
  fresh = Pipeline(config, random_params(PixelHDM.from_config(config.model)), *build_text_encoder(config))
  for seed, scale in ((0, 4.0), (1, 5.0), (2, 2.5)):
    fresh.generate(request(seed=seed, guidance=Guidance(scale=scale)))
  assert fresh._sample_batch._cache_size() == 1
