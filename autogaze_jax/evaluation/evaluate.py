"""Held-out evaluation: how many patches does a gaze model need to reach a reconstruction loss?

`ratio_at_loss` sweeps gazing ratios (greedy rollout, no stop), scores each selection with the frozen
judge (`judge.load.Judge`: every loss term it has weights for, perceptual ones included) on every
frame, and interpolates the smallest gaze ratio whose mean reconstruction loss is
<= the threshold (the paper's "gaze ratio at loss 0.7" table; it does not trust the model's own
task-loss head, so an untrained model is measured fairly).
"""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from autogaze_jax.judge.load import Judge
from autogaze_jax.judge.losses import reconstruction_task

DEFAULT_RATIOS = (0.02, 0.04, 0.07, 0.1, 0.15, 0.25, 0.4, 0.6, 0.75)


def _losses(judge: Judge, video, out, frames: int) -> np.ndarray:
  counts = tuple(int(n) for n in out["num_gazing_each_frame"])
  res = reconstruction_task(judge.graphdef, judge.params, video, jnp.asarray(out["gazing_pos"]),
                            jnp.asarray(out["if_padded_gazing"]), jnp.asarray(counts), jnp.arange(frames),
                            judge.perceptual, static_counts=counts)
  return np.asarray(res["loss_each_reconstruction_frame"])          # (B, T)


def _gaze_and_score(model, judge, pixel_values, ratio, threshold, batch: int) -> dict:
  """Greedy gaze at (ratio, threshold) over all clips in batches -> mean VideoMAE loss and gaze ratio."""
  n, t = pixel_values.shape[:2]
  losses, kept = [], []
  for s in range(0, n, batch):
    pv = pixel_values[s:s + batch]
    g = model.generate(pv, ratio, threshold, generate_only=True)
    losses.append(_losses(judge, jnp.asarray(pv), g, t))
    kept.append(g["num_real_gazing_each_frame"] / model.cfg.num_vision_tokens_each_frame)
  return {"loss": float(np.concatenate(losses).mean()), "gaze_ratio": float(np.concatenate(kept).mean())}


def sweep(model, judge, pixel_values, ratios=DEFAULT_RATIOS, batch: int = 4) -> dict:
  """Mean VideoMAE loss (over clips and frames) of greedy gaze at each ratio. pixel_values (N,T,3,224,224)."""
  return {float(r): _gaze_and_score(model, judge, pixel_values, r, None, batch) for r in ratios}


def interpolate_ratio(curve: dict, threshold: float) -> float:
  """Smallest gaze ratio whose loss <= threshold, linear between grid points; inf if never reached."""
  pts = sorted((v["gaze_ratio"], v["loss"]) for v in curve.values())
  if pts[0][1] <= threshold:
    return pts[0][0]
  for (r0, l0), (r1, l1) in zip(pts, pts[1:]):
    if l1 <= threshold:
      return r0 + (r1 - r0) * (l0 - threshold) / max(l0 - l1, 1e-12)
  return float("inf")


def ratio_at_loss(model, judge, pixel_values, threshold: float, ratios=DEFAULT_RATIOS, batch: int = 4) -> dict:
  curve = sweep(model, judge, pixel_values, ratios, batch)
  return {"threshold": threshold, "gaze_ratio_at_threshold": interpolate_ratio(curve, threshold), "curve": curve}


def random_gaze_loss(judge, pixel_values, ratio: float, seed: int = 0) -> float:
  """Mean VideoMAE loss (clips x frames) when shown a uniformly random `ratio` of each frame's V (265)
  multi-scale patches: a model-free reference for choosing a loss threshold on held-out clips."""
  n, t = pixel_values.shape[:2]
  v = judge.cfg.tokens_per_frame
  k = max(1, int(round(ratio * v)))
  rng = np.random.default_rng(seed)
  local = np.stack([np.stack([rng.permutation(v)[:k] for _ in range(t)]) for _ in range(n)])   # (N, T, k)
  pos = (local + v * np.arange(t)[None, :, None]).reshape(n, t * k)
  out = {"gazing_pos": pos, "if_padded_gazing": np.zeros_like(pos, bool), "num_gazing_each_frame": np.full(t, k)}
  return float(_losses(judge, jnp.asarray(pixel_values), out, t).mean())

