"""Shared benchmark plumbing: timing, an fp32 matmul peak measured in the same run, the official
baselines, JSON output.

Official baselines: a speed ratio is only valid against the official code timed in the same session
on the same machine. Every benchmark takes `--official=FILE`, the JSON the
official timing scripts wrote in this session, and reports `vs_official` = official / ours from it.
Without it, `official_other_machine_s` is the stored figure of `benchmarks/official_cpu.json` (an
earlier session on another machine), reported for context only: no ratio is computed from it.
"""
from __future__ import annotations

import json
import os
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np

BASELINES = os.path.join(os.path.dirname(__file__), "official_cpu.json")


def baseline(key: str) -> float | None:
  """The stored official figure `key` (another machine: context, never a ratio to claim)."""
  with open(BASELINES) as f:
    v = json.load(f).get(key)
  return float(v) if isinstance(v, (int, float)) else None


def add_official_arg(ap):
  """`--official=FILE`: the same-session official timings (JSON of the official timing scripts)."""
  ap.add_argument("--official", default=None, metavar="FILE",
                  help="JSON written by the official timing scripts in this session on this machine; "
                       "vs_official = official / ours is computed only from it")


def load_official(path: str | None) -> dict | None:
  """The `--official` JSON (None when not given); a clear error naming the file when unreadable."""
  if not path:
    return None
  try:
    with open(path) as f:
      data = json.load(f)
  except (OSError, ValueError) as e:
    raise SystemExit(f"--official={path}: cannot read the official timings JSON ({e})") from None
  if not isinstance(data, dict):
    raise SystemExit(f"--official={path}: expected a JSON object of official timings")
  return data


def vs_official(key: str | None, ours_s: float, official: dict | None) -> dict:
  """Fields comparing `ours_s` with official case `key`: a ratio only against a same-session file."""
  if not key:
    return {"official_s": None, "vs_official": None}
  if official is not None:
    v = official.get(key)
    if not isinstance(v, (int, float)):
      return {"official_s": None, "vs_official": None, "official_note": f"{key!r} not in the --official file"}
    return {"official_s": float(v), "vs_official": round(float(v) / ours_s, 3), "official_from": "same session"}
  stored = baseline(key)
  return {"official_s": None, "vs_official": None, "official_other_machine_s": stored,
          "official_note": "stored figure from another machine (benchmarks/official_cpu.json): context only, "
                           "not a ratio to claim; pass --official=FILE measured in this session"}


def loadavg() -> list[float]:
  """1/5/15-minute load averages (a shared machine makes timings noisy: report them with each number)."""
  try:
    with open("/proc/loadavg") as f:
      return [float(x) for x in f.read().split()[:3]]
  except OSError:
    return []


def cpu_model() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), platform.processor())
  except OSError:
    return platform.processor()


def time_fn(fn, *args, repeats: int = 5, warmup: int = 1) -> dict:
  """Median wall time of `fn(*args)` (blocked until ready) after compile + warm-up."""
  t0 = time.perf_counter()
  jax.block_until_ready(fn(*args))
  first = time.perf_counter() - t0
  for _ in range(max(0, warmup - 1)):
    jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t0)
  return {"median_s": float(np.median(times)), "min_s": float(np.min(times)), "first_call_s": first,
          "repeats": repeats}


def matmul_peak_gflops(n: int | None = None, dtype=jnp.float32, repeats: int = 5) -> float:
  """Achievable matmul GFLOP/s on the default device, measured now (the denominator of every MFU)."""
  n = n or (2048 if jax.default_backend() == "cpu" else 8192)
  a = jnp.ones((n, n), dtype)
  f = jax.jit(lambda x: x @ x)
  t = time_fn(f, a, repeats=repeats)["min_s"]
  return 2 * n ** 3 / t / 1e9


def env() -> dict:
  dev = jax.devices()[0]
  return {"backend": jax.default_backend(), "device": getattr(dev, "device_kind", str(dev)),
          "num_devices": jax.device_count(), "cpu_count": os.cpu_count(), "cpu_model": cpu_model(),
          "jax": jax.__version__, "python": platform.python_version()}


def emit(result: dict):
  print(json.dumps(result, indent=1, sort_keys=False), flush=True)
