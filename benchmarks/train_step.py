"""NTP and GRPO train-step time, peak memory and MFU at the default model size.

  python -m benchmarks.train_step [--ntp_batch 4] [--grpo_batch 1] [--grpo_group 4] [--repeats 3]

NTP: batch 4 clips of 16x224x224 with 34 label slots + 1 EOS slot per frame (decoder sequence 3,696
tokens, the official `ntp_train_step_b4` shape), Adam. GRPO: batch x group rollouts with the small
VideoMAE judge (config "small"; the official judge is ViT-MAE-L, too large to time here), SGD.
MFU = useful FLOPs (3 x forward for NTP; rollout + reward forwards + 3 x teacher-forced for GRPO) /
step time / fp32 matmul peak measured in this run. Peak memory = XLA's compiled temp + argument size.
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


def bench_ntp(cfg, batch, slots, repeats, peak):
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
  base = common.baseline("ntp_train_step_b4") if batch == 4 else None
  return {"step": "ntp", "batch": batch, "decoder_seq": 16 * (196 + slots), "compile_s": compile_s, **t,
          "peak_memory_gib": mem, "mfu": flops / t["median_s"] / 1e9 / peak,
          "official_s": base, "speedup_vs_official": None if base is None else base / t["median_s"]}


def bench_grpo(cfg, batch, group, cap, repeats, peak):
  from autogaze_jax.gaze import sampling as S
  from autogaze_jax.train.grpo import make_train_step
  from autogaze_jax.judge.load import judge_config
  from autogaze_jax.judge.model import init_params as mae_init
  graphdef, params = init_params(cfg, 0)
  mg, mp = mae_init(judge_config("small"), 0)
  frozen = {"videomae": mp, "perceptual": {}}
  tx = optax.sgd(5e-4)
  g = ml_collections.ConfigDict(dict(group_size=group, discount_factor=0.995, tokens_per_step=10, top_k=50,
                                     temperature_start=3.0, temperature_end=0.3, frames_to_reconstruct=2,
                                     optimize_task_loss_prediction=True, total_steps=100))
  sampling = S.SamplingConfig(S.RatioSampling(fixed=(cap + 0.5) / 265), S.FrameSampling(during_training="self"),
                              S.RequirementSampling(during_training="uniform", uniform_min=0.5, uniform_max=1.0))
  step = make_train_step(graphdef, mg, tx, cfg=g, sampling=sampling)
  state = TrainState(jnp.zeros((), jnp.int32), params, tx.init(params))
  video = jnp.asarray(np.random.default_rng(0).normal(size=(batch, 16, 3, 224, 224)).astype(np.float32))
  c, compile_s, mem = _compile(step, state, {"video": video}, jax.random.key(0), frozen)
  t = common.time_fn(lambda: c(state, {"video": video}, jax.random.key(0), frozen), repeats=repeats)
  return {"step": "grpo", "batch_videos": batch, "group": group, "rollouts": batch * group, "cap_per_frame": cap,
          "judge": "small VideoMAE (random)", "compile_s": compile_s, **t, "peak_memory_gib": mem,
          "official_s": None, "note": "no official GRPO timing exists in official_cpu.json"}


def main():
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--ntp_batch", type=int, default=4)
  ap.add_argument("--ntp_slots", type=int, default=35)
  ap.add_argument("--grpo_batch", type=int, default=1)
  ap.add_argument("--grpo_group", type=int, default=4)
  ap.add_argument("--grpo_cap", type=int, default=26)
  ap.add_argument("--repeats", type=int, default=3)
  ap.add_argument("--skip", default="", help="comma list of steps to skip (ntp,grpo)")
  args = ap.parse_args()
  cfg = GazeConfig()
  peak = common.matmul_peak_gflops()
  results = []
  if "ntp" not in args.skip:
    results.append(bench_ntp(cfg, args.ntp_batch, args.ntp_slots, args.repeats, peak))
    common.emit(results[-1])
  if "grpo" not in args.skip:
    results.append(bench_grpo(cfg, args.grpo_batch, args.grpo_group, args.grpo_cap, args.repeats, peak))
    common.emit(results[-1])
  common.emit({"benchmark": "train_step", "config": "default gaze model (3.26M)", "matmul_peak_gflops": peak,
               "env": common.env(), "results": results})


if __name__ == "__main__":
  main()
