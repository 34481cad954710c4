"""Resumable label shards: one JSONL file per host, appended one committed batch at a time.

A batch counts only once its commit line (`{"commit": n, "n": records}`) is complete, so a kill loses
at most the batch in flight, never leaves a partial record and never labels a clip twice. Once every
host has finished, the shards merge into the official `gazing_labels.json` (dataset order) plus
`greedy_meta.json` (search settings, tau reached per frame, skipped clips with their errors).
"""
from __future__ import annotations

import json
import logging
import os
from typing import Mapping, Sequence

import numpy as np

from autogaze_jax.labels.format import validate_entry, write_labels

log = logging.getLogger(__name__)

LABELS_NAME, META_NAME, SHARD_DIR = "gazing_labels.json", "greedy_meta.json", "shards"


def shard_path(workdir: str, process_index: int, process_count: int) -> str:
  return os.path.join(workdir, SHARD_DIR, f"labels-{process_index:05d}-of-{process_count:05d}.jsonl")


def read_shard(path: str, truncate: bool = False) -> list[dict]:
  """Committed records of a shard file. A batch counts only once its commit line is complete; with
  `truncate`, anything after the last commit (a batch cut off by a kill) is removed from the file."""
  if not os.path.exists(path):
    return []
  done, pending, good_end = [], [], 0
  with open(path, "rb") as f:
    data = f.read()
  pos = 0
  while pos < len(data):
    end = data.find(b"\n", pos)
    if end < 0:
      break                                    # torn last line: never committed
    try:
      rec = json.loads(data[pos:end])
    except ValueError:
      break
    pos = end + 1
    if "commit" in rec:
      if rec.get("n") != len(pending):
        break
      done += pending
      pending = []
      good_end = pos
    else:
      pending.append(rec)
  if truncate and good_end < len(data):
    log.warning("%s: dropping %d bytes of an uncommitted batch (interrupted run)", path, len(data) - good_end)
    with open(path, "r+b") as f:
      f.truncate(good_end)
  return done


def append_batch(path: str, records: Sequence[dict], batch_no: int):
  """Append a batch and its commit line in one write, then fsync (the commit makes the batch count)."""
  blob = "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in records)
  blob += json.dumps({"commit": batch_no, "n": len(records)}) + "\n"
  with open(path, "a") as f:
    f.write(blob)
    f.flush()
    os.fsync(f.fileno())


def summarize(records: Sequence[dict], tau: float, tokens_per_frame: int) -> dict:
  """Loss reached and patches per frame over labelled records."""
  lab = [r for r in records if "gazing_pos" in r]
  if not lab:
    return {"clips": 0, "skipped": len(records)}
  n = np.asarray([[len(f) for f in r["gazing_pos"]] for r in lab])                 # (clips, T)
  final = np.asarray([[f[-1] for f in r["task_losses"]] for r in lab])
  first = np.asarray([[f[0] for f in r["task_losses"]] for r in lab])
  reached = np.asarray([r["reached"] for r in lab])
  return {"clips": len(lab), "skipped": len(records) - len(lab), "tau": tau,
          "frames_reaching_tau": float(reached.mean()),
          "final_loss_mean": float(final.mean()), "final_loss_max": float(final.max()),
          "loss_after_first_patch_mean": float(first.mean()),
          "patches_per_frame_mean": float(n.mean()), "patches_per_frame_min": int(n.min()),
          "patches_per_frame_max": int(n.max()),
          "patches_by_frame_mean": [round(float(x), 3) for x in n.mean(0)],
          "gaze_ratio": float(n.mean() / tokens_per_frame)}


def merge_shards(workdir: str, process_count: int, meta: Mapping, num_frames: int) -> dict:
  """All shards committed -> `gazing_labels.json` (official format, dataset order) + `greedy_meta.json`."""
  records = []
  for i in range(process_count):
    records += read_shard(shard_path(workdir, i, process_count))
  records.sort(key=lambda r: r["i"])
  keys = [r["key"] for r in records]
  if len(set(keys)) != len(keys):
    raise RuntimeError("a clip was labelled twice across shards; the shard files are inconsistent")
  entries = {r["key"]: {"gazing_pos": r["gazing_pos"], "task_losses": r["task_losses"]}
             for r in records if "gazing_pos" in r}
  for k, e in entries.items():
    validate_entry(k, e, num_frames=num_frames, tokens_per_frame=meta["tokens_per_frame"])
  write_labels(entries, os.path.join(workdir, LABELS_NAME))
  summary = summarize(records, meta["tau"], meta["tokens_per_frame"])
  side = {**meta, "summary": summary,
          "reached_tau": {r["key"]: r["reached"] for r in records if "gazing_pos" in r},
          "skipped": {r["key"]: r["skip"] for r in records if "skip" in r}}
  tmp = os.path.join(workdir, META_NAME + f".tmp{os.getpid()}")
  with open(tmp, "w") as f:
    json.dump(side, f, indent=1)
  os.replace(tmp, os.path.join(workdir, META_NAME))
  return summary
