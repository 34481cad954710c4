"""Gaze pictures: pixel semantics of overlays, agreement with patches.coverage, PNG/GIF files."""
import os

import numpy as np
import pytest
from PIL import Image

from autogaze_jax.core import patches as P
from autogaze_jax.evaluation import viz
from autogaze_jax.core.resize import resize_bicubic_np
from tests.conftest import FIXTURES

L = P.RELEASED_LAYOUT


def _frames(t=2, h=224, w=224, seed=0):
  # values >= 40 so that dimmed pixels always differ from the original
  return np.random.default_rng(seed).integers(40, 256, size=(t, h, w, 3), dtype=np.uint8)


def test_overlay_pixels():
  fr = _frames()
  # frame 0: 32-scale cell (0,0) = pixels [0,112)^2; frame 1: 224-scale cell (13,13) = [208,224)^2;
  # a padded slot holding 265 (= frame 1, id 0 if it were read) must be ignored.
  ids = np.array([0, 265 + 69 + 13 * 14 + 13, 265])
  pad = np.array([False, False, True])
  out = viz.gaze_overlay(fr, ids, pad, L)
  assert out.shape == fr.shape and out.dtype == np.uint8
  dimmed = np.round(fr.astype(np.float32) * viz.DIM).astype(np.uint8)
  np.testing.assert_array_equal(out[0, 1:111, 1:111], fr[0, 1:111, 1:111])  # interior: original
  np.testing.assert_array_equal(out[0, 112:, :], dimmed[0, 112:, :])
  np.testing.assert_array_equal(out[0, :, 112:], dimmed[0, :, 112:])
  assert out[0, 0, 50].tolist() == list(viz.SCALE_COLORS[0]) == out[0, 111, 50].tolist()  # outline
  np.testing.assert_array_equal(out[1, 209:223, 209:223], fr[1, 209:223, 209:223])
  assert out[1, 208, 215].tolist() == list(viz.SCALE_COLORS[3])
  np.testing.assert_array_equal(out[1, :208], dimmed[1, :208])  # the pad did not light frame 1's top-left
  # without outlines: exactly original inside the union of footprints, dimmed elsewhere
  plain = viz.gaze_overlay(fr, ids, pad, L, line_width=0)
  inside = np.zeros(fr.shape[:3], bool)
  inside[0, :112, :112] = inside[1, 208:, 208:] = True
  np.testing.assert_array_equal(plain, np.where(inside[..., None], fr, dimmed))


@pytest.mark.parametrize("hw", [(224, 224), (100, 150)])
def test_footprints_agree_with_patches_coverage(hw):
  d = np.load(os.path.join(FIXTURES, "gaze_tiny", "generate_ratio0.75_thr-2.5.npz"))
  foot = viz.scale_footprints(d["gazing_pos"][0], d["if_padded_gazing"][0], L, 16, *hw)
  assert foot.shape == (4, 16) + hw
  cov = np.asarray(P.coverage(d["gazing_pos"], d["if_padded_gazing"], L, 16, *hw))[0]
  np.testing.assert_array_equal(foot.any(0), cov)
  if hw == (224, 224):  # per scale: each gazed cell is exactly (224/g)^2 pixels
    for i, g in enumerate(L.grids):
      np.testing.assert_array_equal(foot[i].sum((1, 2)), d[f"gazing_mask_{i}"][0].sum(1) * (224 // g) ** 2)


def test_non_square_and_tiled_footprints():
  # untiled 100x60 frame: 112-scale cell (0,0) covers rows 7y//100 == 0 (15) and cols 7x//60 == 0 (9)
  foot = viz.scale_footprints(np.array([20]), None, L, 1, 100, 60)
  assert foot[2, 0].sum() == 15 * 9 and foot[2, 0, :15, :9].all()
  # 224x400 frame cut into (1, 2) tiles of 224 px (the second tile padded to 448): tile 0 gazes the
  # 32-scale cell (0,0), tile 1 the cell (1,1) whose footprint [112,224) x [336,448) is cropped at 400.
  ids = np.array([[0], [3]])
  foot = viz.scale_footprints(ids, np.zeros((2, 1), bool), L, 1, 224, 400, tile_grid=(1, 2))
  f = foot[0, 0]
  assert f.sum() == 112 * 112 + 112 * 64 and f[:112, :112].all() and f[112:, 336:].all()
  with pytest.raises(ValueError, match="tile_grid"):
    viz.scale_footprints(ids, None, L, 1, 224, 400)


def test_per_scale_rows_and_training_picture(tmp_path):
  fr = _frames(t=3)
  ids = np.array([0, 69 + 14 * 14 - 1, 265 + 20, 530 + 4])
  rows = viz.per_scale_rows(fr, ids, np.zeros(4, bool), L)
  assert len(rows) == 4 and all(r.shape == fr.shape and r.dtype == np.uint8 for r in rows)
  # scale 224 is the frame itself: the interior of the gazed (13,13) cell is untouched
  np.testing.assert_array_equal(rows[3][0, 209:223, 209:223], fr[0, 209:223, 209:223])
  # scale 32 shows the frame resized to 32x32 (each of its pixels as a 7x7 block) inside cell (0,0)
  small = np.clip(np.round(resize_bicubic_np(fr[0].transpose(2, 0, 1), 32, 32)), 0, 255).transpose(1, 2, 0)
  np.testing.assert_array_equal(rows[0][0, 50, 50], small[7, 7].astype(np.uint8))
  assert rows[0][0, 0, 5].tolist() == list(viz.RED)
  view = rows[0][0, 150, 150]  # outside the gazed cell: 20% of the 32-scale view
  np.testing.assert_array_equal(view, np.round(small[21, 21].astype(np.float32) * 0.2).astype(np.uint8))
  # scale 64: frame 0 has no 64-scale gaze (all dimmed); frame 2 gazes its cell (0,0) = [0,56)^2
  small64 = np.clip(np.round(resize_bicubic_np(fr.transpose(0, 3, 1, 2), 64, 64)), 0, 255).transpose(0, 2, 3, 1)
  cells = (np.arange(224) * 64) // 224
  view64 = small64[:, cells[:, None], cells[None, :]].astype(np.uint8)
  np.testing.assert_array_equal(rows[1][0], np.round(view64[0].astype(np.float32) * 0.2).astype(np.uint8))
  np.testing.assert_array_equal(rows[1][2, 1:55, 1:55], view64[2, 1:55, 1:55])
  assert rows[1][2, 0, 20].tolist() == list(viz.RED) and rows[1][2, 55, 20].tolist() == list(viz.RED)

  rec = fr[:, ::-1].copy()
  path = str(tmp_path / "train.png")
  img = viz.training_picture(path, fr, ids, None, L, reconstructions=rec,
                             reconstructed_frames=np.array([True, False, True]))
  back = np.asarray(Image.open(path).convert("RGB"))
  np.testing.assert_array_equal(back, img)
  margin = img.shape[1] - (2 + 3 * (224 + 2))
  assert img.shape[0] == 2 + 6 * (224 + 2) and margin > 20  # 6 rows: original, 4 scales, recon
  y_rec, x1 = 2 + 5 * 226, margin + 2 + 226
  assert not img[y_rec:y_rec + 224, x1:x1 + 224].any()  # frame 1 was not reconstructed: black
  np.testing.assert_array_equal(img[y_rec:y_rec + 224, margin + 2:margin + 226], rec[0])


def test_png_grid(tmp_path):
  a, b = _frames(3, 20, 30, 1), _frames(2, 16, 30, 2)
  path = str(tmp_path / "grid.png")
  img = viz.save_png_grid(path, [a, b])
  assert img.shape == (2 + 2 * 22, 2 + 3 * 32, 3)
  np.testing.assert_array_equal(np.asarray(Image.open(path)), img)
  np.testing.assert_array_equal(img[2:22, 2 + 32:2 + 62], a[1])
  np.testing.assert_array_equal(img[24:40, 2 + 32:2 + 62], b[1])
  assert (img[40:44] == 255).all() and (img[24:44, 2 + 64:] == 255).all()  # short row / smaller cell: background
  labelled = viz.save_png_grid(path, [a, b], ["original", "gaze"])
  assert labelled.shape[0] == img.shape[0] and labelled.shape[1] > img.shape[1]
  assert (labelled[:, :10] < 128).any()  # label text was drawn in the margin
  with pytest.raises(ValueError, match="uint8"):
    viz.save_png_grid(path, [a.astype(np.float32)])


def test_gif(tmp_path):
  colors = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 0, 0)]
  frames = np.stack([np.broadcast_to(np.uint8(c), (24, 32, 3)) for c in colors])
  path = str(tmp_path / "g.gif")
  viz.save_gif(path, frames, fps=5)
  im = Image.open(path)
  assert im.n_frames == 5 and im.size == (32, 24) and im.info["duration"] == 200 and im.info["loop"] == 0
  for k, c in enumerate(colors):
    im.seek(k)
    assert im.convert("RGB").getpixel((3, 3)) == c
  with pytest.raises(ValueError, match="fps"):
    viz.save_gif(path, frames, fps=0)
