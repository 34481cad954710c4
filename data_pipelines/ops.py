"""Numpy-only clip ops. Safe inside grain worker processes: no JAX here.

Conventions: a clip is uint8 `(T, H, W, 3)` RGB; model views are float32 `(T, 3, S, S)`.
"""
from __future__ import annotations

import numpy as np

from autogaze_jax.gaze.config import GazeConfig
from autogaze_jax.gaze.preprocess import Processor

CLIP_LEN = GazeConfig().max_num_frames    # frames per clip: the gaze model's clip length
SIZE = 224

# Repair / skip reasons counted per item. The order is the layout of the per-item `data_stats`
# vector (int32 (len(STAT_KEYS),)), which rides inside batches so counts made in grain worker
# processes reach the main process. Append only: checkpoints store counts by name, not index.
STAT_KEYS = (
    "ok",                  # item produced from its own video
    "padded_short",        # < clip_len decoded frames: last frame repeated (official behaviour)
    "cropped_non_square",  # non-square: center-cropped identically for both views
    "converted_gray",      # grayscale source converted to RGB
    "converted_alpha",     # source with alpha channel: alpha dropped
    "skip_zero_length",    # empty file
    "skip_no_video_stream",  # e.g. audio-only
    "skip_open_error",     # container cannot be opened (corrupt / truncated header)
    "skip_decode_error",   # decoding raised
    "skip_no_frames",      # opened but no frame decoded
    "skip_bad_frames",     # decoded frames with impossible shape
    "substituted",         # this item replaces a skipped video (next valid index)
)
STAT_INDEX = {k: i for i, k in enumerate(STAT_KEYS)}


def stats_vector(**counts: int) -> np.ndarray:
  """int32 (len(STAT_KEYS),) with the given named counts."""
  v = np.zeros((len(STAT_KEYS),), np.int32)
  for k, n in counts.items():
    v[STAT_INDEX[k]] += n
  return v


def stats_dict(vec) -> dict[str, int]:
  """Named counts from a stats vector (or a sum of them)."""
  vec = np.asarray(vec).reshape(-1, len(STAT_KEYS)).sum(0)
  return {k: int(vec[i]) for i, k in enumerate(STAT_KEYS)}


def relative_video_path(path: str) -> str:
  """Label-join key: the last three `/`-separated components (official `get_relative_video_path`)."""
  parts = str(path).replace("\\", "/").split("/")
  return "/".join(parts[-3:]) if len(parts) >= 3 else str(path)


def sample_frame_indices(clip_len: int, seg_len: int, frame_sample_rate: int = 1,
                         rng: np.random.Generator | None = None) -> np.ndarray:
  """int64 (clip_len,) frame indices with the official rule.

  `seg_len <= clip_len*rate`: `0..min(clip_len, seg_len)-1`, edge-padded to clip_len.
  Otherwise a window `[start, start + clip_len*rate)` sampled by `linspace(start, end, clip_len)`
  clipped to `end-1` and floored; start = 0 (the recipes' default: the first 16 decoded frames),
  or, with `rng`, end uniform in `[clip_len*rate, seg_len)` (the official random variant).
  """
  if seg_len < 1:
    raise ValueError(f"seg_len must be >= 1, got {seg_len}")
  span = int(clip_len * frame_sample_rate)
  if seg_len <= span:
    idx = np.arange(min(clip_len, seg_len))
    return np.pad(idx, (0, clip_len - len(idx)), mode="edge").astype(np.int64)
  if rng is not None:
    end = int(rng.integers(span, seg_len))
    start = end - span
  else:
    start, end = 0, span
  return np.clip(np.linspace(start, end, num=clip_len), start, end - 1).astype(np.int64)


def pad_or_trim(frames: np.ndarray, clip_len: int = CLIP_LEN) -> tuple[np.ndarray, int]:
  """(T, H, W, 3) -> ((clip_len, H, W, 3), number of padded frames); pads by repeating the last frame."""
  t = frames.shape[0]
  if t < 1:
    raise ValueError("cannot pad an empty clip")
  if t >= clip_len:
    return frames[:clip_len], 0
  return np.concatenate([frames, np.repeat(frames[-1:], clip_len - t, axis=0)], axis=0), clip_len - t


def resize_short_center_crop(frames: np.ndarray, size: int = SIZE) -> np.ndarray:
  """uint8 (T, H, W, 3) -> uint8 (T, size, size, 3): shortest edge to `size` with PIL bilinear
  (the official processor's resize, long side truncated), then a center crop of `size` (the task
  view). For a square input this equals the gaze view's resize exactly."""
  frames = Processor(shortest_edge=size).resize(frames)
  h, w = frames.shape[1:3]
  top, left = (h - size) // 2, (w - size) // 2
  return np.ascontiguousarray(frames[:, top:top + size, left:left + size])


def views(frames: np.ndarray, processor: Processor | None = None) -> dict[str, np.ndarray]:
  """uint8 (T, S, S, 3) square clip, already resized -> `video`, `video_for_task` float32 (T, 3, S, S).

  Both views use the official normalisation (`x/127.5 - 1`, then ImageNet mean/std). On our square
  stored clips the processor's shortest-edge resize is the identity, so the two views are equal;
  they are kept separate for parity with the official item."""
  p = processor or Processor()
  video = p.normalize(frames)  # frames are already at the model size (sources resize/crop them)
  return {"video": video, "video_for_task": video.copy()}


def random_resized_crop(frames: np.ndarray, rng: np.random.Generator, scale=(0.08, 1.0),
                        ratio=(3 / 4, 4 / 3), size: int = SIZE) -> np.ndarray:
  """One torchvision-style RandomResizedCrop box for the whole clip (both views share it, as the
  official augmentation stacks them). uint8 (T, H, W, 3) -> uint8 (T, size, size, 3), PIL bilinear."""
  from PIL import Image
  t, h, w, _ = frames.shape
  area = h * w
  box = None
  for _ in range(10):  # torchvision's rejection sampling, then a center-crop fallback
    target = area * rng.uniform(*scale)
    ar = np.exp(rng.uniform(np.log(ratio[0]), np.log(ratio[1])))
    cw, ch = int(round(np.sqrt(target * ar))), int(round(np.sqrt(target / ar)))
    if 0 < cw <= w and 0 < ch <= h:
      top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
      box = (left, top, left + cw, top + ch)
      break
  if box is None:
    s = min(h, w)
    box = ((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s)
  return np.stack([np.asarray(Image.fromarray(f).resize((size, size), Image.BILINEAR, box=box)) for f in frames])


def random_flip(frames: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """Horizontal flip of the whole clip with probability 1/2 (ours; the official recipes use none)."""
  return np.ascontiguousarray(frames[:, :, ::-1]) if rng.random() < 0.5 else frames
