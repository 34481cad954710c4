"""Gaze pictures (numpy + PIL): overlays, PNG grids, GIFs, the train/validation picture.

Geometry follows `autogaze_jax.core.patches`: a patch (row, col) of a scale with grid g covers the
pixels whose cell `(y*g)//H, (x*g)//W` is (row, col) of the area the gaze saw. That area is the
whole H x W frame (the gaze model squashes it to 224x224, so footprints stretch by H/224, W/224),
or, for tiled videos, one `tile_size` tile of the frame padded on the right/bottom: then
`gazing_pos` has one row per tile in (row-major) `tile_grid` order and pixels of the padding are
never gazed. Pictures are computed on the host only (no JAX): they run in data/CLI processes.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from autogaze_jax.core.patches import ScaleLayout
from autogaze_jax.core.resize import resize_bicubic_np

# Outline colour per scale, coarse -> fine (more scales cycle).
SCALE_COLORS = ((66, 133, 244), (52, 168, 83), (251, 188, 5), (234, 67, 53))
RED = (255, 0, 0)
DIM = 0.25  # brightness kept outside gazed footprints in overlays
SCALE_ROW_DIM = 0.2  # the official per-scale rows dim to 20%


# ---------------------------------------------------------------- geometry (host)

def _check_frames(frames, name="frames"):
  frames = np.asarray(frames)
  if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] == 0:
    raise ValueError(f"{name} must be uint8 (T, H, W, 3) with T >= 1, got {frames.dtype} {frames.shape}")
  return frames


class _Axis:
  """Static per-pixel maps along one image axis for one grid: tile index, cell, cell-edge distance."""

  def __init__(self, n_pixels: int, n_tiles: int, tile: int, grid: int):
    y = np.arange(n_pixels)
    self.tile = np.minimum(y // tile, n_tiles - 1)
    self.inside = y < n_tiles * tile  # pixels of the frame that some tile saw
    local = y - self.tile * tile
    self.cell = np.minimum((local * grid) // tile, grid - 1)  # clamped past the last tile (masked)
    start = -((-self.cell * tile) // grid)  # ceil(cell*tile/grid): first pixel of the cell
    end = -((-(self.cell + 1) * tile) // grid)  # one past its last pixel
    self.edge_dist = np.minimum(local - start, end - 1 - local)


def _resolve_tiles(gazing_pos, if_padded, height, width, tile_grid, tile_size, layout):
  pos = np.asarray(gazing_pos)
  pad = np.zeros(pos.shape, bool) if if_padded is None else np.asarray(if_padded, bool)
  if pos.ndim == 1:
    pos, pad = pos[None], pad[None]
  if pos.ndim != 2 or pad.shape != pos.shape:
    raise ValueError(f"gazing_pos {np.shape(gazing_pos)} / if_padded {np.shape(if_padded)}: expected (N,) or "
                     "(n_tiles, N) of equal shapes")
  grid, size = _tile_geometry(height, width, tile_grid, tile_size, layout)
  if grid[0] * grid[1] != pos.shape[0]:
    raise ValueError(f"gazing_pos has {pos.shape[0]} rows but tile_grid {tile_grid} needs {grid[0] * grid[1]} "
                     "(pass tile_grid=(nh, nw) for tiled videos)")
  return pos, pad, grid, size


def _tile_geometry(height, width, tile_grid, tile_size, layout):
  """((nh, nw), (th, tw)): one tile = the whole frame unless `tile_grid` is given; tiles default to
  the layout's image size (224 px)."""
  if tile_grid is None:
    return (1, 1), (height, width)
  ts = layout.image_size if tile_size is None else tile_size
  th, tw = (ts, ts) if np.isscalar(ts) else tuple(ts)
  return (int(tile_grid[0]), int(tile_grid[1])), (int(th), int(tw))


def scale_footprints(gazing_pos, if_padded, layout: ScaleLayout, num_frames: int, height: int, width: int, *,
                     tile_grid=None, tile_size=None, line_width: int = 0):
  """Per-scale gazed footprints in pixels.

  Args:
    gazing_pos, if_padded: (N,) for one video, or (n_tiles, N) with `tile_grid`. Padded or
      out-of-range ids are ignored.
    line_width: if > 0 also return, per scale, the pixels within `line_width` of the border of a
      gazed cell (for outlines).
  Returns:
    (S, T, H, W) bool footprints [, (S, T, H, W) bool outline pixels].
  """
  pos, pad, (nh, nw), (th, tw) = _resolve_tiles(gazing_pos, if_padded, height, width, tile_grid, tile_size, layout)
  v = layout.tokens_per_frame
  valid = ~pad & (pos >= 0) & (pos < num_frames * v)
  k_idx, slot = np.nonzero(valid)
  ids = pos[k_idx, slot]
  frame, local = ids // v, ids % v
  foot = np.zeros((layout.num_scales, num_frames, height, width), bool)
  edge = np.zeros_like(foot) if line_width > 0 else None
  for i, (off, n, g) in enumerate(zip(layout.offsets, layout.tokens_per_scale, layout.grids)):
    sel = (local >= off) & (local < off + n)
    hit = np.zeros((nh * nw, num_frames, g, g), bool)
    hit[k_idx[sel], frame[sel], (local[sel] - off) // g, (local[sel] - off) % g] = True
    ay, ax = _Axis(height, nh, th, g), _Axis(width, nw, tw, g)
    tile = ay.tile[:, None] * nw + ax.tile[None, :]
    m = hit[tile, :, ay.cell[:, None], ax.cell[None, :]]  # (H, W, T)
    m &= (ay.inside[:, None] & ax.inside[None, :])[..., None]
    foot[i] = np.moveaxis(m, -1, 0)
    if edge is not None:
      near = (ay.edge_dist[:, None] < line_width) | (ax.edge_dist[None, :] < line_width)
      edge[i] = foot[i] & near[None]
  return (foot, edge) if edge is not None else foot


def _dim(x, factor):
  return np.round(x.astype(np.float32) * factor).astype(np.uint8)


# ---------------------------------------------------------------- pictures

def gaze_overlay(frames_uint8, gazing_pos, if_padded, layout: ScaleLayout, *, dim: float = DIM,
                 colors: Sequence[tuple[int, int, int]] = SCALE_COLORS, line_width: int = 1, tile_grid=None,
                 tile_size=None) -> np.ndarray:
  """Frames with every gazed patch drawn at its scale.

  Args:
    frames_uint8: (T, H, W, 3) uint8.
    gazing_pos, if_padded: (N,) global ids of this video (or (n_tiles, N) with `tile_grid`).
    dim: brightness kept outside all gazed footprints.
    colors: outline colour per scale (coarse -> fine); line_width 0 draws no outlines. Coarse
      outlines are drawn last, on top: they are few and would vanish under the fine grid.
  Returns:
    (T, H, W, 3) uint8: original pixels inside gazed footprints (except outline pixels), the rest dimmed.
  """
  frames = _check_frames(frames_uint8)
  t, h, w, _ = frames.shape
  res = scale_footprints(gazing_pos, if_padded, layout, t, h, w, tile_grid=tile_grid, tile_size=tile_size,
                         line_width=line_width)
  foot, edge = res if line_width > 0 else (res, None)
  out = np.where(foot.any(0)[..., None], frames, _dim(frames, dim))
  if edge is not None:
    for i in reversed(range(layout.num_scales)):
      out[edge[i]] = np.asarray(colors[i % len(colors)], np.uint8)
  return out


def _scale_view(frames, layout: ScaleLayout, i: int, tile_grid, tile_size):
  """The frames as scale i sees them: each gazed area bicubic-resized to s x s, shown back at H x W
  (nearest), so the row shows the scale's real resolution."""
  t, h, w, _ = frames.shape
  s = layout.scales[i]
  (nh, nw), (th, tw) = _tile_geometry(h, w, tile_grid, tile_size, layout)
  # zero padding right/bottom up to whole tiles; pixels past the last tile stay black
  canvas = np.zeros((t, max(h, nh * th), max(w, nw * tw), 3), np.float32)
  canvas[:, :h, :w] = frames
  out = np.zeros_like(canvas)
  ry, rx = (np.arange(th) * s) // th, (np.arange(tw) * s) // tw
  for a in range(nh):
    for b in range(nw):
      tile = canvas[:, a * th:(a + 1) * th, b * tw:(b + 1) * tw].transpose(0, 3, 1, 2)
      small = resize_bicubic_np(tile, s, s).transpose(0, 2, 3, 1)
      out[:, a * th:(a + 1) * th, b * tw:(b + 1) * tw] = small[:, ry[:, None], rx[None, :]]
  return np.clip(np.round(out[:, :h, :w]), 0, 255).astype(np.uint8)


def per_scale_rows(frames_uint8, gazing_pos, if_padded, layout: ScaleLayout, *, dim: float = SCALE_ROW_DIM,
                   color=RED, line_width: int = 1, tile_grid=None, tile_size=None) -> list[np.ndarray]:
  """The official per-scale visualisation: one (T, H, W, 3) uint8 row per scale,
  the frame at that scale's resolution, dimmed outside that scale's gazed patches, gazed patches
  outlined in `color`."""
  frames = _check_frames(frames_uint8)
  t, h, w, _ = frames.shape
  foot, edge = scale_footprints(gazing_pos, if_padded, layout, t, h, w, tile_grid=tile_grid,
                                tile_size=tile_size, line_width=max(line_width, 1))
  rows = []
  for i in range(layout.num_scales):
    view = _scale_view(frames, layout, i, tile_grid, tile_size)
    row = np.where(foot[i][..., None], view, _dim(view, dim))
    if line_width > 0:
      row[edge[i]] = np.asarray(color, np.uint8)
    rows.append(row)
  return rows


def _label_font():
  try:
    return ImageFont.load_default(size=14)
  except TypeError:  # Pillow < 10.1 has a fixed-size bitmap font only
    return ImageFont.load_default()


def grid_image(rows: Sequence[np.ndarray], labels: Sequence[str] | None = None, *, pad: int = 2,
               background: int = 255) -> np.ndarray:
  """Stack rows of frames into one (H', W', 3) uint8 picture.

  rows: each (T_r, H_r, W_r, 3) uint8; cells are top-left aligned in a grid of the largest cell size,
  shorter rows leave background. labels: optional text per row, written in a left margin.
  """
  if not rows:
    raise ValueError("grid_image needs at least one row")
  rows = [_check_frames(r, f"rows[{k}]") for k, r in enumerate(rows)]
  if labels is not None and len(labels) != len(rows):
    raise ValueError(f"{len(labels)} labels for {len(rows)} rows")
  ch, cw = max(r.shape[1] for r in rows), max(r.shape[2] for r in rows)
  ncol = max(r.shape[0] for r in rows)
  font = _label_font() if labels else None
  margin = 0
  if labels:
    margin = max(int(np.ceil(font.getlength(str(s)))) for s in labels) + 2 * pad + 4
  out = np.full((pad + len(rows) * (ch + pad), margin + pad + ncol * (cw + pad), 3), background, np.uint8)
  for r, row in enumerate(rows):
    y = pad + r * (ch + pad)
    for c, img in enumerate(row):
      x = margin + pad + c * (cw + pad)
      out[y:y + img.shape[0], x:x + img.shape[1]] = img
  if labels:
    im = Image.fromarray(out)
    draw = ImageDraw.Draw(im)
    for r, s in enumerate(labels):
      draw.text((pad + 2, pad + r * (ch + pad) + ch // 2), str(s), fill=(0, 0, 0), font=font, anchor="lm")
    out = np.asarray(im)
  return out


def save_png_grid(path: str, rows: Sequence[np.ndarray], labels: Sequence[str] | None = None, *,
                  pad: int = 2) -> np.ndarray:
  """Write `grid_image(rows, labels)` as a PNG; returns the picture (H', W', 3) uint8."""
  img = grid_image(rows, labels, pad=pad)
  Image.fromarray(img).save(path, format="PNG")
  return img


def save_gif(path: str, frames, fps: float = 4.0, loop: int = 0) -> None:
  """Write (T, H, W, 3) uint8 frames as an animated GIF at `fps` (looping forever by default).

  PIL merges consecutive identical frames into one longer frame (the timing stays right)."""
  frames = _check_frames(frames)
  if not fps > 0:
    raise ValueError(f"fps must be positive, got {fps}")
  ims = [Image.fromarray(f) for f in frames]
  ims[0].save(path, format="GIF", save_all=True, append_images=ims[1:], duration=int(round(1000 / fps)),
              loop=loop, optimize=False)


def gaze_rows(frames_uint8, gazing_pos, if_padded, layout: ScaleLayout, *, per_scale: bool = False,
              tile_grid=None, tile_size=None):
  """Rows for the gaze picture: original, overlay [, one row per scale]. Returns (rows, labels)."""
  frames = _check_frames(frames_uint8)
  rows = [frames, gaze_overlay(frames, gazing_pos, if_padded, layout, tile_grid=tile_grid, tile_size=tile_size)]
  labels = ["original", "gaze"]
  if per_scale:
    rows += per_scale_rows(frames, gazing_pos, if_padded, layout, tile_grid=tile_grid, tile_size=tile_size)
    labels += [f"scale {s}" for s in layout.scales]
  return rows, labels


def training_picture(path: str | None, frames_uint8, gazing_pos, if_padded, layout: ScaleLayout, *,
                     reconstructions=None, reconstructed_frames=None) -> np.ndarray:
  """The train/validation picture: original row, one row per scale (frame at that
  scale, dimmed to 20% outside gazed patches, red outlines), and the reconstruction row.

  Args:
    frames_uint8: (T, H, W, 3) uint8 (un-normalised frames of the plotted sample).
    gazing_pos, if_padded: (N,) that sample's gaze.
    reconstructions: optional (T, H, W, 3) uint8.
    reconstructed_frames: optional (T,) bool, frames that were reconstructed; the others are black.
    path: PNG to write, or None to only return the picture.
  Returns:
    the picture (H', W', 3) uint8.
  """
  frames = _check_frames(frames_uint8)
  rows = [frames] + per_scale_rows(frames, gazing_pos, if_padded, layout)
  labels = ["original"] + [f"scale {s}" for s in layout.scales]
  if reconstructions is not None:
    rec = _check_frames(reconstructions, "reconstructions")
    if rec.shape != frames.shape:
      raise ValueError(f"reconstructions {rec.shape} must match frames {frames.shape}")
    if reconstructed_frames is not None:
      keep = np.asarray(reconstructed_frames, bool)
      if keep.shape != (frames.shape[0],):
        raise ValueError(f"reconstructed_frames must be ({frames.shape[0]},) bool, got {keep.shape}")
      rec = np.where(keep[:, None, None, None], rec, np.uint8(0))
    rows.append(rec)
    labels.append("recon")
  img = grid_image(rows, labels)
  if path is not None:
    Image.fromarray(img).save(path, format="PNG")
  return img
