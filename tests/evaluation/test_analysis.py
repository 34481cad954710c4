"""Scale vs detail and redundancy over time (autogaze_jax/evaluation/analysis.py) on clips built so the
answer is known: a textured left half and a flat right half; a static left half and a moving right half."""
import numpy as np
from scipy import stats

from autogaze_jax.core.patches import RELEASED_LAYOUT as L
from autogaze_jax.evaluation import analysis

V = L.tokens_per_frame          # 265: 32/64/112/224 px scales, grids 2/4/7/14


def _id(frame, scale, row, col):
  return frame * V + L.offsets[scale] + row * L.grids[scale] + col


def test_detail_is_zero_on_flat_patches_and_spearman_is_scipys():
  rng = np.random.default_rng(0)
  clip = np.full((2, 224, 224, 3), 128, np.uint8)
  clip[:, :, :112] = rng.integers(0, 256, (2, 224, 112, 3))       # left half textured, right half flat
  maps = analysis.detail_maps(clip, L)
  assert np.all(maps[3][:, :, 8:] == 0) and np.all(maps[3][:, :, :7] > 0.01)   # col 7 touches the edge
  # fine patches on the texture, coarse ones on the flat half, a mix in between
  ids = [_id(0, 3, r, c) for r in range(3) for c in range(3)] + [_id(1, 0, 0, 1), _id(1, 0, 1, 1), _id(1, 1, 0, 0),
                                                                 _id(1, 2, 3, 5), _id(0, 1, 2, 3)]
  res = analysis.scale_detail(clip[None], [(np.asarray(ids), np.zeros(len(ids), bool))], L)
  d = analysis.decode(np.asarray(ids), None, L, 2)
  sizes = np.asarray(L.scales)[d["scale"]]
  details = np.asarray([maps[s][f, r, c] for f, s, r, c in zip(d["frame"], d["scale"], d["row"], d["col"])])
  want = stats.spearmanr(sizes, details)
  assert res["num_gazes"] == len(ids)
  np.testing.assert_allclose([res["rho"], res["p_value"]], [want.statistic, want.pvalue], rtol=1e-12)
  assert res["rho"] > 0.5 and res["mean_detail_per_scale"][32] < 0.1 * res["mean_detail_per_scale"][224]


def test_repeat_counts_on_a_static_half_and_a_moving_half():
  rng = np.random.default_rng(1)
  t = 4
  clip = np.zeros((t, 224, 224, 3), np.uint8)
  clip[:, :, :112] = rng.integers(0, 256, (224, 112, 3))           # left half identical in every frame
  clip[:, :, 112:] = rng.integers(0, 256, (t, 224, 112, 3))        # right half new noise every frame
  # every frame gazes 2 fine patches on the left and 2 on the right; the left ones repeat from frame to
  # frame, on the right one of the two repeats
  ids, again = [], []
  for f in range(t):
    ids += [_id(f, 3, 0, 0), _id(f, 3, 5, 2), _id(f, 3, 1, 10), _id(f, 3, 4 + f, 12)]
  gazes = [(np.asarray(ids), np.zeros(len(ids), bool))]
  res = analysis.repeat_gaze(clip[None], gazes, L)
  assert res["static"] == {"gazed_before": 2 * (t - 1), "gazed_again": 2 * (t - 1), "rate": 1.0}
  assert res["moving"] == {"gazed_before": 2 * (t - 1), "gazed_again": t - 1, "rate": 0.5}
  # ratio by frame: frame 0 vs later frames
  np.testing.assert_allclose(analysis.gaze_ratio_by_frame([[10, 2, 2], [20, 4, 2]], V), [15 / V, 3 / V, 2 / V])
