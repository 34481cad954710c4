"""Greedy label-search throughput with and without the prefix cache: clips/hour per variant (JSON).

  python -m benchmarks.greedy            # ~10 min on 2 CPU cores (the default judge dominates)
  python -m benchmarks.greedy --quick    # tiny model only

Method. A labelled clip costs, per frame t and round, one evaluation per candidate set. Without the
cache a set evaluation is a full judge forward (encoder over all slots so far, decoder over them + 265
rows); with it (judge/prefix_cache.py) the earlier frames' keys/values are computed once per frame and a
set runs only its own slots and frame t's 265 decoder rows.
1. Schedule: a 16-frame clip at gaze ratio 0.1 (26.5 patches per frame: the earlier-frame prefix at frame
   t is 26.5*t slots, the own set 13 on average). At frames 0/5/10/15 we time, in this run, a batch of
   candidate sets both ways (`set_losses` vs `cached_set_losses`, slot counts bucketed as the labeler
   does) and the cached prefix alone; per-set seconds are linear in t in between. Seconds per clip =
   sum over frames of rounds x sets per round x per-set s (+ the prefix s once per frame when cached); the ratio of the two
   is `cache_speedup`. The default (ViT-MAE-L, random init, l1) judge is timed on 2 full / 16 cached sets per point.
2. Tiny VideoMAE (tests/fixtures/videomae_tiny): exact greedy labels a real clip both ways at a reduced
   schedule (6 frames x 4 patches, tau unreachable) after a compile run; the labels must be identical
   (`labels_identical`) and the measured seconds give `measured_speedup`.
3. `h100_estimate_s_per_clip`: XLA's FLOP count of the cached schedule (+ ~40 GFLOP per set for DINOv2-B
   and SigLIP2-B, when stated) over an assumed 40% of the H100's 989 dense bf16 TFLOP/s. An estimate,
   not a measurement.
"""
from __future__ import annotations

import argparse
import json
import functools
import math
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from autogaze_jax.gaze.preprocess import normalize_on_device
from autogaze_jax.interop.videomae import load_checkpoint
from autogaze_jax.judge.config import VideoMAEConfig
from autogaze_jax.judge.model import init_params
from autogaze_jax.labels import greedy
from benchmarks import common
from data_pipelines.pipeline import make_source

V, T_FULL, RATIO = 265, 16, 0.1
PATCHES = RATIO * V                       # 26.5 per frame
H100_BF16, MFU = 989e12, 0.4
PERCEPTUAL_FLOPS = 40e9   # DINOv2-B + SigLIP2-B on one prediction (frame t's target features: once per round)

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


SAMPLED_FRAMES = (0, 5, 10, 15)
OWN = 13                                   # own-set size in the middle of a frame's 26.5 patches


def _cost_flops(fn, *args) -> float:
  cost = fn.lower(*args).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  return float(cost.get("flops", float("nan")))


def time_point(graphdef, params, t: int, m: int, m_cached: int, repeats: int) -> dict:
  """Per-set seconds (and GFLOP) at frame t of the schedule, full forward (m sets) vs cached (m_cached sets:
  a cached set is ~10x less work, so it needs more sets per call to fill the matmuls as a real round's
  265 do), plus the cached prefix."""
  cfg = greedy.nnx.merge(graphdef, params).cfg
  v, size = cfg.tokens_per_frame, cfg.image_size
  rng = np.random.default_rng(t)
  video = jax.random.normal(jax.random.key(t), (1, T_FULL, 3, size, size), jnp.float32)
  per = [int(round(PATCHES * (f + 1))) - int(round(PATCHES * f)) for f in range(t)]
  flat = [int(x) + v * f for f, k in enumerate(per) for x in rng.choice(v, k, replace=False)]
  plen = len(flat)
  ids = np.zeros((1, max(1, plen)), np.int32)
  ids[0, :plen] = flat
  counts = np.zeros((1, T_FULL), np.int32)
  counts[0, :t] = per
  prefix = (jnp.asarray(ids), jnp.asarray([plen], jnp.int32), jnp.asarray(counts))
  sets = jnp.asarray(np.stack([rng.choice(v, OWN + 1, replace=False) for _ in range(max(m, m_cached))])[None],
                     jnp.int32)
  lens = jnp.full((1, max(m, m_cached)), OWN + 1, jnp.int32)
  n_prefix = greedy._round_up(plen, greedy.GreedyConfig.slot_bucket)
  full = jax.jit(functools.partial(greedy.set_losses, graphdef,
                                   n_slots=greedy._round_up(plen + OWN + 1, greedy.GreedyConfig.slot_bucket)))
  pre = jax.jit(functools.partial(greedy.prefix_caches, graphdef, n_prefix=n_prefix))
  cached = jax.jit(functools.partial(greedy.cached_set_losses, graphdef,
                                     n_own=greedy._round_up(OWN + 1, greedy._OWN_BUCKET)))
  args = (params, {}, video, prefix, jnp.int32(t), sets[:, :m], lens[:, :m])
  caches = pre(params, video, prefix)
  cargs = (params, {}, video, caches, jnp.int32(t), sets[:, :m_cached], lens[:, :m_cached])
  k = min(m, m_cached)
  out = {"t": t, "prefix_slots": plen, "sets_timed": m, "cached_sets_timed": m_cached,
         "max_abs_diff": float(jnp.max(jnp.abs(full(*args)[:, :k] - cached(*cargs)[:, :k])))}
  tf = common.time_fn(full, *args, repeats=repeats)["min_s"]
  tc = common.time_fn(cached, *cargs, repeats=repeats)["min_s"]
  tp = common.time_fn(pre, params, video, prefix, repeats=repeats)["min_s"]
  out.update(full_set_s=tf / m, cached_set_s=tc / m_cached, cached_prefix_s=tp,
             full_set_gflop=_cost_flops(full, *args) / m / 1e9,
             cached_set_gflop=_cost_flops(cached, *cargs) / m_cached / 1e9,
             cached_prefix_gflop=_cost_flops(pre, params, video, prefix) / 1e9)
  return out


def clip_seconds(points: list[dict], g: greedy.GreedyConfig, cached: bool, key: str = "s") -> float:
  """Seconds (key "s") or GFLOP (key "gflop") of a 16-frame clip for variant g, per-set costs linear in t."""
  ts = [p["t"] for p in points]
  unit = "_s" if key == "s" else "_gflop"
  set_cost = np.interp(np.arange(T_FULL), ts, [p[("cached_set" if cached else "full_set") + unit] for p in points])
  pre_cost = np.interp(np.arange(T_FULL), ts, [p["cached_prefix" + unit] for p in points]) if cached else 0 * set_cost
  rounds = math.ceil(PATCHES / g.k_per_step)
  return float(np.sum(rounds * evals_per_round(g) * set_cost + pre_cost))


def measured_tiny(graphdef, params, video) -> dict:
  """Exact greedy on a real clip both ways (6 frames x 4 patches); labels compared."""
  g = VARIANTS["exact"].replace(tau=-1.0, budget=4, slot_bucket=64)
  out, labels = {}, {}
  for name, gc in (("cached", g), ("full", g.replace(prefix_cache=False))):
    lab = greedy.GreedyLabeler(graphdef, params, gc)
    lab.label(video)                                  # compile
    t0 = time.perf_counter()
    labels[name] = lab.label(video)
    out[name + "_s_per_clip"] = time.perf_counter() - t0
  out["schedule"] = f"{video.shape[1]} frames x {g.budget} patches"
  out["labels_identical"] = all(a.gazing_pos == b.gazing_pos for a, b in zip(labels["cached"], labels["full"]))
  out["max_loss_diff"] = max(float(np.max(np.abs(np.concatenate(a.task_losses) - np.concatenate(b.task_losses))))
                             for a, b in zip(labels["cached"], labels["full"]))
  out["measured_speedup"] = out["full_s_per_clip"] / out["cached_s_per_clip"]
  return out


def schedule(graphdef, params, m: int, m_cached: int, repeats: int, h100: bool) -> dict:
  points = [time_point(graphdef, params, t, m, m_cached, repeats) for t in SAMPLED_FRAMES]
  res = {"points": points, "variants": {}}
  for vname, g in VARIANTS.items():
    full, cached = clip_seconds(points, g, False), clip_seconds(points, g, True)
    row = {"variant": g.variant, "evals_per_clip": evals_per_clip(g), "full_s_per_clip": full,
           "cached_s_per_clip": cached, "cache_speedup": full / cached, "cached_clips_per_hour": 3600 / cached}
    if h100:
      gf = clip_seconds(points, g, True, "gflop") * 1e9
      row["h100_estimate_s_per_clip_l1_only"] = gf / (H100_BF16 * MFU)
      row["h100_estimate_s_per_clip_with_perceptual"] = (gf + evals_per_clip(g) * PERCEPTUAL_FLOPS) / (H100_BF16 * MFU)
      row["h100_estimate_s_per_clip_uncached_l1_only"] = clip_seconds(points, g, False, "gflop") * 1e9 / (H100_BF16 * MFU)
    res["variants"][vname] = row
  return res


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("Method.")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--quick", action="store_true", help="tiny model only")
  p.add_argument("--skip_tiny", action="store_true", help="default judge only")
  p.add_argument("--out", default=None, help="also write the JSON here")
  args = p.parse_args(argv)
  jax.config.update("jax_default_matmul_precision", "highest")
  fixture = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests", "fixtures", "videomae_tiny")
  _, tgd, tparams, _ = load_checkpoint(fixture)
  src = make_source("synthetic", None, "train", synthetic_num_clips=40)
  video = normalize_on_device(jnp.asarray(src.load(0)["frames"][None, :6]))

  result = {"benchmark": "greedy", "env": common.env(), "loadavg_before": common.loadavg(),
            "method": __doc__.split("Method.")[1].strip()}
  if not args.skip_tiny:
    result["tiny"] = {"measured": measured_tiny(tgd, tparams, video), **schedule(tgd, tparams, 64, 64, 3, False)}
  if not args.quick:
    dgd, dparams = init_params(VideoMAEConfig(loss_type=("l1",), loss_weights=(1.0,)), 0)
    result["default"] = {"note": "ViT-MAE-L, random init, l1 only, 2 full / 16 cached sets timed per point",
                         **schedule(dgd, dparams, 2, 16, 2, True)}
  result["loadavg_after"] = common.loadavg()
  common.emit(result)
  if args.out:
    with open(args.out, "w") as f:
      f.write(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
  main()
