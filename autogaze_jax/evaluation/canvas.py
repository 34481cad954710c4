"""Pictures of what a gazed model sees: the interframe canvas and the reconstruction side by side.

The interframe canvas is the running picture a downstream model effectively has: it starts black and,
frame by frame, every gazed patch is painted with that frame's content at the patch's scale (the area
resampled to the scale's resolution, as `viz.per_scale_rows` shows it); coarse scales are painted first,
finer ones over them; regions not gazed keep what an earlier frame painted there. Its per-frame PSNR
against the original says how stale/blurred that picture is.
"""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from autogaze_jax.core.patches import ScaleLayout
from autogaze_jax.evaluation import viz
from autogaze_jax.evaluation.quality import psnr, uint8_to_unit


def interframe_canvas(frames_uint8, gazing_pos, if_padded, layout: ScaleLayout) -> np.ndarray:
  """(T, H, W, 3) uint8 frames + one clip's gaze (N,) -> (T, H, W, 3) uint8 running canvas."""
  frames = viz._check_frames(frames_uint8)
  t, h, w, _ = frames.shape
  foot = viz.scale_footprints(gazing_pos, if_padded, layout, t, h, w)          # (S, T, H, W)
  views = [viz._scale_view(frames, layout, i, None, None) for i in range(layout.num_scales)]
  canvas = np.zeros((h, w, 3), np.uint8)
  out = np.empty_like(frames)
  for f in range(t):
    for i in range(layout.num_scales):               # coarse -> fine: finer patches win where they overlap
      canvas = np.where(foot[i, f][..., None], views[i][f], canvas)
    out[f] = canvas
  return out


def per_frame_psnr(frames_uint8, pictures_uint8) -> np.ndarray:
  """(T,) PSNR (dB, range 1) of each picture against its frame."""
  return psnr(uint8_to_unit(pictures_uint8), uint8_to_unit(frames_uint8))


def label_frames(frames_uint8, texts) -> np.ndarray:
  """Write one short text (e.g. '23.1 dB') into the top-left corner of every frame."""
  frames = viz._check_frames(frames_uint8)
  font = viz._label_font()
  out = []
  for f, s in zip(frames, texts):
    im = Image.fromarray(f.copy())
    draw = ImageDraw.Draw(im)
    box = draw.textbbox((3, 2), s, font=font)
    draw.rectangle(box, fill=(0, 0, 0))
    draw.text((3, 2), s, fill=(255, 255, 0), font=font)
    out.append(np.asarray(im))
  return np.stack(out)


def comparison_rows(frames_uint8, gazing_pos, if_padded, layout: ScaleLayout, reconstruction_uint8=None):
  """Rows original / gazed patches / judge reconstruction (with per-frame PSNR) / interframe canvas (with
  per-frame PSNR). Returns (rows, labels, {"reconstruction_psnr": (T,), "canvas_psnr": (T,)})."""
  frames = viz._check_frames(frames_uint8)
  over = viz.gaze_overlay(frames, gazing_pos, if_padded, layout)
  canvas = interframe_canvas(frames, gazing_pos, if_padded, layout)
  rows, labels, numbers = [frames, over], ["original", "gazed"], {}
  if reconstruction_uint8 is not None:
    rec = viz._check_frames(reconstruction_uint8, "reconstruction")
    numbers["reconstruction_psnr"] = per_frame_psnr(frames, rec)
    rows.append(label_frames(rec, [f"{p:.1f} dB" for p in numbers["reconstruction_psnr"]]))
    labels.append("reconstruction")
  numbers["canvas_psnr"] = per_frame_psnr(frames, canvas)
  rows.append(label_frames(canvas, [f"{p:.1f} dB" for p in numbers["canvas_psnr"]]))
  labels.append("canvas")
  return rows, labels, numbers


def save_comparison(png_path: str, gif_path: str | None, frames_uint8, gazing_pos, if_padded, layout: ScaleLayout,
                    reconstruction_uint8=None, max_columns: int | None = None) -> dict:
  """PNG grid of `comparison_rows` (the first `max_columns` frames) and a GIF of the rows side by side
  over all frames. Returns the per-frame PSNRs and the picture."""
  rows, labels, numbers = comparison_rows(frames_uint8, gazing_pos, if_padded, layout, reconstruction_uint8)
  cut = [r[:max_columns] for r in rows] if max_columns else rows
  img = viz.save_png_grid(png_path, cut, labels)
  if gif_path:
    viz.save_gif(gif_path, np.concatenate(rows, axis=2))
  return {**numbers, "image": img}
