"""The interframe canvas (autogaze_jax/evaluation/canvas.py): painted where gazed, stale elsewhere."""
import numpy as np

from autogaze_jax.core.patches import RELEASED_LAYOUT as L
from autogaze_jax.evaluation import canvas

V = L.tokens_per_frame


def test_canvas_keeps_earlier_frames_where_not_gazed(tmp_path):
  rng = np.random.default_rng(0)
  frames = rng.integers(0, 256, (3, 224, 224, 3), dtype=np.uint8)
  fine = list(range(L.offsets[3], V))                       # every 16 px patch of the finest scale
  ids = fine + [V + L.offsets[3]]                            # frame 0 whole; frame 1: the top-left patch only
  ids += [2 * V + L.offsets[0] + 3]                          # frame 2: the bottom-right 112 px quarter at 32 px
  pos = np.asarray(ids)
  out = canvas.interframe_canvas(frames, pos, np.zeros(len(ids), bool), L)
  np.testing.assert_array_equal(out[0], frames[0])          # the finest scale is the frame itself
  np.testing.assert_array_equal(out[1, :16, :16], frames[1, :16, :16])
  np.testing.assert_array_equal(out[1, 16:], frames[0, 16:])   # not gazed: frame 0's pixels stay
  np.testing.assert_array_equal(out[2, :112, :112], out[1, :112, :112])
  assert not np.array_equal(out[2, 112:, 112:], out[1, 112:, 112:])   # repainted, blurred at 32 px
  psnr = canvas.per_frame_psnr(frames, out)
  assert psnr[0] == np.inf and psnr[1] < 12 and psnr[2] < 12
  res = canvas.save_comparison(str(tmp_path / "c.png"), str(tmp_path / "c.gif"), frames, pos,
                               np.zeros(len(ids), bool), L, reconstruction_uint8=frames[::-1].copy())
  np.testing.assert_array_equal(res["canvas_psnr"], psnr)
  assert res["reconstruction_psnr"][1] == np.inf and res["image"].shape[0] > 4 * 224   # 4 rows
  assert (tmp_path / "c.png").stat().st_size > 0 and (tmp_path / "c.gif").stat().st_size > 0
