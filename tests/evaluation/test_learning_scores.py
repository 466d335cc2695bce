"""The learning scores on images whose answers are known: the synthetic dataset's own drawings, flat images,
a photo against itself, and patterns with and without seams on the 16-pixel patch grid."""

import math

import numpy as np
import pytest
from PIL import Image, ImageDraw

from pixelhdm_jax.data.synthetic import COLOURS, SHAPES, SyntheticSource
from pixelhdm_jax.evaluation import learning_scores

PATCH = 16


def _drawn(count: int, size=(64, 64)):
  """(uint8 image, caption) of the first `count` training examples, drawn by the dataset itself."""
  source = SyntheticSource(4096)
  return [(np.asarray(image), caption) for image, caption in (source.example(i, size) for i in range(count))]


def test_the_captions_are_the_datasets_own_wording():
  captions = learning_scores.shape_captions()
  assert len(set(captions)) == 8 * 3 * 7
  assert {caption for _, caption in _drawn(300)} <= set(captions)
  assert learning_scores.parse_caption("a purple triangle on white") == ("purple", "triangle", "white")
  with pytest.raises(ValueError, match="not a synthetic caption"):
    learning_scores.parse_caption("a red circle on a blue background")


@pytest.mark.parametrize("size", [(64, 64), (32, 32), (64, 48)])
def test_training_images_score_full_marks_for_their_own_caption(size):
  scores = [learning_scores.score_shape_image(image, caption) for image, caption in _drawn(150, size)]
  assert all(s["background_accuracy"] == 1.0 and s["colour_accuracy"] == 1.0 for s in scores)
  assert np.mean([s["shape_iou"] for s in scores]) > 0.7
  assert min(s["shape_iou"] for s in scores) > 0.45  # the smallest triangles, pushed to a corner of their range
  # Off-centre squares fit a circle of another size better now and then, more so on the long side of 64x48.
  assert np.mean([s["shape_recognized"] for s in scores]) > 0.85


def test_training_images_score_zero_for_other_colours():
  for image, caption in _drawn(60):
    colour, shape, background = learning_scores.parse_caption(caption)
    other = next(c for c in COLOURS if c not in (colour, background))
    swapped = learning_scores.score_shape_image(image, f"a {other} {shape} on {other}")
    assert swapped == {"background_accuracy": 0.0, "colour_accuracy": 0.0, "shape_iou": 0.0,
                       "shape_recognized": 0.0}


def test_a_drawn_circle_is_recognized_as_a_circle_and_not_as_a_triangle():
  image = Image.new("RGB", (64, 64), COLOURS["blue"])
  ImageDraw.Draw(image).ellipse((14, 14, 50, 50), fill=COLOURS["red"])
  circle = learning_scores.score_shape_image(np.asarray(image), "a red circle on blue")
  triangle = learning_scores.score_shape_image(np.asarray(image), "a red triangle on blue")
  assert circle["shape_recognized"] == 1.0 and triangle["shape_recognized"] == 0.0
  assert circle["shape_iou"] > 0.9 > triangle["shape_iou"]


@pytest.mark.parametrize("shape", SHAPES)
def test_a_flat_image_has_no_shape(shape):
  flat = np.full((64, 64, 3), COLOURS["green"], np.uint8)
  scores = learning_scores.score_shape_image(flat, f"a white {shape} on green")
  assert scores == {"background_accuracy": 1.0, "colour_accuracy": 0.0, "shape_iou": 0.0, "shape_recognized": 0.0}


def test_colour_distance_counts_no_pixel_for_two_colours():
  names = list(COLOURS)
  closest = min(math.dist(COLOURS[a], COLOURS[b]) for i, a in enumerate(names) for b in names[i + 1:])
  assert closest > 2 * learning_scores.COLOUR_DISTANCE


def _photo(seed: int) -> np.ndarray:
  """A smooth 64x64 'photo': random low-frequency colours, bilinearly upsampled from 4x4."""
  coarse = np.random.default_rng(seed).integers(0, 256, (4, 4, 3), dtype=np.uint8)
  return np.asarray(Image.fromarray(coarse).resize((64, 64), Image.Resampling.BILINEAR))


def test_a_photo_is_nearest_itself_with_infinite_psnr():
  photos = np.stack([_photo(seed) for seed in range(5)])
  assert learning_scores.nearest_photo(photos[::-1], photos).tolist() == [4, 3, 2, 1, 0]
  assert np.all(np.isinf(learning_scores.psnr(photos, photos)))


def test_psnr_of_a_known_error():
  photo = _photo(0).astype(np.int16)
  off_by_ten = np.clip(photo + np.where(photo < 128, 10, -10), 0, 255).astype(np.uint8)  # |error| = 10 everywhere
  assert learning_scores.psnr(off_by_ten[None], photo.astype(np.uint8)[None])[0] == pytest.approx(
      20 * math.log10(255 / 10))


def _blocks(seed: int, shift: int = 0) -> np.ndarray:
  """A 64x64 mosaic of flat 16-pixel blocks in random colours, moved `shift` pixels right and down."""
  tiles = np.random.default_rng(seed).integers(0, 256, (5, 5, 3), dtype=np.uint8)
  mosaic = np.repeat(np.repeat(tiles, PATCH, axis=0), PATCH, axis=1)
  return mosaic[PATCH - shift:PATCH - shift + 64, PATCH - shift:PATCH - shift + 64]


def test_patch_grid_score_is_one_without_a_grid():
  noise = np.random.default_rng(0).integers(0, 256, (4, 64, 64, 3), dtype=np.uint8)
  assert learning_scores.patch_grid_score(noise, PATCH) == pytest.approx(1.0, abs=0.03)
  ramp = np.broadcast_to(np.arange(0, 256, 4, dtype=np.uint8)[None, :, None, None], (1, 64, 64, 3))
  assert learning_scores.patch_grid_score(ramp, PATCH) == pytest.approx(1.0)
  assert learning_scores.patch_grid_score(np.zeros((1, 64, 64, 3), np.uint8), PATCH) == 1.0


def test_patch_grid_score_sees_seams_on_the_patch_grid_only():
  rng = np.random.default_rng(1)
  on_grid = np.stack([_blocks(seed) for seed in range(3)]).astype(np.int16)
  noisy = np.clip(on_grid + rng.integers(-8, 9, on_grid.shape), 0, 255).astype(np.uint8)
  assert learning_scores.patch_grid_score(noisy, PATCH) > 5
  assert learning_scores.patch_grid_score(on_grid.astype(np.uint8), PATCH) == math.inf
  off_grid = np.stack([_blocks(seed, shift=PATCH // 2) for seed in range(3)])  # seams inside the patches
  assert learning_scores.patch_grid_score(off_grid, PATCH) == 0.0


def test_patch_grid_score_needs_a_boundary():
  with pytest.raises(ValueError, match="no patch boundary"):
    learning_scores.patch_grid_score(np.zeros((1, 16, 16, 3), np.uint8), PATCH)


def test_background_at_noise_is_zero_on_the_datasets_drawings_and_large_on_wrong_prompts():
  images, captions = zip(*_drawn(40, (32, 32)))
  images = np.stack(images)
  right = learning_scores.background_at_noise(images, list(captions))
  assert right == {"background_error_at_noise": 0.0, "border_noise_at_noise": 0.0}
  names = list(COLOURS)
  wrong = [f"{c} on {names[(names.index(b) + 1) % len(names)]}" for c, b in (caption.rsplit(" on ", 1)
                                                                          for caption in captions)]
  error = learning_scores.background_at_noise(images, wrong)["background_error_at_noise"]
  assert error > 2 * learning_scores.COLOUR_DISTANCE
  noisy = np.clip(images + np.random.default_rng(0).normal(0, 20, images.shape), 0, 255)
  scores = learning_scores.background_at_noise(noisy, list(captions))
  assert 15 < scores["border_noise_at_noise"] < 20 and scores["background_error_at_noise"] < 5
