"""Official `gazing_labels.json` reading (validated by `autogaze_jax.labels.format`) and collation.

File format: one JSON object `{video_path: {"gazing_pos": [[global ids] x T], "task_losses":
[[floats] x T]}}`. Keys are normalised to their last three path components on load. In memory we
keep the JSON values as Python lists (so writing back reproduces the file byte-for-byte); items
carry a flat numpy form:

  gazing_pos    int64  (N,)  global ids of all frames, concatenated in frame order
  task_losses   float32(N,)  loss after each token
  label_lengths int32  (T,)  tokens per frame (>= 1), sum = N

Two collations of a batch of flat labels:
  * `collate_official`: exactly `collate.py:process_gazing_info` -> per frame t, pad to
    `M_t + 1` slots (M_t = batch max), id -1, last loss repeated; shapes depend on the batch.
  * `collate_fixed`: the same layout with a static capacity `K + 1` per frame
    (K = `max_tokens_per_frame`), so jitted steps see one shape. Equal to the official output
    whenever every frame's batch max is K.
Both return `gazing_pos` int64 (B, S), `task_losses` float32 (B, S), `if_padded_gazing` bool (B, S),
`num_gazing_each_frame` int64 (T,), S = sum(num_gazing_each_frame).
"""
from __future__ import annotations

import glob
import json
from typing import Iterable, Mapping, Sequence

import numpy as np

from autogaze_jax.labels.format import NUM_FRAMES, TOKENS_PER_FRAME, LabelError, validate_entry
from data_pipelines.ops import relative_video_path

def load_labels(paths: str | Sequence[str], *, validate: bool = True, num_frames: int = NUM_FRAMES,
                tokens_per_frame: int = TOKENS_PER_FRAME) -> dict[str, dict]:
  """Read and merge label files (comma-separated string or list; glob patterns allowed; later files
  win, as the official dict update). Returns {relative_path: {"gazing_pos", "task_losses"}}."""
  if isinstance(paths, str):
    paths = [p.strip() for p in paths.split(",") if p.strip()]
  merged: dict = {}
  for p in paths:
    files = sorted(glob.glob(p)) if glob.has_magic(p) else [p]
    if not files:
      raise FileNotFoundError(f"label glob {p!r} matched no file")
    for f in files:
      with open(f) as fh:
        try:
          data = json.load(fh)
        except json.JSONDecodeError as e:
          raise LabelError(f"label file {f}: not valid JSON ({e})") from None
      if not isinstance(data, dict):
        raise LabelError(f"label file {f}: expected a JSON object {{video_path: entry}}, got {type(data).__name__}")
      merged.update(data)
  labels = {relative_video_path(k): v for k, v in merged.items()}
  if validate:
    for k, v in labels.items():
      validate_entry(k, v, num_frames=num_frames, tokens_per_frame=tokens_per_frame)
  return labels


def flatten_entry(entry: Mapping) -> dict[str, np.ndarray]:
  """Nested JSON entry -> flat item fields (see module docstring). Copies: the source dict is never
  mutated (the official collate pads the dataset's lists in place)."""
  gp, tl = entry["gazing_pos"], entry["task_losses"]
  return {
      "gazing_pos": np.asarray([i for f in gp for i in f], np.int64),
      "task_losses": np.asarray([x for f in tl for x in f], np.float32),
      "label_lengths": np.asarray([len(f) for f in gp], np.int32),
  }


def unflatten(item: Mapping) -> dict[str, list]:
  """Flat item fields -> nested lists (inverse of `flatten_entry`, losses as float32 values)."""
  ends = np.cumsum(item["label_lengths"])
  starts = ends - item["label_lengths"]
  return {"gazing_pos": [item["gazing_pos"][s:e].tolist() for s, e in zip(starts, ends)],
          "task_losses": [item["task_losses"][s:e].tolist() for s, e in zip(starts, ends)]}


def _collate(items: Sequence[Mapping], slots: np.ndarray) -> dict[str, np.ndarray]:
  """Pad each item's frame t to `slots[t]` (id -1, last loss repeated) and concatenate frames."""
  b, total = len(items), int(slots.sum())
  ids = np.full((b, total), -1, np.int64)
  losses = np.zeros((b, total), np.float32)
  offs = np.concatenate([[0], np.cumsum(slots)[:-1]])
  for i, it in enumerate(items):
    lens = np.asarray(it["label_lengths"])
    src = np.concatenate([[0], np.cumsum(lens)])
    for t, (o, n) in enumerate(zip(offs, lens)):
      ids[i, o:o + n] = it["gazing_pos"][src[t]:src[t] + n]
      seg = it["task_losses"][src[t]:src[t] + n]
      losses[i, o:o + n] = seg
      losses[i, o + n:o + slots[t]] = seg[-1]
  return {"gazing_pos": ids, "task_losses": losses, "if_padded_gazing": ids == -1,
          "num_gazing_each_frame": slots.astype(np.int64)}


def _check_batch(items: Sequence[Mapping]) -> np.ndarray:
  if not items:
    raise ValueError("cannot collate an empty batch")
  lens = np.stack([np.asarray(it["label_lengths"]) for it in items])
  if (lens < 1).any():
    raise LabelError("every frame needs >= 1 gaze token to collate")
  return lens


def collate_official(items: Sequence[Mapping]) -> dict[str, np.ndarray]:
  """Official `process_gazing_info` on flat items (or nested JSON entries): slots per frame =
  batch max + 1 (the EOS slot, marked padded). Batch-dependent shapes."""
  items = [flatten_entry(it) if "label_lengths" not in it else it for it in items]
  return _collate(items, _check_batch(items).max(0) + 1)


def collate_fixed(items: Sequence[Mapping], max_tokens_per_frame: int) -> dict[str, np.ndarray]:
  """Static-shape variant: every frame gets `max_tokens_per_frame + 1` slots, so S = T*(K+1).
  Raises LabelError when a frame has more than K tokens (never truncates silently)."""
  items = [flatten_entry(it) if "label_lengths" not in it else it for it in items]
  lens = _check_batch(items)
  if lens.max() > max_tokens_per_frame:
    i, t = np.unravel_index(int(lens.argmax()), lens.shape)
    who = items[i].get("video_path", f"batch item {i}")   # name the video when the item carries its key
    raise LabelError(f"{who}: frame {t} has {lens.max()} tokens > max_tokens_per_frame="
                     f"{max_tokens_per_frame}; raise the capacity (config) or use the official collation")
  return _collate(items, np.full((lens.shape[1],), max_tokens_per_frame + 1, np.int64))


def join_report(video_keys: Iterable[str], labels: Mapping[str, object]) -> dict[str, list[str]]:
  """Which relative keys lack labels, and which labels reference no video (both sorted)."""
  vk = set(video_keys)
  return {"videos_without_labels": sorted(vk - labels.keys()),
          "labels_without_video": sorted(labels.keys() - vk)}
