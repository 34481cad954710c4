"""Metrics: TensorBoard event files + a JSONL log + a console progress line with rate and ETA.

clu's `metric_writers` package imports TensorFlow at import time, which we do not install; the
TensorBoard files are therefore written with tensorboardX (TF-free, TensorBoard-readable). Every
writer is passed in explicitly (no global state); only process 0 writes.
"""
from __future__ import annotations

import json
import logging
import math
import os
import time

import numpy as np


class MetricWriter:
  """write_scalars(step, {name: float}), write_images(step, {name: uint8 HWC}), flush(), close().

  metrics.jsonl gets one flushed row per write (a killed run keeps every row it logged; non-finite
  values are written as null so the file stays valid JSON). `resume_step`: a run resuming from the
  checkpoint of that step first drops the rows logged after it, which the resumed run writes again.
  """

  def __init__(self, logdir: str | None, enabled: bool = True, resume_step: int | None = None):
    self.enabled = enabled and logdir is not None
    self._tb = self._jsonl = None
    if self.enabled:
      os.makedirs(logdir, exist_ok=True)
      from tensorboardX import SummaryWriter
      path = os.path.join(logdir, "metrics.jsonl")
      if resume_step is not None and os.path.exists(path):
        _drop_rows_after(path, resume_step)
      self._tb = SummaryWriter(logdir)
      self._jsonl = open(path, "a")

  def write_scalars(self, step: int, scalars: dict):
    if not self.enabled:
      return
    clean = {k: float(v) for k, v in scalars.items()}
    for k, v in clean.items():
      self._tb.add_scalar(k, v, step)
    row = {k: (v if math.isfinite(v) else None) for k, v in clean.items()}
    self._jsonl.write(json.dumps({"step": int(step), **row}, allow_nan=False) + "\n")
    self._jsonl.flush()

  def write_images(self, step: int, images: dict):
    if not self.enabled:
      return
    for k, img in images.items():
      self._tb.add_image(k, np.asarray(img), step, dataformats="HWC")

  def flush(self):
    if self.enabled:
      self._tb.flush()
      self._jsonl.flush()

  def close(self):
    if self.enabled:
      self._tb.close()
      self._jsonl.close()
      self.enabled = False


def _drop_rows_after(path: str, step: int) -> None:
  """Keep the complete rows of steps <= `step` (a torn last line from a kill is dropped too); atomic."""
  kept = []
  with open(path) as f:
    for line in f:
      try:
        row = json.loads(line)
      except ValueError:
        continue
      if isinstance(row, dict) and row.get("step", 0) <= step and line.endswith("\n"):
        kept.append(line)
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "w") as f:
    f.writelines(kept)
  os.replace(tmp, path)


class Progress:
  """Console line every `every` steps: step/total, rate (steps/s and items/s), ETA, chosen metrics."""

  def __init__(self, total: int, every: int = 10, items_per_step: int = 1, name: str = "train",
               start_step: int = 0):
    self.total, self.every, self.items, self.name = total, max(1, every), items_per_step, name
    self.t0, self.s0 = time.perf_counter(), start_step

  def __call__(self, step: int, metrics: dict | None = None, force: bool = False):
    if not force and step % self.every and step != self.total:
      return
    dt = time.perf_counter() - self.t0
    done = step - self.s0
    rate = done / dt if dt > 0 and done > 0 else float("nan")
    eta = (self.total - step) / rate if rate and rate == rate and rate > 0 else float("nan")
    parts = [f"[{self.name}] {step}/{self.total}", f"{rate:.2f} it/s", f"{rate * self.items:.1f} clips/s",
             f"ETA {_fmt(eta)}"]
    for k, v in (metrics or {}).items():
      parts.append(f"{k}={float(v):.4g}")
    logging.info(" | ".join(parts))


def _fmt(seconds: float) -> str:
  if not math.isfinite(seconds):
    return "?"
  m, s = divmod(int(seconds), 60)
  h, m = divmod(m, 60)
  return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class NonFiniteError(FloatingPointError):
  """Raised when a loss or norm is NaN/Inf: names the step and metric; the last checkpoint is kept."""


def check_finite(step: int, metrics: dict, keys=None):
  for k, v in metrics.items():
    if (keys is None or k in keys) and not math.isfinite(float(v)):
      raise NonFiniteError(f"non-finite {k}={float(v)} at step {step}; stopping (the last good checkpoint is kept)")
