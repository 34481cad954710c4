"""NTP and GRPO train-step time, peak memory and MFU at the default model size, vs the official step.

  python -m benchmarks.train_step [--official=FILE] [--skip grpo] [--grpo_cases l1,perceptual,...]

NTP: batch 4 clips of 16x224x224 with 34 label slots + 1 EOS slot per frame (decoder sequence 3,696
tokens, the official `ntp_train_step_b4` shape), Adam. GRPO: the RL recipe's step on the work of the
official `bench_official_grpo.py` (1 video, group 12, ViT-MAE-L judge at random init, 2 reconstructed
frames; see `bench_grpo`), SGD. MFU (NTP) = useful FLOPs (3 x forward) / step time / fp32 matmul peak
measured in this run. Peak memory = XLA's compiled temp + argument size. `vs_official` = official /
ours, only against `--official=FILE` (the official scripts' JSON of this session, both files merged
with `python -c` if needed).
"""
from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from autogaze_jax import GazeConfig
from autogaze_jax.train.state import TrainState
from autogaze_jax.gaze.functional import init_params
from autogaze_jax.gaze.flops import teacher_forced_flops
from benchmarks import common


def _compile(fn, *args):
  t0 = time.perf_counter()
  c = jax.jit(fn).lower(*args).compile()
  mem = c.memory_analysis()
  peak = None if mem is None else (mem.temp_size_in_bytes + mem.argument_size_in_bytes) / 2**30
  return c, time.perf_counter() - t0, peak


def bench_ntp(cfg, batch, slots, repeats, peak, official):
  from autogaze_jax.train.ntp import make_train_step
  graphdef, params = init_params(cfg, 0)
  tx = optax.adam(5e-4)
  counts = (slots,) * 16
  step = make_train_step(graphdef, tx, counts)
  state = TrainState(jnp.zeros((), jnp.int32), params, tx.init(params))
  rng = np.random.default_rng(0)
  n = slots * 16
  local = np.stack([rng.permutation(265)[:slots] for _ in range(batch * 16)]).reshape(batch, 16, slots)
  batch_d = {"video": jnp.asarray(rng.normal(size=(batch, 16, 3, 224, 224)).astype(np.float32)),
             "gazing_pos": jnp.asarray((local + 265 * np.arange(16)[None, :, None]).reshape(batch, n)),
             "if_padded_gazing": jnp.zeros((batch, n), bool).at[:, slots - 1::slots].set(True),
             "task_losses": jnp.ones((batch, n), jnp.float32)}
  c, compile_s, mem = _compile(step, state, batch_d, jax.random.key(0))
  t = common.time_fn(lambda: c(state, batch_d, jax.random.key(0)), repeats=repeats)
  flops = 3 * batch * teacher_forced_flops(cfg, counts)
  return {"step": "ntp", "batch": batch, "decoder_seq": 16 * (196 + slots), "compile_s": compile_s, **t,
          "peak_memory_gib": mem, "mfu": flops / t["median_s"] / 1e9 / peak,
          "loadavg": common.loadavg(),
          **common.vs_official("ntp_train_step_b4" if batch == 4 else None, t["median_s"], official)}


GRPO_CASES = {   # case -> (judge loss terms, per-frame cap, reference requirement range, official key)
    "l1": ("l1", 1, (0.5, 1.0), "grpo_step_b1_g12_l1"),
    "perceptual": ("", 1, (0.5, 1.0), "grpo_step_b1_g12_perceptual"),
    "l1_noearlystop_ratio0.1": ("l1", 26, (-1e6, -1e6), "grpo_step_b1_g12_l1_noearlystop_ratio0.1"),
}


def bucket_keys(t: int, r: int, buckets: tuple[int, ...], search: int = 1000) -> list[tuple[int, int, float, list]]:
  """Per judge prefix bucket: (bucket, the first step seed whose reward frames fall in it, the bucket's
  probability over uniform draws, those frames)."""
  from math import comb
  from autogaze_jax.train.grpo import reward_frames, step_keys
  out, lo = [], 0
  for k in buckets:
    p = (comb(k, r) - comb(lo, r)) / comb(t, r)
    for seed in range(search):
      fr = np.asarray(reward_frames(step_keys(jax.random.key(seed))["frames"], t, r))
      if lo < fr.max() + 1 <= k:
        out.append((k, seed, p, fr.tolist()))
        break
    lo = k
  return out


def bench_grpo(cfg, case, batch, group, repeats, peak, official, prefix_buckets_n=4):
  """One GRPO step of the RL recipe on the work of `bench_official_grpo.py`: ViT-MAE-L judge at random init
  (l1, or l1 + DINOv2-reg-B + SigLIP2-B at random init), group 12, 2 reconstructed frames. With random
  weights the official reference rollout stops every frame after 1 token, so its group rollouts hold 16
  tokens: cap 1 per frame gives us exactly that work. The no-early-stop case runs every frame to 26 tokens.

  The reward call skips the judge's frames after the latest reconstructed one (`judge_prefix_buckets`),
  so the step time depends on the frames a step draws while the official step's does not: with more
  than one bucket, the step is timed once per bucket (a seed that draws frames in it) and `median_s` is
  the expectation over uniform frame draws, sum_b P(b) * median time of bucket b (`per_bucket`)."""
  from autogaze_jax.judge.model import prefix_lengths
  from autogaze_jax.gaze import sampling as S
  from autogaze_jax.judge.load import load_judge
  from autogaze_jax.train.grpo import make_train_step
  loss_type, cap, (q_lo, q_hi), key = GRPO_CASES[case]
  graphdef, params = init_params(cfg, 0)
  judge = load_judge("", "default", loss_type=loss_type)
  frozen = {"videomae": judge.params, "perceptual": judge.perceptual}
  tx = optax.sgd(5e-4)
  g = ml_collections.ConfigDict(dict(group_size=group, discount_factor=0.995, tokens_per_step=10, top_k=50,
                                     temperature_start=3.0, temperature_end=0.3, frames_to_reconstruct=2,
                                     optimize_task_loss_prediction=True, total_steps=100,
                                     judge_prefix_buckets=prefix_buckets_n))
  sampling = S.SamplingConfig(S.RatioSampling(fixed=(cap + 0.5) / 265), S.FrameSampling(during_training="self"),
                              S.RequirementSampling(during_training="uniform", uniform_min=q_lo, uniform_max=q_hi))
  step = make_train_step(graphdef, judge.graphdef, tx, cfg=g, sampling=sampling)
  state = TrainState(jnp.zeros((), jnp.int32), params, tx.init(params))
  video = jnp.asarray(np.random.default_rng(0).normal(size=(batch, 16, 3, 224, 224)).astype(np.float32))
  c, compile_s, mem = _compile(step, state, {"video": video}, jax.random.key(0), frozen)
  _, metrics = c(state, {"video": video}, jax.random.key(0), frozen)
  load_before = common.loadavg()
  per_bucket = []
  for k, seed, prob, frames in bucket_keys(16, 2, prefix_lengths((cap,) * 16, 2, prefix_buckets_n)):
    tb = common.time_fn(lambda: c(state, {"video": video}, jax.random.key(seed), frozen), repeats=repeats)
    per_bucket.append({"frames_computed": k, "probability": round(prob, 4), "seed": seed, "reward_frames": frames,
                       "median_s": round(tb["median_s"], 3), "min_s": round(tb["min_s"], 3)})
  t = {"median_s": sum(b["probability"] * b["median_s"] for b in per_bucket),
       "min_s": sum(b["probability"] * b["min_s"] for b in per_bucket), "first_call_s": tb["first_call_s"],
       "repeats": repeats, "judge_prefix_buckets": prefix_buckets_n, "per_bucket": per_bucket}
  return {"step": "grpo", "case": case, "batch_videos": batch, "group": group, "rollouts": batch * group,
          "cap_per_frame": cap, "judge": f"ViT-MAE-L (random init), terms {'+'.join(judge.cfg.loss_type)}",
          "gaze_tokens_per_rollout": round(float(metrics["gaze_ratio"]) * 265 * 16, 1),
          "compile_s": compile_s, **t, "peak_memory_gib": mem, "loadavg_before": load_before,
          "loadavg_after": common.loadavg(), **common.vs_official(key, t["median_s"], official)}


def main():
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--ntp_batch", type=int, default=4)
  ap.add_argument("--ntp_slots", type=int, default=35)
  ap.add_argument("--grpo_batch", type=int, default=1)
  ap.add_argument("--grpo_group", type=int, default=12)
  ap.add_argument("--grpo_cases", default="l1,perceptual,l1_noearlystop_ratio0.1",
                  help=f"comma list of {', '.join(GRPO_CASES)}")
  ap.add_argument("--repeats", type=int, default=3)
  ap.add_argument("--judge_prefix_buckets", type=int, default=4,
                  help="GRPO reward calls: frame-prefix buckets of the judge (the recipe's config.grpo value; 1 = "
                       "every frame always)")
  ap.add_argument("--skip", default="", help="comma list of steps to skip (ntp,grpo)")
  common.add_official_arg(ap)
  args = ap.parse_args()
  official = common.load_official(args.official)
  cfg = GazeConfig()
  peak = common.matmul_peak_gflops()
  results = []
  if "ntp" not in args.skip:
    results.append(bench_ntp(cfg, args.ntp_batch, args.ntp_slots, args.repeats, peak, official))
    common.emit(results[-1])
  if "grpo" not in args.skip:
    for case in [c for c in args.grpo_cases.split(",") if c]:
      if case not in GRPO_CASES:
        ap.error(f"--grpo_cases: unknown case {case!r}; known: {', '.join(GRPO_CASES)}")
      results.append(bench_grpo(cfg, case, args.grpo_batch, args.grpo_group, args.repeats, peak, official,
                                args.judge_prefix_buckets))
      common.emit(results[-1])
  common.emit({"benchmark": "train_step", "config": "default gaze model (3.26M)", "matmul_peak_gflops": peak,
               "env": common.env(), "results": results})


if __name__ == "__main__":
  main()
