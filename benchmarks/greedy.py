"""Greedy label-search throughput: clips/hour per variant, tiny and default VideoMAE, forwards/s (JSON).

  python -m benchmarks.greedy            # ~3-5 min on 2 CPU cores
  python -m benchmarks.greedy --quick    # tiny model only

Method. A labelled clip costs sum over frames and rounds of the candidate sets evaluated; a set
evaluation is one VideoMAE forward (encoder over N gaze slots, decoder over N + 265 tokens, loss).
1. Tiny VideoMAE (tests/fixtures/videomae_tiny, 265 ids/frame): every variant labels one embedded clip
   for real with a reduced schedule (2 frames, 4 patches/frame, tau unreachable) after a compile run;
   the measured steady-state seconds give `measured_clips_per_hour` at that schedule.
2. Both models: seconds per set evaluation are timed with `set_losses` at the slot count of a typical
   round of a gaze-ratio-0.1 clip (N = 256: ~200 earlier-frame tokens + the own frame, bucketed), and
   multiplied by the evaluations of a full 16-frame clip at gaze ratio 0.1 (26.5 patches/frame, counted
   per variant exactly as the search runs them) -> `extrapolated_clips_per_hour`. The default (ViT-MAE-L)
   model is timed on 2 evaluations only (CPU) and has no perceptual terms here (no weights offline).
3. `h100_estimate_s_per_clip`: XLA's FLOP count of one default forward (+ ~80 GFLOP for DINOv2-B and
   SigLIP2-B, when stated) over an assumed 40% of the H100's 989 dense bf16 TFLOP/s. An
   estimate, not a measurement.
"""
from __future__ import annotations

import argparse
import functools
import math
import time

import jax
import jax.numpy as jnp
import numpy as np

from autogaze_jax.labels import greedy
from benchmarks import common

V, T_FULL, RATIO = 265, 16, 0.1
PATCHES = RATIO * V                       # 26.5 per frame
N_TYPICAL = 256
H100_BF16, MFU = 989e12, 0.4
PERCEPTUAL_FLOPS = 80e9

VARIANTS = {
    "exact": greedy.GreedyConfig(),
    "random64": greedy.GreedyConfig(candidates="random", num_candidates=64),
    "c2f8": greedy.GreedyConfig(candidates="coarse_to_fine", c2f_top=8),
    "chunked_k4": greedy.GreedyConfig(k_per_step=4),
    "default(random64+k4)": greedy.GreedyConfig(candidates="random", num_candidates=64, k_per_step=4),
}


def evals_per_round(g: greedy.GreedyConfig, ndata: int = 1) -> int:
  """Candidate sets one round evaluates per clip (as greedy_step pads them)."""
  up = lambda x: -(-x // ndata) * ndata  # noqa: E731
  first = {"all": up(V), "random": up(g.num_candidates), "coarse_to_fine": up(69) + up(4 * g.c2f_top)}[g.candidates]
  return first + (up(g.k_per_step - 1) if g.k_per_step > 1 else 0)


def evals_per_clip(g: greedy.GreedyConfig) -> float:
  """Evaluations of a 16-frame clip with 26.5 patches per frame (rounds = ceil(patches / k))."""
  return T_FULL * math.ceil(PATCHES / g.k_per_step) * evals_per_round(g)


def time_set_losses(graphdef, params, m: int, repeats: int = 2) -> dict:
  """Seconds per set evaluation at N = N_TYPICAL slots, one clip of 16 frames, m sets."""
  video = jax.random.normal(jax.random.key(0), (1, T_FULL, 3, 224, 224), jnp.float32)
  plen = N_TYPICAL - 40
  prefix = (jnp.asarray(np.arange(plen, dtype=np.int32) % V + V * (np.arange(plen) * 7 // plen))[None],
            jnp.asarray([plen], jnp.int32), jnp.zeros((1, T_FULL), jnp.int32).at[0, :7].set(plen // 7).at[0, 6].add(plen % 7))
  sets = jnp.asarray(np.random.default_rng(0).integers(0, V, (1, m, 40)), jnp.int32)
  lens = jnp.full((1, m), 30, jnp.int32)
  f = jax.jit(functools.partial(greedy.set_losses, graphdef, n_slots=N_TYPICAL))
  args = (params, {}, video, prefix, jnp.int32(7), sets, lens)
  lowered = f.lower(*args)
  cost = lowered.compile().cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  r = common.time_fn(f, *args, repeats=repeats)
  return {"sets": m, "s_per_eval": r["min_s"] / m, "forwards_per_s": m / r["min_s"],
          "gflop_per_eval": float(cost.get("flops", float("nan"))) / m / 1e9, "first_call_s": r["first_call_s"]}


def measured_tiny(graphdef, params, video) -> dict:
  out = {}
  for name, g in VARIANTS.items():
    g = g.replace(tau=-1.0, budget=4, slot_bucket=64)
    lab = greedy.GreedyLabeler(graphdef, params, g)
    lab.label(video)                                  # compile
    lab.evals = 0
    t0 = time.perf_counter()
    res = lab.label(video)
    dt = time.perf_counter() - t0
    out[name] = {"variant": g.variant, "schedule": "2 frames x 4 patches", "seconds_per_clip": dt,
                 "measured_clips_per_hour": 3600 / dt, "evals_per_clip": res[0].evals,
                 "forwards_per_s": res[0].evals / dt, "final_loss_mean": float(np.mean([f[-1] for f in res[0].task_losses]))}
  return out


def main(argv=None):
  p = argparse.ArgumentParser()
  p.add_argument("--quick", action="store_true", help="tiny model only")
  args = p.parse_args(argv)
  jax.config.update("jax_default_matmul_precision", "highest")
  from autogaze_jax.interop.videomae import load_checkpoint
  from autogaze_jax.judge.model import init_params
  from autogaze_jax.judge.config import VideoMAEConfig
  from autogaze_jax.gaze.preprocess import normalize_on_device
  from data_pipelines.pipeline import make_source
  import os
  fixture = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests", "fixtures", "videomae_tiny")
  _, tgd, tparams, _ = load_checkpoint(fixture)
  src = make_source("synthetic", None, "train", synthetic_num_clips=40)
  video = normalize_on_device(jnp.asarray(src.load(0)["frames"][None, :2]))

  result = {"benchmark": "greedy", "env": common.env(), "method": __doc__.split("Method.")[1].strip()}
  tiny_eval = time_set_losses(tgd, tparams, 64)
  result["tiny"] = {"set_eval": tiny_eval, "measured": measured_tiny(tgd, tparams, video), "extrapolated": {}}
  models = [("tiny", tiny_eval)]
  if not args.quick:
    cfg = VideoMAEConfig(loss_type=("l1",), loss_weights=(1.0,))
    dgd, dparams = init_params(cfg, 0)
    dflt = time_set_losses(dgd, dparams, 2, repeats=1)
    result["default"] = {"set_eval": dflt, "extrapolated": {}, "note": "random init, l1 only, 2 evaluations timed"}
    models.append(("default", dflt))
  for name, ev in models:
    for vname, g in VARIANTS.items():
      e = evals_per_clip(g)
      s = e * ev["s_per_eval"]
      row = {"variant": g.variant, "evals_per_clip": e, "seconds_per_clip": s, "extrapolated_clips_per_hour": 3600 / s}
      if name == "default":
        f = ev["gflop_per_eval"] * 1e9
        row["h100_estimate_s_per_clip_l1_only"] = e * f / (H100_BF16 * MFU)
        row["h100_estimate_s_per_clip_with_perceptual"] = e * (f + PERCEPTUAL_FLOPS) / (H100_BF16 * MFU)
      result[name]["extrapolated"][vname] = row
  common.emit(result)


if __name__ == "__main__":
  main()
