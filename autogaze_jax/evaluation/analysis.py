"""Where and when a gaze model looks: scale vs local detail, and redundancy over time (host numpy).

Gaze ids are decoded with the patch geometry of `core.patches` (a patch (row, col) of a scale with grid g
covers the pixels whose cell `(y*g)//H, (x*g)//W` is (row, col) of the whole frame), so per-cell
statistics are computed once per scale with `pixel_cells` and looked up for every gaze.
  * detail of a patch = variance of the Laplacian of the grey frame over the patch's pixels;
  * motion of a patch at frame t = mean |grey_t - grey_(t-1)| (0..255 scale) over its pixels;
  * scale vs detail: Spearman's rho (scipy.stats.spearmanr) between the patch scale (pixels) and the
    detail of every gazed patch (paper: rho = 0.12, p < 0.001: finer scales go to detailed regions);
  * redundancy: the gaze ratio per frame index, and how often a patch gazed at frame t-1 is gazed again
    at frame t when its region is static (motion <= threshold) vs moving.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage, stats

from autogaze_jax.core.patches import ScaleLayout, pixel_cells

MOTION_THRESHOLD = 4.0    # mean absolute grey difference (0..255) above which a patch region moves


def _grey(frames_uint8) -> np.ndarray:
  f = np.asarray(frames_uint8)
  if f.dtype != np.uint8 or f.ndim != 4 or f.shape[-1] != 3:
    raise ValueError(f"frames must be uint8 (T, H, W, 3), got {f.dtype} {f.shape}")
  return f.astype(np.float64).mean(-1)


def cell_means(values, grid: int) -> np.ndarray:
  """(T, H, W) -> (T, grid, grid): the mean over each cell's pixels."""
  t, h, w = values.shape
  cy, cx = pixel_cells(h, grid), pixel_cells(w, grid)
  idx = (cy[:, None] * grid + cx[None, :]).ravel()
  counts = np.bincount(idx, minlength=grid * grid)
  sums = np.stack([np.bincount(idx, weights=v.ravel(), minlength=grid * grid) for v in values])
  return (sums / counts).reshape(t, grid, grid)


def detail_maps(frames_uint8, layout: ScaleLayout) -> list[np.ndarray]:
  """Per scale (T, g, g): Laplacian variance of the grey frame (0..1) over each patch."""
  grey = _grey(frames_uint8) / 255.0
  lap = np.stack([ndimage.laplace(g) for g in grey])
  return [np.maximum(cell_means(lap * lap, g) - np.square(cell_means(lap, g)), 0.0) for g in layout.grids]


def motion_maps(frames_uint8, layout: ScaleLayout) -> list[np.ndarray]:
  """Per scale (T, g, g): mean |grey_t - grey_(t-1)| over each patch (frame 0: 0)."""
  grey = _grey(frames_uint8)
  diff = np.concatenate([np.zeros_like(grey[:1]), np.abs(np.diff(grey, axis=0))])
  return [cell_means(diff, g) for g in layout.grids]


def decode(gazing_pos, if_padded, layout: ScaleLayout, num_frames: int) -> dict:
  """Real gaze ids of one clip (N,) -> {frame, scale, row, col, local} int arrays (padded/out-of-range dropped)."""
  pos = np.asarray(gazing_pos, np.int64).ravel()
  pad = np.zeros(pos.shape, bool) if if_padded is None else np.asarray(if_padded, bool).ravel()
  v = layout.tokens_per_frame
  pos = pos[~pad & (pos >= 0) & (pos < num_frames * v)]
  frame, local = pos // v, pos % v
  offs = np.asarray(layout.offsets)
  scale = np.searchsorted(offs, local, side="right") - 1
  grid = np.asarray(layout.grids)[scale]
  within = local - offs[scale]
  return {"frame": frame, "scale": scale, "row": within // grid, "col": within % grid, "local": local}


def scale_detail(clips_uint8, gazes, layout: ScaleLayout) -> dict:
  """Spearman's rho between the scale (pixels) and the detail of every gazed patch of every clip.

  clips_uint8: (N, T, H, W, 3); gazes: N pairs (gazing_pos, if_padded) of each clip.
  Returns {rho, p_value, num_gazes, mean_detail_per_scale {scale: mean detail}}.
  """
  sizes, details = [], []
  for frames, (pos, pad) in zip(clips_uint8, gazes):
    maps = detail_maps(frames, layout)
    d = decode(pos, pad, layout, len(frames))
    for i in range(layout.num_scales):
      sel = d["scale"] == i
      details.append(maps[i][d["frame"][sel], d["row"][sel], d["col"][sel]])
      sizes.append(np.full(int(sel.sum()), layout.scales[i]))
  sizes, details = np.concatenate(sizes), np.concatenate(details)
  per_scale = {int(s): float(details[sizes == s].mean()) for s in layout.scales if np.any(sizes == s)}
  if len(sizes) < 3 or np.unique(sizes).size < 2 or np.unique(details).size < 2:
    return {"rho": float("nan"), "p_value": float("nan"), "num_gazes": int(len(sizes)),
            "mean_detail_per_scale": per_scale}
  res = stats.spearmanr(sizes, details)
  return {"rho": float(res.statistic), "p_value": float(res.pvalue), "num_gazes": int(len(sizes)),
          "mean_detail_per_scale": per_scale}


def gaze_ratio_by_frame(num_real_gazing_each_frame, tokens_per_frame: int) -> np.ndarray:
  """(N, T) real gazes per clip and frame -> (T,) mean gaze ratio at each frame index."""
  return np.asarray(num_real_gazing_each_frame, np.float64).mean(0) / tokens_per_frame


def repeat_gaze(clips_uint8, gazes, layout: ScaleLayout, motion_threshold: float = MOTION_THRESHOLD) -> dict:
  """How often a patch gazed at frame t-1 is gazed again at frame t, split by the motion of its region
  between t-1 and t. Returns {static|moving: {gazed_before, gazed_again, rate}, motion_threshold}."""
  counts = {"static": [0, 0], "moving": [0, 0]}
  for frames, (pos, pad) in zip(clips_uint8, gazes):
    t = len(frames)
    motion = motion_maps(frames, layout)
    d = decode(pos, pad, layout, t)
    for f in range(1, t):
      before = np.unique(d["local"][d["frame"] == f - 1])
      now = set(d["local"][d["frame"] == f].tolist())
      for local in before:
        s = int(np.searchsorted(layout.offsets, local, side="right") - 1)
        g = layout.grids[s]
        r, c = divmod(int(local) - layout.offsets[s], g)
        kind = "moving" if motion[s][f, r, c] > motion_threshold else "static"
        counts[kind][0] += 1
        counts[kind][1] += int(local) in now
  out = {k: {"gazed_before": n, "gazed_again": a, "rate": (a / n if n else float("nan"))}
         for k, (n, a) in counts.items()}
  out["motion_threshold"] = motion_threshold
  return out
