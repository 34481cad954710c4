"""Clip sampling, PyAV decoding, bad-input handling and label join of the video folder source."""
import os

import numpy as np
import pytest

from data_pipelines import ops, sources
from data_pipelines.synthetic import random_labels
from tests.data_pipelines.data_video_factory import frame_value, make_bad_zoo, ramp_frames, write_video

TOL = 4  # x264 at crf 10 on flat colors: decoded values within a few levels


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
  root = tmp_path_factory.mktemp("zoo")
  files = make_bad_zoo(str(root / "ds" / "train"))
  os.makedirs(root / "ds" / "val")
  write_video(str(root / "ds" / "val" / "v.mp4"), ramp_frames(16))
  return str(root / "ds"), files


def _values(frames):
  """Per-frame value of the ramp clip (center pixel, red channel)."""
  return frames[:, 112, 112, 0].astype(int)


def test_sample_frame_indices_official():
  np.testing.assert_array_equal(ops.sample_frame_indices(16, 300), np.arange(16))  # first 16 frames
  np.testing.assert_array_equal(ops.sample_frame_indices(16, 17), np.arange(16))
  np.testing.assert_array_equal(ops.sample_frame_indices(16, 5), [0, 1, 2, 3, 4] + [4] * 11)  # edge pad
  np.testing.assert_array_equal(ops.sample_frame_indices(16, 16), np.arange(16))
  np.testing.assert_array_equal(ops.sample_frame_indices(4, 100, frame_sample_rate=2), [0, 2, 5, 7])
  rng = np.random.default_rng(0)
  for _ in range(20):  # random variant: a contiguous window ending in [16, seg_len)
    idx = ops.sample_frame_indices(16, 40, rng=rng)
    assert idx[-1] - idx[0] == 15 and 0 <= idx[0] and idx[-1] < 40
  with pytest.raises(ValueError):
    ops.sample_frame_indices(16, 0)


def test_decode_first_16_frames_deterministic(zoo):
  _, f = zoo
  a, flags = sources.decode_clip(f["good"])
  b, _ = sources.decode_clip(f["good"])
  assert a.shape == (16, 224, 224, 3) and a.dtype == np.uint8 and flags == {}
  np.testing.assert_array_equal(a, b)
  np.testing.assert_allclose(_values(a), [frame_value(t) for t in range(16)], atol=TOL)  # frames 0..15 of 20
  # Random window, seeded: deterministic, contiguous ramp frames.
  c, _ = sources.decode_clip(f["good"], rng=np.random.default_rng(3))
  d, _ = sources.decode_clip(f["good"], rng=np.random.default_rng(3))
  np.testing.assert_array_equal(c, d)
  np.testing.assert_allclose(np.diff(_values(c)), 10, atol=2 * TOL)


@pytest.mark.parametrize("kind,flag", [("short", "padded_short"), ("odd_nonsquare", "cropped_non_square"),
                                       ("gray", "converted_gray"), ("alpha", "converted_alpha"), ("webm", None)])
def test_repairs_are_counted(zoo, kind, flag):
  frames, flags = sources.decode_clip(zoo[1][kind])
  assert frames.shape == (16, 224, 224, 3) and frames.dtype == np.uint8
  assert flags == ({flag: 1} if flag else {})
  want = [frame_value(min(t, 4 if kind == "short" else 99)) for t in range(16)]
  np.testing.assert_allclose(_values(frames), want, atol=TOL)
  if kind == "gray":  # converted to RGB: the three channels are equal
    np.testing.assert_array_equal(frames[..., 0], frames[..., 2])


def test_non_square_is_center_crop_of_short_side_resize(zoo):
  # 225x301 -> shortest edge 224 (PIL bilinear) -> 224x299 -> center crop 224 (task view).
  from PIL import Image
  img = np.zeros((225, 301, 3), np.uint8)
  img[:, :150] = 200  # left half bright: the crop position is visible
  out = ops.resize_short_center_crop(img[None])[0]
  ref = np.asarray(Image.fromarray(img).resize((299, 224), Image.BILINEAR))[:, 37:261]
  np.testing.assert_array_equal(out, ref)


@pytest.mark.parametrize("kind,reason", [("zero_length", "skip_zero_length"), ("corrupt", "skip_open_error"),
                                         ("truncated", "skip_open_error"),
                                         ("truncated_faststart", "skip_decode_error"),
                                         ("audio_only", "skip_no_video_stream")])
def test_unreadable_raise_bad_video(zoo, kind, reason):
  with pytest.raises(sources.BadVideo) as e:
    sources.decode_clip(zoo[1][kind])
  assert e.value.reason == reason


def test_folder_source_never_crashes_and_counts(zoo):
  root, files = zoo
  src = sources.VideoFolderSource(root, "train")
  assert len(src) == len(files)  # all files listed (exts mp4/mkv/webm), bad ones included
  items = [src[i] for i in range(len(src))]
  for it in items:
    assert it["frames"].shape == (16, 224, 224, 3) and it["frames"].dtype == np.uint8
  st = src.stats()
  # The 5 unreadable files g..k are the last 5 in sorted order: index g tries g,h,i,j,k then wraps
  # to a_good; index h tries h..k; ... so file g is tried once, h twice, ..., k five times.
  assert st["skip_zero_length"] == 1                      # g
  assert st["skip_open_error"] == 2 + 3                   # h corrupt, i truncated
  assert st["skip_no_video_stream"] == 4                  # j audio only
  assert st["skip_decode_error"] == 5                     # k truncated faststart
  assert st["substituted"] == 5
  assert st["ok"] == len(files)
  assert st["padded_short"] == st["cropped_non_square"] == st["converted_gray"] == st["converted_alpha"] == 1
  # Summed per-item stats equal the source's counters (what the pipeline aggregates across workers).
  assert ops.stats_dict(np.stack([it["data_stats"] for it in items])) == st
  paths = [it["video_path"] for it in items]
  assert paths[0].endswith("ds/train/a_good.mp4") and len(paths[0].split("/")) == 3


def test_folder_source_gives_up_on_all_bad(tmp_path):
  d = tmp_path / "ds" / "train"
  os.makedirs(d)
  for i in range(3):
    (d / f"{i}.mp4").write_bytes(b"")
  src = sources.VideoFolderSource(str(tmp_path / "ds"), "train")
  with pytest.raises(RuntimeError, match="consecutive unreadable"):
    src[0]


def test_label_join_counts(zoo):
  root, files = zoo
  keys = [ops.relative_video_path(p) for p in sorted(files.values())]
  labels = random_labels(keys[:4] + ["other/train/missing.mp4"], seed=1)
  src = sources.VideoFolderSource(root, "train", labels=labels)  # NTP job: unlabeled videos dropped
  assert len(src) == 4
  assert src.join_stats == {"videos_without_labels": len(files) - 4, "labels_without_video": 1}
  it = src[1]
  assert it["label_lengths"].shape == (16,) and it["label_lengths"].sum() == len(it["gazing_pos"])
  assert [int(x) for x in it["gazing_pos"][:it["label_lengths"][0]]] == labels[it["video_path"]]["gazing_pos"][0]
  # Without require_labels (e.g. val), unlabeled videos stay with empty label fields.
  src2 = sources.VideoFolderSource(root, "train", labels=labels, require_labels=False)
  assert len(src2) == len(files)


def test_dangling_symlink_is_a_counted_bad_video(tmp_path):
  train = tmp_path / "ds" / "train"
  os.makedirs(train)
  write_video(str(train / "a_good.mp4"), ramp_frames(16))
  os.symlink(str(tmp_path / "gone.mp4"), str(train / "b_dangling.mp4"))   # the target never existed
  with pytest.raises(sources.BadVideo) as e:
    sources.decode_clip(str(train / "b_dangling.mp4"))
  assert e.value.reason == "skip_open_error" and "b_dangling.mp4" in str(e.value)
  src = sources.VideoFolderSource(str(tmp_path / "ds"), "train")
  assert len(src) == 2
  items = [src[i] for i in range(2)]                        # no crash: the good clip stands in
  assert all(it["frames"].shape == (16, 224, 224, 3) for it in items)
  assert src.stats()["skip_open_error"] == 1
