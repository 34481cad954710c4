"""The official label file, `gazing_labels.json`: what the greedy search writes and NTP reads.

One JSON object `{video_path: {"gazing_pos": [[global ids] x T], "task_losses": [[floats] x T]}}`;
frame t's global ids lie in [V*t, V*t + V) (V = the gaze model's ids per frame, 265 as released).
Reading, key normalisation and collation live with the input pipeline (`data_pipelines/labels.py`).
"""
from __future__ import annotations

import json
import math
import os
from typing import Mapping

from autogaze_jax.gaze.config import GazeConfig

TOKENS_PER_FRAME = GazeConfig().num_vision_tokens_each_frame   # V local ids per frame; EOS = V
NUM_FRAMES = GazeConfig().max_num_frames


class LabelError(ValueError):
  """A label entry breaks the official `gazing_labels.json` format."""


def dumps_labels(labels: Mapping[str, Mapping]) -> str:
  """The official file text: `json.dumps` of the dict with default separators, keys in insertion
  order (how a Python writer of the file produces it)."""
  return json.dumps({k: {"gazing_pos": v["gazing_pos"], "task_losses": v["task_losses"]}
                     for k, v in labels.items()})


def write_labels(labels: Mapping[str, Mapping], path: str) -> None:
  """Write a label dict in the official format (atomically: temp file + rename)."""
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "w") as f:
    f.write(dumps_labels(labels))
  os.replace(tmp, path)


def validate_entry(key: str, entry: Mapping, *, num_frames: int = NUM_FRAMES,
                   tokens_per_frame: int = TOKENS_PER_FRAME) -> None:
  """Raise LabelError naming the video and frame unless: T lists of >= 1 unique global ids with
  frame t's ids in [V*t, V*t+V), and task_losses of the same lengths holding finite numbers."""
  if not isinstance(entry, Mapping) or "gazing_pos" not in entry or "task_losses" not in entry:
    raise LabelError(f"{key}: entry must be a dict with 'gazing_pos' and 'task_losses'")
  gp, tl = entry["gazing_pos"], entry["task_losses"]
  if len(gp) != num_frames or len(tl) != num_frames:
    raise LabelError(f"{key}: expected {num_frames} frames, got gazing_pos {len(gp)}, task_losses {len(tl)}")
  for t, (ids, losses) in enumerate(zip(gp, tl)):
    if len(ids) == 0:
      raise LabelError(f"{key}: frame {t} has no gaze token (collation needs >= 1 per frame)")
    if len(ids) != len(losses):
      raise LabelError(f"{key}: frame {t} has {len(ids)} ids but {len(losses)} losses")
    lo, hi = tokens_per_frame * t, tokens_per_frame * (t + 1)
    for i in ids:
      if isinstance(i, bool) or not isinstance(i, int) or not lo <= i < hi:
        raise LabelError(f"{key}: frame {t} id {i!r} not an int in [{lo}, {hi})")
    if len(set(ids)) != len(ids):
      raise LabelError(f"{key}: frame {t} has repeated ids {ids}")
    for x in losses:
      if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
        raise LabelError(f"{key}: frame {t} loss {x!r} is not a finite number")
