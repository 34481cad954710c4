"""ArrayRecord builder: round trip equals the folder source, labels stored, bad files counted, no TF.

Also the Beam path (DirectRunner) when apache-beam is installed (requirements-beam.txt).
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from data_pipelines import ops, pipeline, sources
from data_pipelines.synthetic import random_labels
from tests.data_pipelines.data_video_factory import ramp_frames, write_video


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
  """4 good train videos (one short, one odd-sized mkv), 1 zero-length, 1 val video; labels for 3."""
  root = tmp_path_factory.mktemp("tf") / "ds"
  tr, va = root / "train", root / "val"
  os.makedirs(tr)
  os.makedirs(va)
  for i in range(2):
    write_video(str(tr / f"v{i}.mp4"), ramp_frames(17 + i, 32, 32)[:, :, :, ::-1] // (i + 1))
  write_video(str(tr / "v2_short.mp4"), ramp_frames(6))
  write_video(str(tr / "v3_odd.mkv"), ramp_frames(16, 33, 47), codec="ffv1", pix_fmt="bgr0")
  (tr / "v4_empty.mp4").write_bytes(b"")
  write_video(str(va / "w0.mp4"), ramp_frames(16))
  keys = [f"ds/train/{n}" for n in ("v0.mp4", "v1.mp4", "v3_odd.mkv")]
  labels = random_labels(keys + ["ds/train/gone.mp4"], seed=4)
  lpath = root.parent / "gazing_labels.json"
  lpath.write_text(json.dumps(labels))
  return str(root), str(lpath), labels


@pytest.fixture(scope="module")
def built(folder, tmp_path_factory):
  root, lpath, _ = folder
  out = str(tmp_path_factory.mktemp("ar"))
  from launch import build_dataset
  report = build_dataset.main([f"--src={root}", f"--out={out}", f"--labels={lpath}"])
  return out, report


def test_build_report_counts(built):
  _, report = built
  tr = report["train"]
  assert tr["records"] == 4 and tr["skip_zero_length"] == 1 and tr["ok"] == 4
  assert tr["padded_short"] == 1 and tr["cropped_non_square"] == 1
  assert tr["videos_without_labels"] == 1 and tr["labels_without_video"] == 1  # v2_short / gone.mp4
  assert report["val"]["records"] == 1
  with open(os.path.join(built[0], "build_report.json")) as f:
    assert json.load(f) == report


def test_roundtrip_equals_folder_source(folder, built):
  root, _, labels = folder
  out, _ = built
  ar = sources.ArrayRecordSource(out, "train")
  fs = sources.VideoFolderSource(root, "train", labels=labels, require_labels=False)
  assert len(ar) == 4 and ar.paths() == [fs[i]["video_path"] for i in range(4)]
  for i in range(4):
    a, f = ar[i], fs[i]
    np.testing.assert_array_equal(a["frames"], f["frames"])
    np.testing.assert_array_equal(a["data_stats"], f["data_stats"])
    assert a["video_path"] == f["video_path"]
    if f["video_path"] in labels:
      for k in ("gazing_pos", "task_losses", "label_lengths"):
        np.testing.assert_array_equal(a[k], f[k])
    else:
      assert "gazing_pos" not in a  # stored without labels (has_labels = 0)


def test_read_time_label_join_and_pipeline(folder, built):
  _, _, labels = folder
  out, _ = built
  ar = sources.ArrayRecordSource(out, "train", labels=labels)  # NTP: keep labelled records only
  assert len(ar) == 3 and ar.join_stats == {"videos_without_labels": 1, "labels_without_video": 1}
  b = next(pipeline.make_iterator(ar, global_batch_size=3, labels="fixed", max_tokens_per_frame=8, seed=0,
                                  process_index=0, process_count=1))
  assert b["frames"].shape == (3, 16, 224, 224, 3) and b["gazing_pos"].shape == (3, 16 * 9)


def test_tfds_data_source_without_tensorflow(built):
  """A fresh interpreter reads the shards with tfds.data_source and never imports TensorFlow."""
  out, _ = built
  code = ("import sys, tensorflow_datasets as tfds\n"
          f"ds = tfds.data_source('autogaze_videos', data_dir={out!r}, split='train')\n"
          "r = ds[0]\n"
          "assert r['frames'].shape == (16, 224, 224, 3) and r['frames'].dtype.name == 'uint8'\n"
          "assert 'tensorflow' not in sys.modules, 'TensorFlow got imported'\n"
          "print(len(ds))\n")
  res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
  assert res.returncode == 0, res.stderr[-2000:]
  assert res.stdout.strip().splitlines()[-1] == "4"


def test_cli_help():
  res = subprocess.run([sys.executable, "-m", "launch.build_dataset", "--help"], capture_output=True, text=True,
                       timeout=60, cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
  assert res.returncode == 0 and "--src" in res.stdout and "--beam_runner" in res.stdout


def test_beam_direct_runner(folder, tmp_path):
  pytest.importorskip("apache_beam", reason="apache-beam not installed (optional: pip install -r requirements-beam.txt)")
  from data_pipelines.tfds_builder import build
  root, lpath, _ = folder
  report = build(root, str(tmp_path), labels=lpath, beam_runner="DirectRunner")
  assert report["train"]["records"] == 4
  beam_src = sources.ArrayRecordSource(str(tmp_path), "train")
  fs = sources.VideoFolderSource(root, "train", labels=lpath, require_labels=False)
  got = {beam_src[i]["video_path"]: beam_src[i] for i in range(4)}
  for i in range(4):
    np.testing.assert_array_equal(got[fs[i]["video_path"]]["frames"], fs[i]["frames"])


def test_stat_keys_match_stored_shape(built):
  ar = sources.ArrayRecordSource(built[0], "val")
  assert ar[0]["data_stats"].shape == (len(ops.STAT_KEYS),)


def test_rebuild_into_same_out_detects_a_changed_source(folder, tmp_path):
  """Issue 20 item 5: same source -> reused with the first build's skip counts; changed -> StaleDataset
  naming the changes (old data untouched); --rebuild -> the new source's records."""
  import shutil
  from data_pipelines.tfds_builder import StaleDataset, build
  from launch import build_dataset
  src, out = str(tmp_path / "ds"), str(tmp_path / "out")
  shutil.copytree(folder[0], src)
  shutil.rmtree(os.path.join(src, "val"))
  first = build(src, out)
  assert first["train"]["records"] == 4 and first["train"]["skip_zero_length"] == 1
  assert build(src, out) == first                                    # reused: counts kept, not lost
  with open(os.path.join(out, "build_report.json")) as f:
    assert json.load(f) == first
  shutil.copy(os.path.join(src, "train", "v0.mp4"), os.path.join(src, "train", "v5.mp4"))      # added
  shutil.copy(os.path.join(src, "train", "v0.mp4"), os.path.join(src, "train", "v1.mp4"))      # modified
  os.remove(os.path.join(src, "train", "v2_short.mp4"))                                        # removed
  with pytest.raises(StaleDataset, match=r"videos: 1 added, 1 removed, 1 modified \(e.g. \+train/v5.mp4"):
    build(src, out)
  assert len(sources.ArrayRecordSource(out, "train")) == 4            # the old dataset is left as it was
  with pytest.raises(SystemExit, match=r"StaleDataset: .*out holds the autogaze_videos dataset of another source: "
                                       r".*\(--rebuild\)"):
    build_dataset.main([f"--src={src}", f"--out={out}", "--splits=train"])
  report = build_dataset.main([f"--src={src}", f"--out={out}", "--splits=train", "--rebuild"])
  assert report["train"]["records"] == 4 and report["train"]["skip_zero_length"] == 1
  assert report["train"]["padded_short"] == 0                        # v2_short is gone
  assert sources.ArrayRecordSource(out, "train").paths()[-1] == "ds/train/v5.mp4"
  assert build(src, out) == report                                    # and that build is reused again
  with pytest.raises(StaleDataset, match="labels added"):             # the records would lack them
    build(src, out, labels=folder[1])


def test_split_without_readable_video_is_named(tmp_path):
  """Issue 20 item 9: a split whose files all fail to decode is NoReadableVideos with the skip counts,
  not tfds's bare AssertionError."""
  from data_pipelines.tfds_builder import NoReadableVideos, build
  src = tmp_path / "bad"
  os.makedirs(src / "train")
  os.makedirs(src / "val")
  write_video(str(src / "train" / "a.mp4"), ramp_frames(16))
  (src / "val" / "empty.mp4").write_bytes(b"")
  (src / "val" / "noise.mp4").write_bytes(np.random.default_rng(0).integers(0, 256, 3000, np.uint8).tobytes())
  os.symlink(str(src / "gone.mp4"), str(src / "val" / "dangling.mp4"))
  with pytest.raises(NoReadableVideos, match=r"split 'val': no readable video in .*bad/val \(3 video files; "
                     r"skips: \{'skip_zero_length': 1, 'skip_open_error': 2\}\)"):
    build(str(src), str(tmp_path / "out"))
  assert not os.path.exists(tmp_path / "out" / "build_source.json")   # nothing recorded as built
