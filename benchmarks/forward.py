"""Teacher-forced forward of the default gaze model on 16x224x224 clips (batch 1 and 8).

  python -m benchmarks.forward [--batches 1,8] [--gazes_per_frame 27] [--repeats 5]

Prints JSON: compile time, median step time, clips/s, useful GFLOP per clip and achieved GFLOP/s
against an fp32 matmul peak measured in the same run. There is no official entry for the
teacher-forced pass alone (the official `forward_ratio0.1_b1` includes generation; see
benchmarks/rollout.py for that comparison), so `baseline_s` is null here.
"""
from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from autogaze_jax import GazeConfig
from autogaze_jax.gaze.functional import init_params, teacher_forced
from autogaze_jax.gaze.flops import teacher_forced_flops
from benchmarks import common


def main():
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--batches", default="1,8")
  ap.add_argument("--gazes_per_frame", type=int, default=27, help="slots per frame (ratio 0.1 = 26 + 1 EOS slot)")
  ap.add_argument("--frames", type=int, default=16)
  ap.add_argument("--repeats", type=int, default=5)
  ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
  args = ap.parse_args()

  cfg = GazeConfig(dtype=args.dtype)
  graphdef, params = init_params(cfg, 0)
  t, n = args.frames, args.gazes_per_frame
  counts = tuple([n] * t)
  rng = np.random.default_rng(0)
  peak = common.matmul_peak_gflops()
  flops = teacher_forced_flops(cfg, counts)
  results = []
  for b in [int(x) for x in args.batches.split(",")]:
    pv = jnp.asarray(rng.normal(size=(b, t, 3, 224, 224)).astype(np.float32))
    local = np.stack([rng.permutation(265)[:n] for _ in range(b * t)]).reshape(b, t, n)
    gp = jnp.asarray((local + 265 * np.arange(t)[None, :, None]).reshape(b, -1))
    pad = jnp.zeros(gp.shape, bool).at[:, n - 1::n].set(True)  # last slot of each frame = EOS slot
    fn = jax.jit(lambda p, x, g, m: teacher_forced(graphdef, p, x, g, m, counts))
    t0 = time.perf_counter()
    compiled = fn.lower(params, pv, gp, pad).compile()
    compile_s = time.perf_counter() - t0
    timing = common.time_fn(compiled, params, pv, gp, pad, repeats=args.repeats)
    step = timing["median_s"]
    results.append({"batch": b, "compile_s": compile_s, **timing, "clips_per_s": b / step,
                    "gflop_per_clip": flops / 1e9, "achieved_gflops": b * flops / step / 1e9,
                    "fraction_of_matmul_peak": b * flops / step / 1e9 / peak})
  common.emit({"benchmark": "teacher_forced_forward", "config": "default (3.26M params)", "dtype": args.dtype,
               "frames": t, "slots_per_frame": n, "matmul_peak_gflops": peak, "env": common.env(),
               "baseline_s": None, "results": results})


if __name__ == "__main__":
  main()
