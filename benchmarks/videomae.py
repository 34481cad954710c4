"""VideoMAE task model timing: forward and forward+backward, peak memory, achieved GFLOP/s.

  python benchmarks/videomae.py [--quick] [--heavy] [--dtype bfloat16] [--remat block]

Prints one JSON object. Cases: default (vit-mae-large-sized) config at batch 1/4, gaze ratio 0.1/1.0,
R = 2 or 16 reconstructed frames, 16 frames of 224x224; and the tiny fixture config. Each case is
AOT-compiled first (`compile_s`, XLA `memory_analysis`: `peak_mb` = arguments + outputs + temporaries,
`flops` from `cost_analysis`; with remat the blocks run in a `lax.scan` whose body XLA counts once, so
`gflop`/`gflops_per_s` of remat cases are undercounted by about the layer count), then timed (median of `--runs` after one warm-up). Cases too slow for
a 2-core CPU are compiled only. "forward" runs as the reward does (traced per-frame counts);
"forward_backward" as `videomae_train` does (static counts: block-causal skipping in the encoder). Cases too slow for
a 2-core CPU are compiled only (memory, FLOPs) unless `--heavy`. `vs_official` = official time / ours
from `/work/shared/baselines/official_cpu.json` where the shapes match (`videomae_large_forward_16f`
and `_2f`: batch 1, ratio 0.1, 16 / 2 reconstructed frames; official fp32, 2 threads). `mfu_vs_matmul`
= achieved FLOP/s over an fp32 (or bf16) matmul peak measured in the same run.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from autogaze_jax.judge.losses import reconstruction_task  # noqa: E402
from autogaze_jax.judge.model import init_params  # noqa: E402
from autogaze_jax.judge.config import VideoMAEConfig, tiny_videomae_config  # noqa: E402

BASELINE = "/work/shared/baselines/official_cpu.json"
T, V = 16, 265


def gaze(batch: int, ratio: float, seed: int = 0):
  k = max(1, round(ratio * V))
  rng = np.random.default_rng(seed)
  pos = np.stack([np.concatenate([rng.permutation(V)[:k] + V * t for t in range(T)]) for _ in range(batch)])
  return pos.astype(np.int32), np.zeros(pos.shape, bool), np.full((T,), k, np.int32)


def matmul_peak(dtype, n=2048, runs=5) -> float:
  a = jnp.ones((n, n), dtype)
  f = jax.jit(lambda x: x @ x)
  f(a).block_until_ready()
  ts = []
  for _ in range(runs):
    t0 = time.perf_counter()
    f(a).block_until_ready()
    ts.append(time.perf_counter() - t0)
  return 2 * n ** 3 / min(ts)


def run_case(cfg, params, graphdef, batch, ratio, n_recon, mode, runs, execute):
  pos, pad, cnt = gaze(batch, ratio)
  video = jnp.asarray(np.random.default_rng(1).normal(size=(batch, T, 3, 224, 224)).astype(np.float32))
  frames = jnp.arange(n_recon, dtype=jnp.int32) * (T // n_recon)

  if mode == "forward":
    def fn(p, v):
      return reconstruction_task(graphdef, p, v, pos, pad, cnt, frames)["loss_each_reconstruction_frame"]
  else:
    def fn(p, v):
      return jax.grad(lambda q: jnp.mean(reconstruction_task(graphdef, q, v, pos, pad, cnt, frames,
                                                             static_counts=tuple(int(c) for c in cnt))["loss_mean"]))(p)
  t0 = time.perf_counter()
  compiled = jax.jit(fn).lower(params, video).compile()
  res = {"case": f"{mode}_b{batch}_ratio{ratio}_R{n_recon}", "mode": mode, "batch": batch, "ratio": ratio,
         "recon_frames": n_recon, "N": int(pos.shape[1]), "compile_s": round(time.perf_counter() - t0, 2)}
  mem = compiled.memory_analysis()
  if mem is not None:
    res["peak_mb"] = round((mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes) / 2 ** 20, 1)
    res["temp_mb"] = round(mem.temp_size_in_bytes / 2 ** 20, 1)
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  if cost and "flops" in cost:
    res["gflop"] = round(cost["flops"] / 1e9, 1)
  if not execute:
    res["timed"] = False
    return res
  jax.block_until_ready(compiled(params, video))
  ts = []
  for _ in range(runs):
    t0 = time.perf_counter()
    jax.block_until_ready(compiled(params, video))
    ts.append(time.perf_counter() - t0)
  res["time_s"] = round(float(np.median(ts)), 4)
  if "gflop" in res:
    res["gflops_per_s"] = round(res["gflop"] / res["time_s"], 1)
  return res


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--quick", action="store_true", help="tiny config + default forward at batch 1, ratio 0.1")
  ap.add_argument("--heavy", action="store_true", help="also execute the cases that are compile-only by default")
  ap.add_argument("--dtype", default="float32")
  ap.add_argument("--remat", default="block")
  ap.add_argument("--runs", type=int, default=3)
  ap.add_argument("--only", default="", help="run only default-config cases whose name contains this")
  ap.add_argument("--skip-tiny", action="store_true")
  ap.add_argument("--attn_impl", default=None, help="override the config's attention (flash, dot_product)")
  ap.add_argument("--attn_block", type=int, default=None, help="override the config's flash attention tile")
  args = ap.parse_args()
  base = json.load(open(BASELINE)) if os.path.exists(BASELINE) else {}
  peak = matmul_peak(jnp.dtype(args.dtype))
  out = {"device": str(jax.devices()[0].platform), "num_devices": len(jax.devices()), "dtype": args.dtype,
         "remat": args.remat, "attn": {"impl": args.attn_impl, "block": args.attn_block}, "matmul_peak_gflops": round(peak / 1e9, 1), "cases": []}

  def record(name, r):
    r["config"] = name
    if "gflops_per_s" in r:
      r["mfu_vs_matmul"] = round(r["gflops_per_s"] * 1e9 / peak, 3)
    key = {("forward", 1, 0.1, 16): "videomae_large_forward_16f", ("forward", 1, 0.1, 2): "videomae_large_forward_2f"}.get(
        (r["mode"], r["batch"], r["ratio"], r["recon_frames"]))
    if name == "default" and key in base and "time_s" in r:
      r["official_s"] = base[key]
      r["vs_official"] = round(base[key] / r["time_s"], 2)
    out["cases"].append(r)
    print(json.dumps(r), file=sys.stderr, flush=True)

  tiny = tiny_videomae_config(dtype=args.dtype)
  g, p = init_params(tiny)
  for mode in () if args.skip_tiny else ("forward", "forward_backward"):
    record("tiny", run_case(tiny, p, g, 2, 0.1, 16, mode, args.runs, True))

  attn = {k: v for k, v in (("attn_impl", args.attn_impl), ("attn_block", args.attn_block)) if v is not None}
  cfg = VideoMAEConfig(dtype=args.dtype, remat=args.remat, loss_type=("l1",), loss_weights=(1.0,), **attn)
  g, p = init_params(cfg)
  out["default_params_m"] = round(sum(x.size for x in jax.tree.leaves(p)) / 1e6, 1)
  cases = [("forward", 1, 0.1, 2, True), ("forward", 1, 0.1, 16, True)]
  if not args.quick:
    cases += [("forward", 1, 1.0, 2, True), ("forward", 4, 0.1, 2, True), ("forward", 4, 1.0, 2, args.heavy),
              ("forward_backward", 1, 0.1, 2, True), ("forward_backward", 1, 1.0, 2, args.heavy),
              ("forward_backward", 4, 0.1, 2, args.heavy), ("forward_backward", 4, 1.0, 2, args.heavy)]
  for mode, b, ratio, r, execute in cases:
    if args.only not in f"{mode}_b{b}_ratio{ratio}_R{r}":
      continue
    record("default", run_case(cfg, p, g, b, ratio, r, mode, 1 if b * ratio > 1 else args.runs, execute))
  out["max_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
  print(json.dumps(out, indent=1))


if __name__ == "__main__":
  main()
