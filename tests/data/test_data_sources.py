"""Sources and preprocessing: synthetic shapes, any TFDS dataset (and its image-size cache), cover-resize / crop /
flip, config checks."""

import io
import re

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from configs import base
from pixelhdm_jax.config import validate
from pixelhdm_jax.data import AspectRatioBucket, SyntheticSource, TfdsSource, build_train_loader
from pixelhdm_jax.data.images import cover_crop, open_image
from pixelhdm_jax.data.sources import size_cache_dir
from pixelhdm_jax.data.synthetic import COLOURS
from pixelhdm_jax.encoders.tokenizers import ByteTokenizer
from pixelhdm_jax.errors import ConfigError


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


@pytest.fixture(autouse=True)
def size_cache(tmp_path, monkeypatch):
  """Every test here caches TFDS image sizes under tmp_path, never in the user's ~/.cache."""
  monkeypatch.setenv("PIXELHDM_CACHE_DIR", str(tmp_path / "cache"))
  return tmp_path / "cache" / "image_sizes"


@pytest.fixture(scope="module")
def photos_dir(tmp_path_factory):
  """A TFDS data_dir holding `captioned_photos` as ArrayRecord (built once for the module)."""
  data_dir = tmp_path_factory.mktemp("tfds")
  builder = CaptionedPhotos(data_dir=str(data_dir), file_format="array_record")
  builder.download_and_prepare(download_dir=str(data_dir / "downloads"))
  return str(data_dir)


def photos(data_dir: str, **kwargs) -> TfdsSource:
  return TfdsSource("captioned_photos", data_dir, image_feature="photo", caption_feature="text", **kwargs)


def record_sizes(source: TfdsSource) -> np.ndarray:
  """(width, height) of each record in stored order, known from the index in its caption."""
  order = [int(source.data_source[i]["text"].decode().split()[1]) for i in range(len(source))]
  return np.array([(120 - 5 * i, 40 + 10 * i) for i in order])


def test_any_tfds_dataset_with_image_and_text(photos_dir, tiny_config):
  with pytest.raises(KeyError, match="has no feature 'caption'.*data.image_feature / data.caption_feature"):
    TfdsSource("captioned_photos", photos_dir, image_feature="photo")
  source = photos(photos_dir)
  buckets = AspectRatioBucket(32, 64, 16)
  sizes = record_sizes(source)
  np.testing.assert_array_equal(source.bucket_ids(buckets), [buckets.bucket_for(*size) for size in sizes])
  image, caption = source.example(0, (32, 32))
  assert caption == source.data_source[0]["text"].decode() and image.size[0] >= 32 and image.size[1] >= 32
  tiny_config.data.update(source="tfds", tfds_name="captioned_photos", path=photos_dir, image_feature="photo",
                          caption_feature="text", order="random")
  tiny_config.train.batch_size = 2
  batch = next(build_train_loader(tiny_config, ByteTokenizer(32)))
  width, height = buckets[int(batch["bucket_id"][0])]
  assert batch["images"].shape == (2, height, width, 3)


def no_header_reads(self):
  raise AssertionError("the image headers were read again")


def test_image_sizes_are_cached_so_a_restart_reads_no_header(photos_dir, size_cache, monkeypatch):
  buckets = AspectRatioBucket(32, 64, 16)
  ids = photos(photos_dir).bucket_ids(buckets)
  [path] = size_cache.iterdir()  # one .npy file, no temp file left behind
  assert path.suffix == ".npy" and "captioned_photos-1.0.0-train" in path.name
  monkeypatch.setattr(TfdsSource, "_read_sizes", no_header_reads)
  source = photos(photos_dir)
  np.testing.assert_array_equal(source.bucket_ids(buckets), ids)
  sizes = record_sizes(source)
  np.testing.assert_array_equal(np.load(path), sizes)
  other = AspectRatioBucket(32, 128, 16)  # sizes, not ids, are cached: new bucket settings reuse them
  np.testing.assert_array_equal(source.bucket_ids(other), other.assign(sizes[:, 0], sizes[:, 1]))
  with pytest.raises(AssertionError, match="headers were read again"):  # another split is another cache file
    photos(photos_dir, split="train[:6]").bucket_ids(buckets)


CORRUPT_CACHES = [
    (lambda path: path.write_bytes(b"not a .npy file"), r"unreadable image-size cache"),
    (lambda path: path.write_bytes(path.read_bytes()[:-40]), r"unreadable image-size cache"),
    (lambda path: np.save(path, np.zeros((11, 2), np.int64)), r"holds int64 \(11, 2\), not \(12, 2\)"),
    (lambda path: np.save(path, np.zeros((12, 2))), r"holds float64 \(12, 2\)"),
    (lambda path: np.save(path, -np.ones((12, 2), np.int64)), r"not \(12, 2\) sizes >= 0"),
]


@pytest.mark.parametrize("corrupt,message", CORRUPT_CACHES,
                         ids=["garbage", "truncated", "too_short", "float", "negative"])
def test_a_broken_size_cache_is_logged_read_again_and_replaced(photos_dir, size_cache, caplog, corrupt, message):
  buckets = AspectRatioBucket(32, 64, 16)
  ids = photos(photos_dir).bucket_ids(buckets)
  [path] = size_cache.iterdir()
  corrupt(path)
  source = photos(photos_dir)
  np.testing.assert_array_equal(source.bucket_ids(buckets), ids)
  assert re.search(message, caplog.text), caplog.text
  np.testing.assert_array_equal(np.load(path), record_sizes(source))
  assert list(size_cache.iterdir()) == [path]


def test_an_unwritable_size_cache_is_skipped_with_a_warning(photos_dir, tmp_path, monkeypatch, caplog):
  blocker = tmp_path / "a_file"
  blocker.write_text("")
  monkeypatch.setenv("PIXELHDM_CACHE_DIR", str(blocker))
  buckets = AspectRatioBucket(32, 64, 16)
  source = photos(photos_dir)
  sizes = record_sizes(source)
  np.testing.assert_array_equal(source.bucket_ids(buckets), buckets.assign(sizes[:, 0], sizes[:, 1]))
  assert "cannot write the image-size cache" in caplog.text and blocker.read_text() == ""


def test_unreadable_records_are_counted_in_one_warning_and_go_to_bucket_zero(photos_dir, monkeypatch, caplog):
  read = TfdsSource._image

  def tall_images_fail(self, value, size):
    image = read(self, value, size)
    if image.size[1] >= 100:
      raise OSError("truncated")
    return image

  monkeypatch.setattr(TfdsSource, "_image", tall_images_fail)
  buckets = AspectRatioBucket(32, 64, 16)
  source = photos(photos_dir)
  ids = source.bucket_ids(buckets)
  sizes = record_sizes(source)
  broken = sizes[:, 1] >= 100
  np.testing.assert_array_equal(ids[broken], 0)
  np.testing.assert_array_equal(ids[~broken], buckets.assign(sizes[~broken, 0], sizes[~broken, 1]))
  warnings = [r.getMessage() for r in caplog.records if "unreadable image" in r.getMessage()]
  assert len(warnings) == 1 and warnings[0].startswith("6 of 12 records of captioned_photos"), warnings


def test_size_cache_dir_follows_xdg_unless_pixelhdm_cache_dir_is_set(tmp_path, monkeypatch):
  monkeypatch.delenv("PIXELHDM_CACHE_DIR")
  monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
  monkeypatch.setenv("HOME", str(tmp_path / "home"))
  assert size_cache_dir() == tmp_path / "home" / ".cache" / "pixelhdm_jax" / "image_sizes"
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
  assert size_cache_dir() == tmp_path / "xdg" / "pixelhdm_jax" / "image_sizes"
  monkeypatch.setenv("PIXELHDM_CACHE_DIR", str(tmp_path / "mine"))
  assert size_cache_dir() == tmp_path / "mine" / "image_sizes"


BAD_DATA = [
    ({"source": "web"}, r"data.source='web' is unknown"),
    ({"source": "tfds"}, r"data.source='tfds' needs data.tfds_name"),
    ({"min_resolution": 40}, r"data.min_resolution=40 is not a multiple of model.patch_size=16: use 32"),
    ({"min_resolution": 128, "max_resolution": 64}, r"data.min_resolution=128 exceeds data.max_resolution=64"),
    ({"max_aspect_ratio": 0.5}, r"data.max_aspect_ratio=0.5 must be >= 1"),
    ({"allow_upscale": None}, r"data.allow_upscale must be True or False, got None"),
    ({"order": "shuffle"}, r"data.order='shuffle' is unknown"),
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
