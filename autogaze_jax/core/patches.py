"""Multi-scale gaze patches: id math, per-scale masks, compiled gather and paint-back.

A gaze id addresses one patch of one frame at one scale.
For a `ScaleLayout(scales, patch_size)` with grids `g_s = s // patch_size`, a frame has
`V = sum g_s^2` local ids: the scales are concatenated in ascending order and every scale is
row-major over its `g_s x g_s` grid. The global id is `local + V * t`. The released model uses
scales (32, 64, 112, 224) / patch 16 (V = 265); resolution adaptation uses e.g.
(56, 112, 196, 392) / patch 14 (V = 1060).

Pixel meaning: the patch (row, col) of scale s is the `p x p` block at
(row*p, col*p) of the frame bicubic-resized to s x s. In an H x W frame it therefore covers the
footprint rows `[ceil(row*H/g), ceil((row+1)*H/g))`, i.e. pixel y belongs to grid row `(y*g) // H`
(exact integer arithmetic; for the 224 frame a 32-scale patch covers 112x112 pixels).

Everything here is fixed-shape: padded or out-of-range slots become validity masks and are never
used as indices (they are redirected to a dummy row, like the official code). Python ints and the
frozen `ScaleLayout` are static arguments, so every public function can be jitted and does not
retrace across inputs of the same shape.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import chex
import jax
import jax.numpy as jnp
import numpy as np

from autogaze_jax.core.resize import resize_bicubic

SCATTER_MODES = ("nearest", "bicubic")


@dataclasses.dataclass(frozen=True)
class ScaleLayout:
  """The gaze id space of one frame: ascending `scales` (pixels) cut into `patch_size` patches."""
  scales: tuple[int, ...]
  patch_size: int

  def __post_init__(self):
    object.__setattr__(self, "scales", tuple(int(s) for s in self.scales))
    if not self.scales or list(self.scales) != sorted(set(self.scales)):
      raise ValueError(f"ScaleLayout.scales = {self.scales!r} is invalid: expected distinct ascending sizes")
    if self.patch_size <= 0 or any(s % self.patch_size for s in self.scales):
      raise ValueError(f"ScaleLayout: every scale of {self.scales} must be a positive multiple of "
                       f"patch_size {self.patch_size}")

  @classmethod
  def from_gaze_config(cls, cfg) -> "ScaleLayout":
    """The layout of a `GazeConfig` (its scales; patch = largest scale // its grid, 16 when released)."""
    grids = cfg.grid_per_scale
    layout = cls(tuple(cfg.scales), cfg.scales[-1] // grids[-1])
    if layout.tokens_per_scale != tuple(cfg.tokens_per_scale):
      raise ValueError(f"GazeConfig scales {cfg.scales} with tokens per scale {cfg.tokens_per_scale} "
                       f"are not square grids of one patch size (layout gives {layout.tokens_per_scale})")
    return layout

  @property
  def num_scales(self) -> int:
    return len(self.scales)

  @property
  def grids(self) -> tuple[int, ...]:
    return tuple(s // self.patch_size for s in self.scales)

  @property
  def tokens_per_scale(self) -> tuple[int, ...]:
    return tuple(g * g for g in self.grids)

  @property
  def offsets(self) -> tuple[int, ...]:
    return tuple(int(x) for x in np.cumsum((0,) + self.tokens_per_scale[:-1]))

  @property
  def tokens_per_frame(self) -> int:
    return sum(self.tokens_per_scale)

  @property
  def image_size(self) -> int:
    """The frame size the finest scale samples (224 released, 392 for 392/14 adaptation)."""
    return self.scales[-1]

  def patch_dim(self, channels: int = 3) -> int:
    return channels * self.patch_size ** 2


RELEASED_LAYOUT = ScaleLayout((32, 64, 112, 224), 16)


def pixel_cells(n_pixels: int, grid: int) -> np.ndarray:
  """(n_pixels,) int32: grid row (or column) of every pixel, `(y * grid) // n_pixels` (static)."""
  return ((np.arange(n_pixels, dtype=np.int64) * grid) // n_pixels).astype(np.int32)


def _valid_slots(gazing_pos, if_padded, num_frames: int, layout: ScaleLayout):
  """Real slots: not padded and inside the id space of `num_frames` frames."""
  pos = jnp.asarray(gazing_pos).astype(jnp.int32)
  return pos, (~jnp.asarray(if_padded, bool)) & (pos >= 0) & (pos < num_frames * layout.tokens_per_frame)


def _local_to_scale(local, layout: ScaleLayout):
  """local id (any shape, in [0, V)) -> (scale index, row, col) by comparing with the offsets."""
  offs = jnp.asarray(layout.offsets, jnp.int32)
  scale = jnp.sum(local[..., None] >= offs, axis=-1).astype(jnp.int32) - 1
  grid = jnp.asarray(layout.grids, jnp.int32)[scale]
  within = local - offs[scale]
  return scale, within // grid, within % grid


@functools.partial(jax.jit, static_argnames=("layout",))
def split_ids(gazing_pos, if_padded, num_gazing_each_frame, layout: ScaleLayout):
  """Decode global gaze ids.

  Args:
    gazing_pos: (B, N) int global ids `local + V*t`; padded slots may hold anything.
    if_padded: (B, N) bool.
    num_gazing_each_frame: (T,) int slot counts per frame (slots of a frame are contiguous); gives
      the frame of every slot, padded slots included.
    layout: the id space.
  Returns:
    frame, scale, row, col: (B, N) int32 (scale = index into `layout.scales`); for invalid slots
      frame is the slot's frame and scale/row/col are 0;
    valid: (B, N) bool, not padded and `0 <= id < T*V`.
  """
  chex.assert_rank([gazing_pos, if_padded, num_gazing_each_frame], [2, 2, 1])
  chex.assert_equal_shape([gazing_pos, if_padded])
  n_frames = num_gazing_each_frame.shape[0]
  pos, valid = _valid_slots(gazing_pos, if_padded, n_frames, layout)
  v = layout.tokens_per_frame
  ends = jnp.cumsum(jnp.asarray(num_gazing_each_frame, jnp.int32))
  slot_frame = jnp.minimum(jnp.searchsorted(ends, jnp.arange(pos.shape[1]), side="right"), n_frames - 1)
  safe = jnp.where(valid, pos, 0)
  frame = jnp.where(valid, safe // v, slot_frame[None, :]).astype(jnp.int32)
  scale, row, col = _local_to_scale(safe % v, layout)
  zero = jnp.zeros_like(pos)
  return (frame, jnp.where(valid, scale, zero), jnp.where(valid, row, zero), jnp.where(valid, col, zero),
          valid)


@functools.partial(jax.jit, static_argnames=("num_frames", "layout"))
def gazing_masks(gazing_pos, if_padded, num_frames: int, layout: ScaleLayout) -> tuple[jax.Array, ...]:
  """Per-scale gaze masks, equal to the official `get_mask_from_gazing_pos`.

  Args:
    gazing_pos, if_padded: (B, N); padded (or out-of-range) slots are ignored.
    num_frames: T.
  Returns:
    one float32 (B, T, g_s^2) mask per scale, row-major over the scale's grid, 1 where gazed.
  """
  chex.assert_rank([gazing_pos, if_padded], 2)
  chex.assert_equal_shape([gazing_pos, if_padded])
  b = gazing_pos.shape[0]
  v = layout.tokens_per_frame
  pos, valid = _valid_slots(gazing_pos, if_padded, num_frames, layout)
  # One extra column takes every ignored slot, then is dropped (the official trick).
  dump = num_frames * v
  flat = jnp.zeros((b, dump + 1), jnp.float32)
  flat = flat.at[jnp.arange(b)[:, None], jnp.where(valid, pos, dump)].set(1.0)
  full = flat[:, :dump].reshape(b, num_frames, v)
  return tuple(full[..., o:o + n] for o, n in zip(layout.offsets, layout.tokens_per_scale))


def _check_masks(masks: Sequence, layout: ScaleLayout):
  if len(masks) != layout.num_scales:
    raise ValueError(f"got {len(masks)} masks for {layout.num_scales} scales")
  for m, n in zip(masks, layout.tokens_per_scale):
    chex.assert_rank(m, 3)
    if m.shape[-1] != n:
      raise ValueError(f"mask shapes {[x.shape for x in masks]} do not match tokens per scale "
                       f"{layout.tokens_per_scale}")
  chex.assert_equal_shape_prefix(list(masks), 2)


@functools.partial(jax.jit, static_argnames=("layout", "capacity"))
def gazing_pos_from_masks_fixed(masks: Sequence[jax.Array], layout: ScaleLayout, capacity: int | None = None):
  """Masks -> fixed-capacity gaze ids (the jittable half of `gazing_pos_from_masks`).

  Args:
    masks: per-scale (B, T, g_s^2) masks (nonzero = gazed).
    capacity: static slots per frame (default V: never truncates). If a frame has more gazes than
      `capacity`, the highest ids are dropped.
  Returns:
    ids: (B, T*capacity) int32; frame t owns slots [t*capacity, (t+1)*capacity), real ids first in
      ascending order, then pads holding `V*t - 1` (the official recovery's pad value);
    valid: (B, T*capacity) bool;
    counts: (B, T) int32 real gazes per frame (before truncation).
  """
  _check_masks(masks, layout)
  v = layout.tokens_per_frame
  cap = v if capacity is None else int(capacity)
  full = jnp.concatenate([jnp.asarray(m) != 0 for m in masks], axis=-1)  # (B, T, V)
  b, t = full.shape[:2]
  # Stable sort on "not gazed" puts the gazed ids first, each group in ascending id order.
  order = jnp.argsort((~full).astype(jnp.int32), axis=-1, stable=True)[..., :cap].astype(jnp.int32)
  counts = jnp.sum(full, axis=-1, dtype=jnp.int32)
  if cap > v:
    order = jnp.pad(order, ((0, 0), (0, 0), (0, cap - v)))
  valid = jnp.arange(cap)[None, None, :] < counts[..., None]
  base = (jnp.arange(t, dtype=jnp.int32) * v)[None, :, None]
  ids = jnp.where(valid, order + base, base - 1)
  return ids.reshape(b, t * cap), valid.reshape(b, t * cap), counts


def gazing_pos_from_masks(masks: Sequence, layout: ScaleLayout):
  """Masks -> the official variable-length output (`get_gazing_pos_from_gazing_mask`).

  Host function (its output length depends on the data): per frame the slot count is the maximum
  over the batch of real gazes, real ids come first in ascending order (gaze order is not
  recoverable), pads hold `V*t - 1`.
  Returns numpy (gazing_pos (B, N) int64, if_padded_gazing (B, N) bool, num_gazing_each_frame (T,) int64).
  """
  ids, valid, counts = jax.device_get(gazing_pos_from_masks_fixed(tuple(jnp.asarray(m) for m in masks), layout))
  b, t = counts.shape
  v = layout.tokens_per_frame
  per_frame = counts.max(axis=0)
  keep = (np.arange(v)[None, :] < per_frame[:, None]).reshape(-1)  # (T*V,) slots kept per frame
  return (ids[:, keep].astype(np.int64), ~valid[:, keep], per_frame.astype(np.int64))


@functools.partial(jax.jit, static_argnames=("layout",))
def multiscale_patches(frames, layout: ScaleLayout):
  """The patch canvas of the downstream ViT, indexed by global gaze id.

  Args:
    frames: (B, T, C, H, W) float.
  Returns:
    (B, T*V, C*p*p): per scale (ascending) the frames bicubic-resized (torch semantics) to s x s and
    unfolded into p x p patches, vector order (c, ky, kx), patches row-major.
  """
  chex.assert_rank(frames, 5)
  b, t, c = frames.shape[:3]
  p = layout.patch_size
  per_scale = []
  for s, g in zip(layout.scales, layout.grids):
    img = resize_bicubic(frames, s, s)  # (B, T, C, s, s)
    img = img.reshape(b, t, c, g, p, g, p).transpose(0, 1, 3, 5, 2, 4, 6)
    per_scale.append(img.reshape(b, t, g * g, c * p * p))
  return jnp.concatenate(per_scale, axis=2).reshape(b, t * layout.tokens_per_frame, c * p * p)


def gather_tokens(canvas, gazing_pos, if_padded):
  """Gather rows of a (B, T*V, D) canvas at global ids; invalid slots read row 0 and are zeroed.

  Returns (tokens (B, N, D), valid (B, N)). Any per-id token table (patches, embeddings) works.
  """
  chex.assert_rank([canvas, gazing_pos, if_padded], [3, 2, 2])
  pos = jnp.asarray(gazing_pos).astype(jnp.int32)
  valid = (~jnp.asarray(if_padded, bool)) & (pos >= 0) & (pos < canvas.shape[1])
  idx = jnp.where(valid, pos, 0)  # the official dummy index
  tok = jnp.take_along_axis(canvas, idx[..., None], axis=1)
  return jnp.where(valid[..., None], tok, jnp.zeros((), canvas.dtype)), valid


@functools.partial(jax.jit, static_argnames=("layout",))
def gather_patches(frames, gazing_pos, if_padded, layout: ScaleLayout):
  """Gazed multi-scale patches of (B, T, C, H, W) frames.

  Returns:
    patches: (B, N, C*p*p) in slot order; zero at invalid (padded / out-of-range) slots;
    valid: (B, N) bool.
  """
  chex.assert_rank([frames, gazing_pos, if_padded], [5, 2, 2])
  chex.assert_equal_shape([gazing_pos, if_padded])
  return gather_tokens(multiscale_patches(frames, layout), gazing_pos, if_padded)


def _per_scale_grids(values, gazing_pos, if_padded, layout: ScaleLayout, num_frames: int):
  """Scatter slot values into per-scale grids.

  values: (B, N, D). Returns a list over scales of (grid (B, T, g, g, D), hit (B, T, g, g) bool).
  Two slots with the same id: the one written last by XLA wins (unspecified among duplicates).
  """
  b = gazing_pos.shape[0]
  v = layout.tokens_per_frame
  pos, valid = _valid_slots(gazing_pos, if_padded, num_frames, layout)
  safe = jnp.where(valid, pos, 0)
  frame, local = safe // v, safe % v
  bidx = jnp.arange(b)[:, None]
  out = []
  for o, n, g in zip(layout.offsets, layout.tokens_per_scale, layout.grids):
    here = valid & (local >= o) & (local < o + n)
    dump = num_frames * n
    idx = jnp.where(here, frame * n + local - o, dump)
    hit = jnp.zeros((b, dump + 1), bool).at[bidx, idx].set(True)[:, :dump]
    grid = None
    if values is not None:
      grid = jnp.zeros((b, dump + 1, values.shape[-1]), values.dtype).at[bidx, idx].set(values)[:, :dump]
      grid = grid.reshape(b, num_frames, g, g, values.shape[-1])
    out.append((grid, hit.reshape(b, num_frames, g, g)))
  return out


def _cells_to_pixels(x, grid: int, h: int, w: int):
  """(..., g, g) per-cell values -> (..., H, W) by footprint (static index maps)."""
  return x[..., pixel_cells(h, grid)[:, None], pixel_cells(w, grid)[None, :]]


@functools.partial(jax.jit, static_argnames=("layout", "num_frames", "height", "width"))
def coverage(gazing_pos, if_padded, layout: ScaleLayout, num_frames: int, height: int, width: int):
  """(B, T, H, W) bool: pixels inside the footprint of at least one gazed patch (any scale)."""
  chex.assert_rank([gazing_pos, if_padded], 2)
  out = jnp.zeros((gazing_pos.shape[0], num_frames, height, width), bool)
  for (_, hit), g in zip(_per_scale_grids(None, gazing_pos, if_padded, layout, num_frames), layout.grids):
    out = out | _cells_to_pixels(hit, g, height, width)
  return out


@functools.partial(jax.jit, static_argnames=("layout", "num_frames", "height", "width", "mode"))
def scatter_patches(patch_values, gazing_pos, if_padded, layout: ScaleLayout, num_frames: int, height: int,
                    width: int, mode: str = "nearest", background=None):
  """Paint gazed patches back onto frames: the inverse of `gather_patches`.

  Each scale's gazed patches are folded into an s x s image, upsampled to H x W (`mode`:
  "nearest" = every pixel reads the scale pixel `(y*s)//H`; "bicubic" = torch-exact bicubic, whose
  taps near a gazed footprint's border also read neighbouring non-gazed cells as zeros), and drawn
  inside the footprints of the gazed patches, coarse scales first so finer patches end on top.

  Args:
    patch_values: (B, N, C*p*p), vector order (c, ky, kx).
    gazing_pos, if_padded: (B, N); invalid slots are not drawn.
    num_frames, height, width: output size T, H, W.
    background: optional (B, T, C, H, W) drawn under everything (default zeros).
  Returns:
    (B, T, C, H, W) canvas in `patch_values.dtype`.
  """
  if mode not in SCATTER_MODES:
    raise ValueError(f"scatter_patches: mode={mode!r}, expected one of {SCATTER_MODES}")
  chex.assert_rank([patch_values, gazing_pos, if_padded], [3, 2, 2])
  chex.assert_equal_shape_prefix([patch_values, gazing_pos, if_padded], 2)
  b = patch_values.shape[0]
  p = layout.patch_size
  c, rem = divmod(patch_values.shape[-1], p * p)
  if rem:
    raise ValueError(f"patch dim {patch_values.shape[-1]} is not C*{p}*{p}")
  shape = (b, num_frames, c, height, width)
  canvas = jnp.zeros(shape, patch_values.dtype) if background is None else jnp.asarray(background,
                                                                                       patch_values.dtype)
  chex.assert_shape(canvas, shape)
  grids = _per_scale_grids(patch_values, gazing_pos, if_padded, layout, num_frames)
  for (grid, hit), s, g in zip(grids, layout.scales, layout.grids):
    img = grid.reshape(b, num_frames, g, g, c, p, p).transpose(0, 1, 4, 2, 5, 3, 6).reshape(
        b, num_frames, c, s, s)
    if mode == "nearest":
      up = img[..., pixel_cells(height, s)[:, None], pixel_cells(width, s)[None, :]]
    else:
      up = resize_bicubic(img, height, width)
    inside = _cells_to_pixels(hit, g, height, width)[:, :, None]
    canvas = jnp.where(inside, up, canvas)
  return canvas
