"""Official gazing_labels.json format: read/write byte-for-byte, validation, both collations."""
import copy
import json

import numpy as np
import pytest

from autogaze_jax.labels import format as F
from data_pipelines import labels as L
from data_pipelines.synthetic import random_labels


def _two_frame_example():
  """Spec 2.2's worked example (2 videos, 2 frames)."""
  a = {"gazing_pos": [[200, 13, 70], [270]], "task_losses": [[1.2, .9, .8], [.75]]}
  b = {"gazing_pos": [[3, 150], [305, 306, 365]], "task_losses": [[1.1, .95], [.9, .8, .7]]}
  return a, b


def test_collate_official_spec_example():
  a, b = _two_frame_example()
  a0, b0 = copy.deepcopy(a), copy.deepcopy(b)
  out = L.collate_official([a, b])
  np.testing.assert_array_equal(out["num_gazing_each_frame"], [4, 4])
  np.testing.assert_array_equal(out["gazing_pos"][0], [200, 13, 70, -1, 270, -1, -1, -1])
  np.testing.assert_array_equal(out["gazing_pos"][1], [3, 150, -1, -1, 305, 306, 365, -1])
  np.testing.assert_allclose(out["task_losses"][0], [1.2, .9, .8, .8, .75, .75, .75, .75], rtol=0, atol=1e-7)
  np.testing.assert_allclose(out["task_losses"][1], [1.1, .95, .95, .95, .9, .8, .7, .7], rtol=0, atol=1e-7)
  np.testing.assert_array_equal(out["if_padded_gazing"], out["gazing_pos"] == -1)
  assert out["gazing_pos"].dtype == np.int64 and out["task_losses"].dtype == np.float32
  assert out["if_padded_gazing"].dtype == bool and out["num_gazing_each_frame"].dtype == np.int64
  assert a == a0 and b == b0  # inputs not extended in place


def test_collate_fixed_capacity():
  a, b = _two_frame_example()
  out = L.collate_fixed([a, b], max_tokens_per_frame=5)
  np.testing.assert_array_equal(out["num_gazing_each_frame"], [6, 6])
  np.testing.assert_array_equal(out["gazing_pos"][0], [200, 13, 70, -1, -1, -1, 270, -1, -1, -1, -1, -1])
  np.testing.assert_allclose(out["task_losses"][1, :6], [1.1, .95, .95, .95, .95, .95], atol=1e-7)
  # Equal to the official collation when the capacity equals every frame's batch max.
  off = L.collate_official([a, b])
  fx = L.collate_fixed([a, b], max_tokens_per_frame=3)
  for k in off:
    np.testing.assert_array_equal(off[k], fx[k])
  with pytest.raises(F.LabelError, match="max_tokens_per_frame"):
    L.collate_fixed([a, b], max_tokens_per_frame=2)
  # pipeline items carry their key: the error names the video and frame, not a batch position
  items = [dict(L.flatten_entry(e), video_path=k) for e, k in ((a, "r/train/a.mp4"), (b, "r/train/b.mp4"))]
  with pytest.raises(F.LabelError, match=r"r/train/[ab]\.mp4: frame \d has 3 tokens > max_tokens_per_frame=2"):
    L.collate_fixed(items, max_tokens_per_frame=2)


def test_label_file_not_json_names_the_file(tmp_path):
  bad = tmp_path / "gazing_labels.json"
  bad.write_text('{"r/train/a.mp4": {"gazing_pos": [[1, 2')
  with pytest.raises(F.LabelError, match=rf"label file {bad}: not valid JSON"):
    L.load_labels(str(bad))
  bad.write_text("[1, 2]")
  with pytest.raises(F.LabelError, match="expected a JSON object"):
    L.load_labels(str(bad))


def test_flatten_unflatten_roundtrip():
  lab = random_labels(["x/train/a.mp4"], seed=3)["x/train/a.mp4"]
  flat = L.flatten_entry(lab)
  assert flat["label_lengths"].shape == (16,) and flat["gazing_pos"].shape == (flat["label_lengths"].sum(),)
  back = L.unflatten(flat)
  assert back["gazing_pos"] == lab["gazing_pos"]
  np.testing.assert_allclose(np.concatenate(back["task_losses"]), np.concatenate(lab["task_losses"]), rtol=1e-6)


def test_file_roundtrip_byte_for_byte(tmp_path):
  # A file as the official pipeline's Python writer makes it: json.dumps of the dict, absolute keys.
  labels = random_labels([f"/data/InternVid_res448_250K/train/v{i}.mp4" for i in range(3)], seed=0)
  labels["/data/InternVid_res448_250K/train/v0.mp4"]["task_losses"][0][0] = 1.2345678901234567  # full repr
  text = json.dumps(labels)
  src = tmp_path / "gazing_labels.json"
  src.write_text(text)
  loaded = L.load_labels(str(src))
  assert sorted(loaded) == [f"InternVid_res448_250K/train/v{i}.mp4" for i in range(3)]  # 3-component keys
  out = tmp_path / "out.json"
  F.write_labels(loaded, str(out))
  # Same bytes up to the key normalisation (keys are relative on our side, as the official join uses).
  want = json.dumps({k.replace("/data/", ""): v for k, v in labels.items()})
  assert out.read_text() == want
  # Relative keys already: exact bytes.
  src2 = tmp_path / "rel.json"
  src2.write_text(want)
  F.write_labels(L.load_labels(str(src2)), str(out))
  assert out.read_bytes() == src2.read_bytes()


def test_load_merges_comma_and_glob_later_wins(tmp_path):
  a = random_labels(["r/train/a.mp4", "r/train/b.mp4"], seed=0)
  b = random_labels(["r/train/b.mp4"], seed=9)
  (tmp_path / "l1.json").write_text(json.dumps(a))
  (tmp_path / "l2.json").write_text(json.dumps(b))
  m = L.load_labels(f"{tmp_path}/l1.json, {tmp_path}/l2.json")
  assert m["r/train/b.mp4"] == b["r/train/b.mp4"] and m["r/train/a.mp4"] == a["r/train/a.mp4"]
  assert L.load_labels(f"{tmp_path}/l*.json") == m
  with pytest.raises(FileNotFoundError):
    L.load_labels(f"{tmp_path}/nothing*.json")


@pytest.mark.parametrize("mutate,match", [
    (lambda e: e["gazing_pos"].pop(), "expected 16 frames"),
    (lambda e: e["gazing_pos"][3].clear() or e["task_losses"][3].clear(), "frame 3 has no gaze token"),
    (lambda e: e["task_losses"][2].append(0.5), "frame 2 has"),
    (lambda e: e["gazing_pos"][1].__setitem__(0, 5), r"not an int in \[265, 530\)"),
    (lambda e: e["gazing_pos"][0].__setitem__(0, 1.0), "not an int"),
    (lambda e: e["task_losses"][0].__setitem__(0, float("nan")), "not a finite number"),
])
def test_validation_errors(mutate, match):
  e = random_labels(["r/train/a.mp4"], seed=1, max_tokens_per_frame=3)["r/train/a.mp4"]
  F.validate_entry("r/train/a.mp4", e)  # valid as generated
  mutate(e)
  with pytest.raises(F.LabelError, match=match):
    F.validate_entry("r/train/a.mp4", e)


def test_repeated_id_rejected():
  e = {"gazing_pos": [[265 * t, 265 * t] for t in range(16)], "task_losses": [[1.0, 0.9]] * 16}
  with pytest.raises(F.LabelError, match="repeated"):
    F.validate_entry("k", e)


def test_join_report():
  rep = L.join_report(["a/b/c.mp4", "a/b/d.mp4"], {"a/b/c.mp4": 1, "a/b/z.mp4": 1})
  assert rep == {"videos_without_labels": ["a/b/d.mp4"], "labels_without_video": ["a/b/z.mp4"]}
