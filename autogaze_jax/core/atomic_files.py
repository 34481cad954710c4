"""Files that appear whole or not at all.

Every writer of checkpoints, records, summaries and reports goes through `atomic_write`: the content is
written under a temporary name unique to this process (two hosts or workers may write the same summary
at once), fsynced, then renamed over the target, so a kill leaves either the old file or the new one,
never a torn one, and no temporary file behind.
"""
from __future__ import annotations

import json
import os
from typing import Callable


def atomic_write(path: str, write: Callable[[str], None]) -> None:
  """`write(tmp_path)` creates the content; it then replaces `path` in one rename."""
  tmp = f"{path}.partial{os.getpid()}"
  try:
    write(tmp)
    fd = os.open(tmp, os.O_RDONLY)
    try:
      os.fsync(fd)
    finally:
      os.close(fd)
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def write_json(path: str, obj, indent: int = 2) -> None:
  """Key-sorted JSON with a trailing newline, written atomically; NaN/inf are refused (not JSON)."""
  def write(tmp):
    with open(tmp, "w") as f:
      json.dump(obj, f, indent=indent, sort_keys=True, allow_nan=False)
      f.write("\n")
  atomic_write(path, write)
