"""Compiled gaze rollout on 16x224x224 clips at the default config (random weights).

  python -m benchmarks.rollout [--batches 1,8,64] [--repeats 5] [--cases ratio0.1,thr0.7]

Cases: `ratio0.1` (gazing_ratio 0.1, no stop: 26 tokens/frame, 3 decode steps) and `thr0.7`
(gazing_ratio 0.75 with task_loss_requirement 0.7: with random weights every frame stops in its first
step). Prints JSON per (case, batch): compile time, median seconds per call and per clip, gaze tokens/s,
useful GFLOP per clip (vision conv; decoder linears and attention over the visible keys of every fed
token, the last layer for the read-out token only; heads once per step; see autogaze_jax/flops.py),
achieved GFLOP/s and its fraction of an fp32 matmul peak measured in the same run (also `_all_rows`:
the same with every fed token counted through every layer, the work the official generate does for
this result), and `vs_official` = official / ours against the official PyTorch generate timed in this
session (`--official=FILE`, see benchmarks/common.py; the sdpa variant where one was timed).
"""
from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from autogaze_jax import GazeConfig
from autogaze_jax.gaze.functional import init_params
from autogaze_jax.gaze.flops import rollout_flops
from autogaze_jax.gaze.generate import make_spec
from autogaze_jax.gaze.rollout import budgets_from_ratio, rollout
from benchmarks import common

CASES = {"ratio0.1": (0.1, None), "thr0.7": (0.75, 0.7)}
BASELINE_KEYS = {("ratio0.1", 1): "generate_ratio0.1_b1_sdpa", ("ratio0.1", 8): "generate_ratio0.1_b8_sdpa",
                 ("thr0.7", 1): "generate_ratio0.75_thr0.7_b1", ("thr0.7", 8): "generate_ratio0.75_thr0.7_b8"}


def main():
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--batches", default="1,8,64")
  ap.add_argument("--cases", default="ratio0.1,thr0.7")
  ap.add_argument("--repeats", type=int, default=5)
  ap.add_argument("--frames", type=int, default=16)
  common.add_official_arg(ap)
  args = ap.parse_args()
  official = common.load_official(args.official)

  cfg = GazeConfig()
  graphdef, params = init_params(cfg, 0)
  t = args.frames
  peak = common.matmul_peak_gflops()
  rng = np.random.default_rng(0)
  results = []
  for case in args.cases.split(","):
    ratio, thr = CASES[case]
    budgets = budgets_from_ratio(ratio, t)
    spec = make_spec(cfg, budgets, t, use_threshold=thr is not None, coupled=False, tokens_per_step=None,
                     sample=False, top_k=50, capacity=None)
    for b in [int(x) for x in args.batches.split(",")]:
      pv = jnp.asarray(rng.normal(size=(b, t, 3, 224, 224)).astype(np.float32))
      bud = jnp.asarray(np.broadcast_to(budgets, (b, t)), jnp.int32)
      th = jnp.full((b, t), np.float32(thr or 0.0))
      fn = jax.jit(lambda p, x, bu, tq: rollout(graphdef, p, x, bu, tq, jnp.float32(1.0), jax.random.key(0), spec))
      t0 = time.perf_counter()
      compiled = fn.lower(params, pv, bud, th).compile()
      compile_s = time.perf_counter() - t0
      timing = common.time_fn(compiled, params, pv, bud, th, repeats=args.repeats)
      out = jax.tree.map(np.asarray, compiled(params, pv, bud, th))
      real = int((out["tokens"] != cfg.eos_token_id).sum())
      flops = rollout_flops(cfg, out["steps"], spec.tokens_per_step)
      flops_all = rollout_flops(cfg, out["steps"], spec.tokens_per_step, read_out_only=False)
      step = timing["median_s"]
      results.append({"case": case, "batch": b, "compile_s": compile_s, **timing, "s_per_clip": step / b,
                      "gaze_tokens_per_s": real / step, "gflop_per_clip": flops / 1e9,
                      "achieved_gflops": b * flops / step / 1e9, "fraction_of_matmul_peak": b * flops / step / 1e9 / peak,
                      "gflop_per_clip_all_rows": flops_all / 1e9,
                      "fraction_of_matmul_peak_all_rows": b * flops_all / step / 1e9 / peak,
                      "loadavg": common.loadavg(), **common.vs_official(BASELINE_KEYS.get((case, b)), step, official)})
      common.emit(results[-1])
  common.emit({"benchmark": "rollout", "config": "default (3.26M params), random weights", "frames": t,
               "matmul_peak_gflops": peak, "env": common.env(), "results": results})


if __name__ == "__main__":
  main()
