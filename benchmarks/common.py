"""Shared benchmark plumbing: timing, an fp32 matmul peak measured in the same run, the official
baselines (shared/baselines/official_cpu.json, copied to benchmarks/official_cpu.json), JSON output."""
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
  with open(BASELINES) as f:
    v = json.load(f).get(key)
  return float(v) if isinstance(v, (int, float)) else None


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
          "num_devices": jax.device_count(), "cpu_count": os.cpu_count(), "jax": jax.__version__,
          "python": platform.python_version()}


def emit(result: dict):
  print(json.dumps(result, indent=1, sort_keys=False), flush=True)
