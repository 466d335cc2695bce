"""prepare_folder on the bad-input corpus: the expected report, readable records, idempotence, hash split."""

import io
import json
import logging
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from pixelhdm_jax.data import AspectRatioBucket, FolderSource, build_train_loader, prepare
from pixelhdm_jax.encoders.tokenizers import ByteTokenizer
from tests.data import bad_corpus

BUCKETS = AspectRatioBucket(32, 64, 16)
REPO = pathlib.Path(__file__).resolve().parents[2]


def run(corpus, out, **kwargs):
  kwargs.setdefault("max_image_pixels", bad_corpus.BIG_LIMIT)
  kwargs.setdefault("validation_fraction", 0.0)
  return prepare.prepare_folder(corpus, out, BUCKETS, progress=False, **kwargs)


def take(iterator, n):
  return [next(iterator) for _ in range(n)]


def records(out, split="train"):
  source = FolderSource(out, split)
  return source, [source.data_source[i] for i in range(len(source))]


def test_bad_corpus_report(corpus, tmp_path):
  out = tmp_path / "out"
  report = run(corpus, out)
  converted = {e["path"]: e["reasons"] for e in report["converted_files"]}
  skipped = {e["path"]: e["reason"] for e in report["skipped_files"]}
  assert converted == bad_corpus.CONVERTED
  assert {path: reason.split(":")[0] for path, reason in skipped.items()} == bad_corpus.SKIPPED
  assert {e["path"]: e["issue"] for e in report["caption_files"]} == bad_corpus.CAPTION_ISSUES
  total = len(bad_corpus.KEPT) + len(bad_corpus.CONVERTED) + len(bad_corpus.SKIPPED)
  assert (report["files"], report["kept"], report["converted"], report["skipped"]) == (
      total, len(bad_corpus.KEPT), len(bad_corpus.CONVERTED), len(bad_corpus.SKIPPED))
  assert report["splits"] == {"train": len(bad_corpus.KEPT) + len(bad_corpus.CONVERTED), "validation": 0}
  assert report["skipped_reasons"] == {"empty file": 1, "not a readable image": 2, "too large": 2, "too small": 1,
                                       "truncated or corrupt": 1, "unsupported extension": 1}
  assert "bad/big.png" in skipped and "max_image_pixels=50000" in skipped["bad/big.png"]
  assert json.loads((out / "report.json").read_text()) == report
  text = prepare.format_report(report)
  assert "9 kept, 9 converted, 8 skipped" in text and "skipped bad/truncated.jpg: truncated or corrupt" in text


def test_records_are_upright_rgb_in_sorted_order(corpus, tmp_path):
  out = tmp_path / "out"
  run(corpus, out)
  source, rows = records(out)
  paths = [row["path"].decode() for row in rows]
  assert paths == sorted(list(bad_corpus.KEPT) + list(bad_corpus.CONVERTED))
  index = np.load(prepare.index_path(out, "train"))
  np.testing.assert_array_equal(source.bucket_ids(BUCKETS), [row["bucket_id"] for row in rows])
  by_path = {}
  for i, row in enumerate(rows):
    image = Image.open(io.BytesIO(row["image"]))
    assert image.mode == "RGB" and image.size == (row["width"], row["height"])
    assert (index["width"][i], index["height"][i]) == image.size
    assert BUCKETS.bucket_for(*image.size) == row["bucket_id"]
    by_path[paths[i]] = (np.asarray(image), row["caption"].decode())
  assert by_path["exif/rotated.jpg"][0].shape == (80, 40, 3)  # 80x40 stored, EXIF orientation 6
  assert abs(int(by_path["modes/gray16.png"][0].mean()) - 128) <= 1  # 32896 / 257 = 128
  assert by_path["modes/rgba.png"][0][:, 0].min() >= 250  # alpha 0 at the left: white
  assert (corpus / "good/square.png").read_bytes() == rows[paths.index("good/square.png")]["image"]  # kept as is
  assert by_path["captions/missing.png"][1] == by_path["captions/empty.png"][1] == ""
  assert by_path["captions/latin1.png"][1] == "un caf\ufffd"
  assert by_path["captions/bom.png"][1] == "a caption with a BOM"
  assert by_path["good/rgb.jpg"][1] == "caption of good/rgb.jpg"


def test_second_run_is_a_no_op_until_inputs_change(corpus, tmp_path):
  out = tmp_path / "out"
  first = run(corpus, out)
  stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
  second = run(corpus, out)
  assert second["up_to_date"] and {k: v for k, v in second.items() if k != "up_to_date"} == {
      k: v for k, v in first.items() if k != "up_to_date"}
  assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == stamps
  assert "up to date" in prepare.format_report(second)
  caption = corpus / "good/rgb.txt"
  caption.write_text("a new caption")
  os.utime(caption, ns=(caption.stat().st_atime_ns, caption.stat().st_mtime_ns + 10**9))
  third = run(corpus, out)
  assert not third["up_to_date"]
  rows = records(out)[1]
  assert "a new caption" in [row["caption"].decode() for row in rows]
  assert not run(corpus, out, validation_fraction=0.5)["up_to_date"]  # other settings rebuild too


def test_split_by_fixed_hash_of_the_path(corpus, tmp_path):
  out = tmp_path / "out"
  report = run(corpus, out, validation_fraction=0.5)
  assert report["splits"]["train"] > 0 and report["splits"]["validation"] > 0
  for split in ("train", "validation"):
    for row in records(out, split)[1]:
      assert prepare.split_of(row["path"].decode(), 0.5) == split
  assert prepare.split_of("a/b.jpg", 0.5) == prepare.split_of("a/b.jpg", 0.5)
  assert prepare.split_of("a/b.jpg", 0.0) == "train" and prepare.split_of("a/b.jpg", 1.0) == "validation"


def test_prepared_folder_feeds_the_loader(corpus, tmp_path, tiny_config):
  out = tmp_path / "out"
  run(corpus, out)
  tiny_config.data.update(source="folder", path=str(out), order="sequential", caption_dropout=0.0)
  tiny_config.train.batch_size = 2
  rows = records(out)[1]
  for batch in [next(build_train_loader(tiny_config, ByteTokenizer(32), start_step=s)) for s in range(3)]:
    width, height = BUCKETS[int(batch["bucket_id"][0])]
    assert batch["images"].shape == (2, height, width, 3)
    for index, ids, mask in zip(batch["index"], batch["token_ids"], batch["token_mask"]):
      assert bytes((ids[mask] - 1).astype(np.uint8).tolist()) == rows[index]["caption"][:32]


def test_loader_skips_images_too_small_for_the_runs_buckets(corpus, tmp_path, tiny_config, caplog):
  """Prepared for 32..64 px, trained on 48..64 px: the 40x80 image (upright) covers no bucket any more."""
  caplog.set_level(logging.INFO)
  out = tmp_path / "out"
  run(corpus, out)
  source, rows = records(out)
  index = np.load(prepare.index_path(out, "train"))
  np.testing.assert_array_equal(source.image_sizes(), np.stack([index["width"], index["height"]], 1))
  tiny_config.data.update(source="folder", path=str(out), min_resolution=48, order="sequential")
  tiny_config.train.batch_size = 2
  loader = build_train_loader(tiny_config, ByteTokenizer(32))
  assert "18 images, 17 used in" in caplog.text and "(1 skipped as too small for every bucket" in caplog.text
  assert "per epoch 10 batches of 2 = 17 images + 3 repeats" in caplog.text  # 3 buckets of an odd count
  seen = {int(i) for batch in take(loader, 10) for i in batch["index"]}
  assert [row["path"].decode() for i, row in enumerate(rows) if i not in seen] == ["exif/rotated.jpg"]


def test_nothing_usable_is_reported(tmp_path):
  (tmp_path / "images").mkdir()
  (tmp_path / "images/a.jpg").write_bytes(b"")
  with pytest.raises(ValueError, match="no usable image"):
    run(tmp_path / "images", tmp_path / "out")
  assert json.loads((tmp_path / "out/report.json").read_text())["skipped_reasons"] == {"empty file": 1}


def test_missing_prepared_folder_names_the_command(tmp_path):
  with pytest.raises(FileNotFoundError, match="launch/prepare_data.py --images=DIR"):
    FolderSource(tmp_path)


@pytest.mark.slow
def test_worker_processes_give_the_same_dataset(corpus, tmp_path):
  one = run(corpus, tmp_path / "one")
  two = run(corpus, tmp_path / "two", workers=2)
  assert {k: v for k, v in one.items() if k != "output_dir"} == {k: v for k, v in two.items() if k != "output_dir"}
  assert [r["image"] for r in records(tmp_path / "one")[1]] == [r["image"] for r in records(tmp_path / "two")[1]]


def test_command_line(corpus, tmp_path):
  command = [sys.executable, str(REPO / "launch/prepare_data.py"), f"--images={corpus}", f"--output={tmp_path / 'out'}",
             f"--config={REPO / 'configs/base.py'}:tiny", "--workers=1", f"--max_image_pixels={bad_corpus.BIG_LIMIT}"]
  first = subprocess.run(command, capture_output=True, text=True, cwd=REPO, check=True)
  assert "9 kept, 9 converted, 8 skipped" in first.stdout
  assert json.loads((tmp_path / "out/report.json").read_text())["kept"] == 9
  second = subprocess.run(command, capture_output=True, text=True, cwd=REPO, check=True)
  assert "up to date" in second.stdout
