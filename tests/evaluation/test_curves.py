"""Curves (autogaze_jax/evaluation/curves.py), the report and launch.evaluate's named errors.

The known-by-construction pair: a gaze source that keeps round(r * V) patches of every frame at ratio r
(and, with a stop threshold q, a perfectly calibrated model: ratio 1 - q), and a scorer whose loss of a
clip is 1 - (its gaze ratio) + the clip's offset. Every curve point and interpolated ratio follows."""
import os

import numpy as np
import pytest

from autogaze_jax.evaluation import curves, quality, report
from autogaze_jax.interop.common import CheckpointError
from tests.conftest import FIXTURES

V, T = 100, 3
OFFSET = np.asarray([0.0, 0.1, -0.1, 0.2])         # per-clip loss offsets


def _gaze(pv, ratio, threshold):
  r = ratio if threshold is None else 1.0 - threshold
  k = int(round(r * V))
  b = len(pv)
  return {"gazing_pos": np.tile(np.arange(T * k), (b, 1)), "if_padded_gazing": np.zeros((b, T * k), bool),
          "num_gazing_each_frame": np.full(T, k), "num_real_gazing_each_frame": np.full((b, T), k), "clip": pv[:, 0, 0, 0, 0]}


def _score(pv, out):
  real = out["num_real_gazing_each_frame"] / V
  return 1.0 - real + OFFSET[pv[:, 0, 0, 0, 0].astype(int)][:, None], None


def test_curve_points_and_ratio_on_a_known_pair():
  pv = np.zeros((4, T, 3, 2, 2), np.float32) + np.arange(4)[:, None, None, None, None]   # clip i carries i
  fixed = [curves.curve_point(_gaze, _score, pv, V, ratio=r, batch=3) for r in (0.1, 0.2, 0.5)]
  for p, r in zip(fixed, (0.1, 0.2, 0.5)):
    np.testing.assert_allclose(p["loss_clips"], 1 - r + OFFSET)
    assert p["loss"] == pytest.approx(1 - r + OFFSET.mean()) and p["loss_std"] == pytest.approx(OFFSET.std())
    assert p["gaze_ratio"] == pytest.approx(r) and p["gaze_ratio_std"] == 0 and "psnr" not in p
  # loss = 1.05 - r on this curve: epsilon 0.75 is reached at r = 0.3 (between the 0.2 and 0.5 points)
  assert curves.ratio_at(fixed, 0.75) == pytest.approx(0.3)
  assert curves.ratio_at(fixed, 2.0) == pytest.approx(0.1) and curves.ratio_at(fixed, 0.1) == float("inf")
  stop = [curves.curve_point(_gaze, _score, pv, V, threshold=q, batch=4) for q in (0.9, 0.6)]
  for p, q in zip(stop, (0.9, 0.6)):   # calibrated stop rule: loss q (+ offsets) at ratio 1 - q
    assert p["gaze_ratio"] == pytest.approx(1 - q) and p["loss"] == pytest.approx(q + OFFSET.mean())
  assert curves.thresholds_from(fixed, 2, extra=(0.7,)) == pytest.approx([0.55, 0.7, 0.95])


def test_repack_keeps_each_frames_slots():
  out = {"gazing_pos": np.asarray([[1, 2, 3, 265 + 4]]), "if_padded_gazing": np.asarray([[False, False, True, False]]),
         "num_gazing_each_frame": np.asarray([3, 1])}
  pos, pad = curves.repack(out, 8)
  assert pos.shape == (1, 16) and list(pos[0, [0, 1, 2, 8]]) == [1, 2, 3, 269]
  assert list(np.nonzero(~pad[0])[0]) == [0, 1, 8]
  assert [curves.slot_bucket(n) for n in (1, 8, 9, 27, 64)] == [8, 8, 16, 32, 64]


@pytest.fixture(scope="module")
def fixtures():
  from autogaze_jax import AutoGaze
  from autogaze_jax.judge.load import load_judge
  pv = np.load(os.path.join(FIXTURES, "gaze_tiny", "input_clip.npz"))["pixel_values"][:, :2]
  frames = quality.unit_to_uint8(quality.task_to_unit(np.concatenate([pv, pv[..., ::-1]])))   # 2 clips x 2 frames
  return AutoGaze.from_pretrained(os.path.join(FIXTURES, "gaze_tiny")), load_judge(os.path.join(FIXTURES, "videomae_tiny")), frames


def test_report_on_the_fixtures(fixtures, tmp_path):
  import json
  model, judge, frames = fixtures
  rep = report.evaluate_models({"tiny": model}, judge, frames, str(tmp_path), ratios=(0.03,), epsilon=3.0,
                               thresholds=[], batch=2, pictures=1, picture_frames=2)
  saved = json.load(open(tmp_path / "report.json"))
  row = saved["models"]["tiny"]
  (fixed,), (stop,) = row["fixed_budget"], row["stop_rule"]
  assert stop["threshold"] == 3.0 and fixed["ratio"] == 0.03 and len(fixed["loss_clips"]) == 2
  assert fixed["gaze_ratio"] == pytest.approx(7 / 265)     # int(0.03 * 265) per frame and fixed["psnr"] > 0 and 0 < fixed["ssim"] <= 1
  assert len(row["gaze_ratio_by_frame"]) == 2 and set(row["repeat_gaze"]) == {"static", "moving", "motion_threshold"}
  for name in ("curves.png", "analysis.png", "pictures/tiny_clip0.png", "pictures/tiny_clip0.gif"):
    assert (tmp_path / name).stat().st_size > 1000, name
  assert "tiny" in report.table_lines(saved)[2]


def test_named_errors(fixtures, tmp_path):
  from autogaze_jax.gaze.config import tiny_config
  from launch import evaluate as cli
  model, judge, frames = fixtures
  with pytest.raises(CheckpointError, match="does not exist"):
    cli.run([str(tmp_path / "nope")], os.path.join(FIXTURES, "videomae_tiny"), str(tmp_path / "o"))
  with pytest.raises(CheckpointError, match="judge checkpoint .* does not exist"):
    cli.run([os.path.join(FIXTURES, "gaze_tiny")], str(tmp_path / "nojudge"), str(tmp_path / "o"))
  other = tiny_config(scales=(224,), num_vision_tokens_each_frame=196)
  with pytest.raises(CheckpointError, match="'odd' .* does not match the judge"):
    report.check_compatible("odd", other, judge)
  with pytest.raises(report.EmptyEvaluationData, match="N >= 1"):
    report.evaluate_models({"tiny": model}, judge, frames[:0], str(tmp_path))
  with pytest.raises(report.EmptyEvaluationData, match="no clips to evaluate"):
    cli.load_clips(str(tmp_path), "val", 4)        # a folder without videos
  with pytest.raises(report.EmptyEvaluationData, match="num_clips = 0"):
    cli.load_clips("", "val", 0)
