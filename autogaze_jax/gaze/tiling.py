"""Any resolution and any duration.

Two tilings:
  * `res_adapt_tiles` / `recover_res_adapt`: the official resolution adaptation for a
    downstream ViT of another input/patch size (`target_scales`, `target_patch_size`): the square
    H = W = target_scales[-1] input is zero-padded (normalised space) right/bottom to whole tiles of
    14 * patch px, the tiles become batch entries (b, nh, nw), and the per-scale tile masks are stitched,
    cropped to the target feature maps and turned back into ascending gaze ids (gaze order is lost,
    as in the official code).
  * `tile_video` / `merge_tile_masks`: our any-size, any-length path for `AutoGaze.gaze`: the clip is cut
    into clip_len x 224 x 224 tiles (spatially zero-padded in normalised space as 8.1 pads; a partial
    temporal tile is padded by repeating its last frame, which cannot change the real frames' gaze since
    the model is causal in time), every tile is gazed in one batched rollout, and the per-scale masks are
    stitched back to video coordinates.

`AutoGaze.gaze` has two ways in (`RESIZE_MODES`, see `prepare_frames`):
  * "native" (default): the video keeps its resolution and is tiled as above; only a frame whose
    shortest edge is below one tile is first brought up to it (shortest edge to 224, as the official
    processor resizes), so no tile is mostly padding. `kept_ratio_per_frame` counts the patches that
    cover real pixels only.
  * "shortest_edge_224": the official QUICK_START basic path: the processor resizes the shortest edge
    to 224 (PIL bilinear, aspect kept, no crop), the model squashes each frame to 224 x 224 itself, and
    the video is cut into clip_len-frame clips only (one spatial tile per frame).
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np

from autogaze_jax.core.patches import ScaleLayout, gazing_pos_from_masks
from autogaze_jax.gaze.config import GazeConfig
from autogaze_jax.gaze.preprocess import Processor

RESIZE_MODES = ("native", "shortest_edge_224")


@dataclasses.dataclass(frozen=True)
class ResAdaptInfo:
  tile_grids: tuple[int, ...]        # gaze-model grids per scale (2, 4, 7, 14)
  feature_maps: tuple[int, ...]      # target grids per scale, e.g. (4, 8, 14, 28)
  n_tiles: int                       # tiles per side
  pad: int                           # zero pixels added right and bottom
  target: ScaleLayout


def needs_res_adapt(cfg, target_scales, target_patch_size) -> bool:
  if target_scales is None or target_patch_size is None:
    return False
  return (list(target_scales) != list(cfg.scales)
          or [(s // target_patch_size) ** 2 for s in target_scales] != list(cfg.tokens_per_scale))


def res_adapt_tiles(pixel_values: np.ndarray, cfg, target_scales, target_patch_size: int):
  """(B, T, 3, H, W) with H == W == target_scales[-1] -> tiles (B*nh*nw, T, 3, 14p, 14p) and info."""
  b, t, c, h, w = pixel_values.shape
  target = ScaleLayout(tuple(target_scales), int(target_patch_size))
  if len(target.scales) != len(cfg.scales):
    raise ValueError(f"target_scales needs {len(cfg.scales)} scales, got {target.scales}")
  if h != w or h != target.scales[-1]:
    raise ValueError(f"resolution adaptation needs square frames of target_scales[-1] = {target.scales[-1]} px, "
                     f"got {h}x{w} (resize with Processor(size=...) first)")
  grid = cfg.grid  # 14 tokens per side in the gaze model
  fmaps = tuple(s // target.patch_size for s in target.scales)
  n = math.ceil(fmaps[-1] / grid)
  tile = grid * target.patch_size
  pad = n * tile - h
  x = np.pad(pixel_values, ((0, 0), (0, 0), (0, 0), (0, pad), (0, pad)))
  x = x.reshape(b, t, c, n, tile, n, tile).transpose(0, 3, 5, 1, 2, 4, 6).reshape(b * n * n, t, c, tile, tile)
  return x, ResAdaptInfo(tuple(cfg.grid_per_scale), fmaps, n, pad, target)


def stitch_masks(tile_masks, batch: int, nh: int, nw: int, crops) -> list[np.ndarray]:
  """Per-scale tile masks ((batch*nh*nw), T, g*g) -> (batch, T, crop_h*crop_w) stitched row-major, top-left crop."""
  out = []
  for m, (ch, cw) in zip(tile_masks, crops):
    m = np.asarray(m)
    g = math.isqrt(m.shape[-1])
    t = m.shape[1]
    m = m.reshape(batch, nh, nw, t, g, g).transpose(0, 3, 1, 4, 2, 5).reshape(batch, t, nh * g, nw * g)
    out.append(m[:, :, :ch, :cw].reshape(batch, t, ch * cw))
  return out


def recover_res_adapt(tile_out: dict, info: ResAdaptInfo, batch: int) -> dict:
  """Official `recover_output_from_res_adapt`: tile outputs -> outputs in the target id space."""
  masks = stitch_masks(tile_out["gazing_mask"], batch, info.n_tiles, info.n_tiles,
                       [(f, f) for f in info.feature_maps])
  gp, pad, n_t = gazing_pos_from_masks(masks, info.target)
  out = {k: v for k, v in tile_out.items() if k not in ("log_action_probs", "task_loss_prediction")}
  out.update(gazing_pos=gp, if_padded_gazing=pad, num_gazing_each_frame=n_t, gazing_mask=masks,
             num_vision_tokens_each_frame=info.target.tokens_per_frame,
             num_real_gazing_each_frame=np.stack([(~pad[:, np.repeat(np.arange(len(n_t)), n_t) == i]).sum(1)
                                                  for i in range(len(n_t))], 1))
  return out


@dataclasses.dataclass(frozen=True)
class VideoTiling:
  frames: int          # real frames T
  height: int
  width: int
  clip_len: int
  tile: int
  nt: int              # temporal tiles
  nh: int
  nw: int

  @property
  def num_tiles(self) -> int:
    return self.nt * self.nh * self.nw


def tile_video(pixel_values: np.ndarray, clip_len: int = GazeConfig.max_num_frames,
               tile: int = GazeConfig.input_img_size):
  """Normalised (T, 3, H, W) -> tiles (nt*nh*nw, clip_len, 3, tile, tile) in (nt, nh, nw) order."""
  t, c, h, w = pixel_values.shape
  nt, nh, nw = math.ceil(t / clip_len), math.ceil(h / tile), math.ceil(w / tile)
  x = np.pad(pixel_values, ((0, 0), (0, 0), (0, nh * tile - h), (0, nw * tile - w)))
  x = np.concatenate([x, np.repeat(x[-1:], nt * clip_len - t, axis=0)], axis=0)
  x = x.reshape(nt, clip_len, c, nh, tile, nw, tile).transpose(0, 3, 5, 1, 2, 4, 6)
  return x.reshape(nt * nh * nw, clip_len, c, tile, tile), VideoTiling(t, h, w, clip_len, tile, nt, nh, nw)


def merge_tile_masks(tile_masks, tiling: VideoTiling) -> list[np.ndarray]:
  """Per-scale tile masks (num_tiles, clip_len, g*g) -> video masks (T, nh*g, nw*g) (padding frames dropped)."""
  out = []
  for m in tile_masks:
    m = np.asarray(m)
    g = math.isqrt(m.shape[-1])
    m = m.reshape(tiling.nt, tiling.nh, tiling.nw, tiling.clip_len, g, g).transpose(0, 3, 1, 4, 2, 5)
    m = m.reshape(tiling.nt * tiling.clip_len, tiling.nh * g, tiling.nw * g)
    out.append(m[:tiling.frames])
  return out


def clip_video(pixel_values: np.ndarray, clip_len: int, tile: int):
  """Normalised (T, 3, H, W) -> (nt, clip_len, 3, H, W) clips (the last padded by repeating its last
  frame), each a single tile that the model squashes to tile x tile; the tiling addresses that
  tile x tile canvas (rows = cols = 1)."""
  t = pixel_values.shape[0]
  nt = math.ceil(t / clip_len)
  x = np.concatenate([pixel_values, np.repeat(pixel_values[-1:], nt * clip_len - t, axis=0)], axis=0)
  return x.reshape(nt, clip_len, *x.shape[1:]), VideoTiling(t, tile, tile, clip_len, tile, nt, 1, 1)


def prepare_frames(frames: np.ndarray, processor: Processor, resize: str, tile: int):
  """uint8 (T, H, W, 3) -> (model input uint8 frames, canvas uint8 frames) for `resize`:

  native: frames whose shortest edge is under `tile` get it resized to `tile` (the processor's PIL
    bilinear rule, aspect kept); both outputs are those frames (no copy when unchanged).
  shortest_edge_224: the model input has its shortest edge resized to `tile` (224 in every released
    config) as the official processor does; the canvas is the frame squashed to tile x tile (PIL
    bilinear, as SigLIP's processor feeds the downstream ViT), where the masks and pictures live."""
  if resize not in RESIZE_MODES:
    raise ValueError(f"resize={resize!r}: choose one of {', '.join(RESIZE_MODES)}")
  short = dataclasses.replace(processor, do_resize=True, shortest_edge=tile, height=None, width=None)
  if resize == "native":
    if min(frames.shape[1:3]) < tile:
      frames = short.resize(frames)
    return frames, frames
  square = dataclasses.replace(short, shortest_edge=None, height=tile, width=tile)
  return short.resize(frames), square.resize(frames)


def kept_ratio_per_frame(masks, tiling: VideoTiling) -> np.ndarray:
  """(T,) gazed patches / patches over real pixels, all scales together: a patch of scale grid g
  (tile / g px) counts when it overlaps the real height x width, so gazes on the zero padding of the
  last row/column of tiles count in neither."""
  num = np.zeros(tiling.frames)
  den = 0
  for m in masks:
    g = m.shape[1] // tiling.nh
    rows, cols = math.ceil(tiling.height * g / tiling.tile), math.ceil(tiling.width * g / tiling.tile)
    num += np.asarray(m)[:, :rows, :cols].reshape(tiling.frames, -1).sum(1)
    den += rows * cols
  return num / den
