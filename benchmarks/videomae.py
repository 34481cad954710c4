"""VideoMAE judge timing at the recipe's shapes: forward (and forward+backward), FLOPs, memory, vs official.

  python -m benchmarks.videomae [--official=FILE] [--quick] [--heavy] [--dtype bfloat16] [--bf16_error]
                                [--prefix_buckets N]

Prints one JSON object (and one line per case on stderr). Cases on 16 frames of 224x224 gazed at ratio
0.1 (26 slots per frame, N = 416, as the official benchmark's gaze) unless named otherwise:
  forward_b1_ratio0.1_R2    the GRPO reward call of one rollout (2 reconstructed frames: 12 and 10, the
                            frames the official benchmark draws) -> official `videomae_large_forward_2f`
  forward_b1_ratio0.1_R16   evaluation (all 16 frames)            -> official `videomae_large_forward_16f`
  forward_b4_ratio0.1_R2    a batch of reward calls (group >= 4)
  forward_b1_ratio1.0_R2    every token gazed
  forward_backward_b1_ratio0.1_R2   judge training (static counts, `--remat_train`)
plus the tiny fixture config. Forward cases run the judge as the recipe builds it (`--remat` none: remat
only changes the backward; a remat scan would also stack the weights on every call). Each case is
AOT-compiled first (`compile_s`; `peak_mb` = arguments + outputs + temporaries from XLA's
`memory_analysis`), then timed: `time_s` median wall seconds of `--runs` after one warm-up, `cpu_s`
median CPU seconds of this process per call (steadier than wall time on a shared machine), the load
average around the case. `gflop` = the matmul FLOPs of the work the official forward needs for this
result (`judge.model.forward_flops`: only visible attention pairs, no padding rows) on the frames this
forward computes (`frames_computed`: reward calls skip the frames after the latest reconstructed one,
`--prefix_buckets`), `gflop_official` the same on all frames (what the official forward computes); `gflop_xla` =
XLA's `cost_analysis` (counts a loop body once: flash attention's tile loops are undercounted).
`mfu_vs_matmul` = gflop / time over the fp32 (or bf16) matmul peak measured in the same run (the
larger of a measurement before and after the cases). `vs_official` = official / ours only with
`--official=FILE` (same session); otherwise the stored figure from another machine is shown as context.
`--bf16_error`: the reward call in bfloat16 matmuls (what the official code autocasts to on GPU) vs
float32 on the same inputs: relative error of the per-frame losses.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from autogaze_jax.judge.config import VideoMAEConfig, tiny_videomae_config  # noqa: E402
from autogaze_jax.judge.losses import reconstruction_task  # noqa: E402
from autogaze_jax.judge.model import forward_flops, init_params, prefix_lengths  # noqa: E402
from benchmarks import common  # noqa: E402

T, V = 16, 265
FRAMES_2 = (12, 10)           # torch.randperm(16, generator seeded 0)[:2], as the official benchmark
OFFICIAL_KEYS = {("forward", 1, 0.1, 2): "videomae_large_forward_2f", ("forward", 1, 0.1, 16): "videomae_large_forward_16f"}


def gaze(batch: int, ratio: float, seed: int = 0):
  k = max(1, round(ratio * V))
  rng = np.random.default_rng(seed)
  pos = np.stack([np.concatenate([rng.permutation(V)[:k] + V * t for t in range(T)]) for _ in range(batch)])
  return pos.astype(np.int32), np.zeros(pos.shape, bool), np.full((T,), k, np.int32)


def recon_frames(n: int) -> np.ndarray:
  return np.asarray(FRAMES_2 if n == 2 else np.arange(n) * (T // n), np.int32)


def _cpu_s() -> float:
  r = resource.getrusage(resource.RUSAGE_SELF)
  return r.ru_utime + r.ru_stime


def matmul_peak(dtype, n=2048, runs=5) -> float:
  return common.matmul_peak_gflops(n, dtype, runs) * 1e9


def case_fn(graphdef, batch, ratio, n_recon, mode, prefix_buckets_n=1):
  pos, pad, cnt = gaze(batch, ratio)
  frames = recon_frames(n_recon)
  if mode == "forward":
    # the GRPO reward call's form: static slot counts, frames as an array (GRPO draws them), the frames
    # after the latest reconstructed one skipped by prefix bucket
    fr = jnp.asarray(frames)
    static = tuple(int(c) for c in cnt)
    def fn(p, v):
      return reconstruction_task(graphdef, p, v, pos, pad, cnt, fr, static_counts=static,
                                 prefix_buckets_n=prefix_buckets_n)["loss_each_reconstruction_frame"]
  else:
    def fn(p, v):
      return jax.grad(lambda q: jnp.mean(reconstruction_task(graphdef, q, v, pos, pad, cnt, frames,
                                                             static_counts=tuple(int(c) for c in cnt))["loss_mean"]))(p)
  video = jnp.asarray(np.random.default_rng(1).normal(size=(batch, T, 3, 224, 224)).astype(np.float32))
  return fn, video, cnt, frames


def run_case(cfg, params, graphdef, batch, ratio, n_recon, mode, runs, execute, prefix_buckets_n=1):
  fn, video, cnt, frames = case_fn(graphdef, batch, ratio, n_recon, mode, prefix_buckets_n)
  t0 = time.perf_counter()
  compiled = jax.jit(fn).lower(params, video).compile()
  res = {"case": f"{mode}_b{batch}_ratio{ratio}_R{n_recon}", "mode": mode, "batch": batch, "ratio": ratio,
         "recon_frames": n_recon, "N": int(cnt.sum()), "compile_s": round(time.perf_counter() - t0, 2)}
  kept = T
  if mode == "forward" and prefix_buckets_n > 1 and n_recon < T:
    kept = min(k for k in prefix_lengths(tuple(int(c) for c in cnt), n_recon, prefix_buckets_n)
               if k > int(frames.max()))
    res["frames_computed"] = kept    # the frames up to the latest reconstructed one, rounded up to a bucket
  mem = compiled.memory_analysis()
  if mem is not None:
    res["peak_mb"] = round((mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes) / 2 ** 20, 1)
    res["temp_mb"] = round(mem.temp_size_in_bytes / 2 ** 20, 1)
  mult = batch * (1 if mode == "forward" else 3)
  flops = mult * forward_flops(cfg, cnt[:kept], frames)["total"]
  res["gflop"] = round(flops / 1e9, 1)
  res["gflop_official"] = round(mult * forward_flops(cfg, cnt, frames)["total"] / 1e9, 1)
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  if cost and "flops" in cost:
    res["gflop_xla"] = round(cost["flops"] / 1e9, 1)
  if not execute:
    res["timed"] = False
    return res
  res["loadavg_before"] = common.loadavg()
  jax.block_until_ready(compiled(params, video))
  walls, cpus = [], []
  for _ in range(runs):
    c0, t0 = _cpu_s(), time.perf_counter()
    jax.block_until_ready(compiled(params, video))
    walls.append(time.perf_counter() - t0)
    cpus.append(_cpu_s() - c0)
  res.update(time_s=round(float(np.median(walls)), 4), min_s=round(float(np.min(walls)), 4),
             times=[round(t, 3) for t in walls], cpu_s=round(float(np.median(cpus)), 3),
             loadavg_after=common.loadavg(), clips_per_s=round(batch / float(np.median(walls)), 3),
             gflops_per_s=round(res["gflop"] / float(np.median(walls)), 1))
  return res


def bf16_error(params, graphdef, cfg32, runs):
  """Reward call (b1, ratio 0.1, R=2) in bf16 vs fp32 on the same params and inputs."""
  from flax import nnx
  out = {}
  for dt in ("float32", "bfloat16"):
    model = nnx.merge(graphdef, params)
    model.cfg = dataclasses.replace(cfg32, dtype=dt)
    g, p = nnx.split(model)
    fn, video, _, _ = case_fn(g, 1, 0.1, 2, "forward")
    c = jax.jit(fn).lower(p, video).compile()
    loss = np.asarray(c(p, video))
    walls = []
    for _ in range(runs):
      t0 = time.perf_counter()
      jax.block_until_ready(c(p, video))
      walls.append(time.perf_counter() - t0)
    out[dt] = (loss, float(np.median(walls)))
  l32, l16 = out["float32"][0], out["bfloat16"][0]
  return {"case": "forward_b1_ratio0.1_R2", "loss_fp32": l32.tolist(), "loss_bf16": l16.tolist(),
          "max_rel_error": float(np.max(np.abs(l16 - l32) / np.abs(l32))),
          "time_s_fp32": round(out["float32"][1], 4), "time_s_bf16": round(out["bfloat16"][1], 4)}


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--quick", action="store_true", help="tiny config + the default-config reward and 16-frame calls")
  ap.add_argument("--heavy", action="store_true", help="also execute the cases that are compile-only by default")
  ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
  ap.add_argument("--remat", default="none", help="forward cases (the recipe's judge: none)")
  ap.add_argument("--remat_train", default="block", help="forward_backward cases")
  ap.add_argument("--runs", type=int, default=3)
  ap.add_argument("--only", default="", help="run only default-config cases whose name contains this")
  ap.add_argument("--cases", default="", help="comma list of exact default-config case names to run (e.g. "
                                               "forward_b1_ratio0.1_R2,forward_b4_ratio0.1_R2)")
  ap.add_argument("--skip-tiny", action="store_true")
  ap.add_argument("--attn_impl", default=None, help="override the config's attention (flash, dot_product)")
  ap.add_argument("--attn_block", type=int, default=None, help="override the config's flash attention tile")
  ap.add_argument("--prefix_buckets", type=int, default=4,
                  help="reward calls (R < 16) run on the frames up to the latest reconstructed one, rounded up to "
                       "one of this many frame counts (the GRPO recipe's judge_prefix_buckets); 1 = all frames")
  ap.add_argument("--bf16_error", action="store_true", help="also time the reward call in bf16 and report its error")
  common.add_official_arg(ap)
  args = ap.parse_args(argv)
  official = common.load_official(args.official)
  dtype = jnp.dtype(args.dtype)
  peak0 = matmul_peak(dtype)
  out = {"benchmark": "videomae", "env": common.env(), "dtype": args.dtype, "remat": args.remat,
         "attn": {"impl": args.attn_impl, "block": args.attn_block},
         "official_file": os.path.abspath(args.official) if args.official else None, "cases": []}

  def record(name, r):
    r["config"] = name
    if name == "default" and "time_s" in r:
      r.update(common.vs_official(OFFICIAL_KEYS.get((r["mode"], r["batch"], r["ratio"], r["recon_frames"])),
                                  r["time_s"], official))
    out["cases"].append(r)
    print(json.dumps(r), file=sys.stderr, flush=True)

  tiny = tiny_videomae_config(dtype=args.dtype)
  g, p = init_params(tiny)
  for mode in () if args.skip_tiny else ("forward", "forward_backward"):
    record("tiny", run_case(tiny, p, g, 2, 0.1, 16, mode, args.runs, True))

  attn = {k: v for k, v in (("attn_impl", args.attn_impl), ("attn_block", args.attn_block)) if v is not None}
  cfgs = {m: VideoMAEConfig(dtype=args.dtype, remat=rm, loss_type=("l1",), loss_weights=(1.0,), **attn)
          for m, rm in (("forward", args.remat), ("forward_backward", args.remat_train))}
  g, p = init_params(cfgs["forward"])
  out["default_params_m"] = round(sum(x.size for x in jax.tree.leaves(p)) / 1e6, 1)
  cases = [("forward", 1, 0.1, 2, True), ("forward", 1, 0.1, 16, True)]
  if not args.quick:
    cases += [("forward", 4, 0.1, 2, True), ("forward", 1, 1.0, 2, True), ("forward", 4, 1.0, 2, args.heavy),
              ("forward_backward", 1, 0.1, 2, True), ("forward_backward", 1, 1.0, 2, args.heavy),
              ("forward_backward", 4, 0.1, 2, args.heavy)]
  for mode, b, ratio, r, execute in cases:
    name = f"{mode}_b{b}_ratio{ratio}_R{r}"
    if args.only not in name or (args.cases and name not in args.cases.split(",")):
      continue
    gm, pm = (g, p) if mode == "forward" else init_params(cfgs[mode])
    record("default", run_case(cfgs[mode], pm, gm, b, ratio, r, mode, 1 if b * ratio > 1 else args.runs, execute,
                               args.prefix_buckets))
  if args.bf16_error:
    out["bf16_vs_fp32"] = bf16_error(p, g, cfgs["forward"], args.runs)
  peak = max(peak0, matmul_peak(dtype))
  out["matmul_peak_gflops"] = round(peak / 1e9, 1)
  out["matmul_peak_gflops_before_after"] = [round(peak0 / 1e9, 1), round(peak / 1e9, 1)]
  for r in out["cases"]:
    if "gflops_per_s" in r:
      r["mfu_vs_matmul"] = round(r["gflops_per_s"] * 1e9 / peak, 3)
  out["max_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
  common.emit(out)


if __name__ == "__main__":
  main()
