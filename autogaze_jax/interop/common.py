"""What every checkpoint format here shares: file names, the named error, safetensors reading, and
atomic writes (a kill or a full disk never leaves a half-written file under the final name)."""
from __future__ import annotations

import json
import os

import numpy as np

CONFIG_NAME, WEIGHTS_NAME = "config.json", "model.safetensors"
SAFETENSORS_METADATA = {"format": "pt"}  # the only value (besides none) the official loaders accept as-is


class CheckpointError(ValueError):
  """A checkpoint that cannot be read as an AutoGaze checkpoint; the message names the problem."""


def read_safetensors(path: str) -> tuple[dict[str, np.ndarray], dict]:
  """All tensors (numpy) and the metadata of a safetensors file, with clear errors."""
  from safetensors import SafetensorError, safe_open
  if not os.path.isfile(path):
    raise CheckpointError(f"missing weights file {path}")
  try:
    with safe_open(path, "np") as f:
      meta = f.metadata() or {}
      return {k: f.get_tensor(k) for k in f.keys()}, meta
  except (SafetensorError, OSError, ValueError) as e:
    size = os.path.getsize(path)
    raise CheckpointError(f"cannot read {path} ({size} bytes) as safetensors (truncated or corrupt?): {e}") from None


def read_json_config(path: str, parse, what: str = "checkpoint"):
  """`parse(dict)` of a JSON config file, with CheckpointError naming the file on any problem."""
  if not os.path.isfile(path):
    raise CheckpointError(f"{what} {os.path.dirname(path) or '.'!r} has no {os.path.basename(path)}")
  try:
    with open(path) as f:
      d = json.load(f)
  except json.JSONDecodeError as e:
    raise CheckpointError(f"{path} is not valid JSON: {e}") from None
  try:
    return parse(d)
  except (ValueError, TypeError) as e:
    raise CheckpointError(f"{path}: {e}") from None


def _atomic(path: str, write):
  tmp = path + ".tmp"
  try:
    write(tmp)
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def write_json(path: str, obj) -> None:
  """Pretty, key-sorted JSON with a trailing newline, written atomically."""
  def w(tmp):
    with open(tmp, "w") as f:
      json.dump(obj, f, indent=2, sort_keys=True)
      f.write("\n")
  _atomic(path, w)


def write_safetensors(path: str, tensors: dict[str, np.ndarray]) -> None:
  """Tensors (numpy) to a safetensors file with the official metadata, written atomically."""
  from safetensors.numpy import save_file
  _atomic(path, lambda tmp: save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, tmp,
                                      metadata=dict(SAFETENSORS_METADATA)))
