"""Sources and preprocessing: synthetic shapes, any TFDS dataset, cover-resize / crop / flip, config checks."""

import io

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from configs import base
from pixelhdm_jax.config import ConfigError, validate
from pixelhdm_jax.data import AspectRatioBucket, SyntheticSource, TfdsSource, build_train_loader
from pixelhdm_jax.data.images import cover_crop, open_image
from pixelhdm_jax.data.synthetic import COLOURS
from pixelhdm_jax.encoders.tokenizers import ByteTokenizer


def test_synthetic_is_deterministic_and_the_caption_describes_the_pixels():
  source = SyntheticSource(50)
  for index in range(20):
    image, caption = source.example(index, (64, 48))
    again, same = SyntheticSource(50).example(index, (64, 48))
    np.testing.assert_array_equal(np.asarray(image), np.asarray(again))
    assert caption == same and len(caption.encode()) <= 32
    _, shape_colour, shape, _, background = caption.split()
    pixels = np.asarray(image)
    assert image.size == (64, 48) and tuple(pixels[0, 0]) == COLOURS[background]
    assert tuple(pixels[26, 32]) == COLOURS[shape_colour]  # near the centre (a triangle's centroid lies below)
  assert len({SyntheticSource(50).example(i, (32, 32))[1] for i in range(50)}) > 20
  ids = source.bucket_ids(AspectRatioBucket(32, 64, 16))
  np.testing.assert_array_equal(ids, SyntheticSource(50).bucket_ids(AspectRatioBucket(32, 64, 16)))
  assert set(ids.tolist()) == set(range(6))


def test_cover_crop_is_the_original_resize_and_centre_crop():
  columns = np.tile(np.repeat(np.arange(10, dtype=np.uint8) * 25, 10)[None, :, None], (50, 1, 3))
  image = Image.fromarray(columns)  # 100x50, ten 10-px columns of distinct grey
  out = cover_crop(image, (32, 32))
  # scale = max(32/100, 32/50) = 0.64 -> Lanczos to 64x32, centre crop from x = 16.
  expected = np.asarray(image.resize((64, 32), Image.Resampling.LANCZOS))[:, 16:48]
  np.testing.assert_array_equal(out, expected)
  np.testing.assert_array_equal(cover_crop(image, (32, 32), flip=True), expected[:, ::-1])
  np.testing.assert_array_equal(cover_crop(image.resize((32, 32)), (32, 32)), np.asarray(image.resize((32, 32))))
  crops = {cover_crop(image, (32, 32), np.random.default_rng(seed)).tobytes() for seed in range(8)}
  assert len(crops) > 2  # random offsets in [0, 32]


class CaptionedPhotos(tfds.core.GeneratorBasedBuilder):
  """A TFDS dataset with an encoded image feature and a caption under another name, as users bring."""
  VERSION = tfds.core.Version("1.0.0")
  code_path = None

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        "photo": tfds.features.Image(shape=(None, None, 3)), "text": tfds.features.Text()}))

  def _split_generators(self, dl_manager):
    return {"train": self._generate_examples()}

  def _generate_examples(self):
    for i in range(12):
      pixels = np.full((40 + 10 * i, 120 - 5 * i, 3), 20 * i, np.uint8)
      buffer = io.BytesIO()
      Image.fromarray(pixels).save(buffer, format="JPEG")
      yield i, {"photo": buffer.getvalue(), "text": f"photo {i}"}


def test_any_tfds_dataset_with_image_and_text(tmp_path, tiny_config):
  builder = CaptionedPhotos(data_dir=str(tmp_path), file_format="array_record")
  builder.download_and_prepare(download_dir=str(tmp_path / "downloads"))
  with pytest.raises(KeyError, match="has no feature 'caption'.*data.image_feature / data.caption_feature"):
    TfdsSource("captioned_photos", str(tmp_path), image_feature="photo")
  source = TfdsSource("captioned_photos", str(tmp_path), image_feature="photo", caption_feature="text")
  buckets = AspectRatioBucket(32, 64, 16)
  sizes = [(120 - 5 * i, 40 + 10 * i) for i in range(12)]
  records = [source.data_source[i] for i in range(12)]
  order = [int(r["text"].decode().split()[1]) for r in records]
  np.testing.assert_array_equal(source.bucket_ids(buckets), [buckets.bucket_for(*sizes[i]) for i in order])
  image, caption = source.example(0, (32, 32))
  assert caption == f"photo {order[0]}" and image.size[0] >= 32 and image.size[1] >= 32
  tiny_config.data.update(source="tfds", tfds_name="captioned_photos", path=str(tmp_path), image_feature="photo",
                          caption_feature="text", sampler="random")
  tiny_config.train.batch_size = 2
  batch = next(build_train_loader(tiny_config, ByteTokenizer(32)))
  width, height = buckets[int(batch["bucket_id"][0])]
  assert batch["images"].shape == (2, height, width, 3)


BAD_DATA = [
    ({"source": "web"}, r"data.source='web' is unknown"),
    ({"source": "tfds"}, r"data.source='tfds' needs data.tfds_name"),
    ({"min_resolution": 40}, r"data.min_resolution=40 is not a multiple of model.patch_size=16: use 32"),
    ({"min_resolution": 128, "max_resolution": 64}, r"data.min_resolution=128 exceeds data.max_resolution=64"),
    ({"max_aspect_ratio": 0.5}, r"data.max_aspect_ratio=0.5 must be >= 1"),
    ({"sampler": "shuffle"}, r"data.sampler='shuffle' is unknown"),
    ({"caption_dropout": 1.5}, r"data.caption_dropout=1.5 must be in \[0, 1\]"),
    ({"num_workers": -1}, r"data.num_workers must be an integer >= 0"),
    ({"prefetch": 0}, r"data.prefetch must be a positive integer"),
]


@pytest.mark.parametrize("overrides,message", BAD_DATA)
def test_data_config_errors(overrides, message):
  config = base.get_config("tiny")
  config.data.update(overrides)
  with pytest.raises(ConfigError, match=message):
    validate(config)


def test_folder_source_needs_a_path(tiny_config):
  tiny_config.data.source = "folder"
  with pytest.raises(ValueError, match="data.source='folder' needs data.path"):
    build_train_loader(tiny_config, ByteTokenizer(32))


def test_jpeg_draft_decodes_smaller_but_still_covers_the_bucket():
  encoded = io.BytesIO()
  Image.new("RGB", (400, 300), (200, 30, 30)).save(encoded, format="JPEG")
  drafted = open_image(encoded.getvalue(), (64, 48))
  assert drafted.size[0] < 400 and drafted.size[1] < 300  # decoded at a reduced DCT scale
  assert drafted.size[0] >= 64 and drafted.size[1] >= 48  # never below the bucket (no upscaling needed)
  assert open_image(encoded.getvalue()).size == (400, 300)
