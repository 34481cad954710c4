"""Gaze ratio vs reconstruction loss: the stop-rule and fixed-budget curves of a gaze model.

A curve is a list of points; each point gazes every clip at one setting and scores the selection with
the frozen judge (its full loss, perceptual terms included, over every frame):
  * fixed budget: greedy rollout at gaze ratio r, no stop (the paper's "gaze ratio" axis);
  * stop rule: greedy rollout capped at `cap_ratio`, stopping each frame once the model's task-loss head
    predicts a loss <= threshold q (how AutoGaze is used: `task_loss_requirement`).
Each point holds the mean over clips of the judge loss and of the real gaze ratio, their per-clip values
and standard deviations, and, when the judge's reconstructions are kept, PSNR/SSIM against the clip.
`ratio_at` interpolates the gaze ratio at which a curve first reaches a loss epsilon.

The two halves are injected (`gaze_fn`, `score_fn`) so a curve can be computed for any gaze source and
scorer; `model_gaze_fn` / `judge_score_fn` are the AutoGaze + `judge.load.Judge` ones.
"""
from __future__ import annotations

import functools
import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from autogaze_jax.evaluation import evaluate as ev
from autogaze_jax.evaluation import quality
from autogaze_jax.judge.losses import reconstruction_task

# gaze_fn(pixel_values (B,T,3,H,W), ratio | None, threshold | None) -> the official output dict
# (gazing_pos, if_padded_gazing, num_gazing_each_frame, num_real_gazing_each_frame)
GazeFn = Callable
# score_fn(pixel_values, out) -> (loss (B, T), reconstruction (B, T, 3, H, W) task space, or None)
ScoreFn = Callable


NEVER_STOP = -1e30   # a task-loss threshold no prediction reaches: the fixed budget through the stop-rule program


def model_gaze_fn(model, cap_ratio: float) -> GazeFn:
  """Greedy AutoGaze rollouts; the stop rule runs capped at `cap_ratio`. Every setting runs at the
  capacity of `cap_ratio` (budgets are traced) and a fixed budget is the stop rule at NEVER_STOP (the same
  gazes as generate(ratio, None): checked on the gaze_tiny fixture), so a sweep compiles one rollout program."""
  v = model.cfg.num_vision_tokens_each_frame
  capacity = min(v, int(math.ceil(cap_ratio * v)) + 1)

  def gaze(pv, ratio, threshold):
    return model.generate(pv, cap_ratio if ratio is None else ratio, NEVER_STOP if threshold is None else threshold,
                          generate_only=True,
                          capacity=capacity)
  return gaze


def slot_bucket(n: int) -> int:
  """Slots per frame the judge is compiled for: the next power of two (>= 8), so a sweep compiles a few
  programs instead of one per distinct count (padded slots are masked out of the judge)."""
  return max(8, 1 << max(0, int(n) - 1).bit_length())


def repack(out: dict, slots: int) -> tuple[np.ndarray, np.ndarray]:
  """The official variable layout (frame f owns num_gazing_each_frame[f] slots) -> `slots` per frame,
  the extra slots padded: (gazing_pos, if_padded) of shape (B, T * slots)."""
  pos, pad = np.asarray(out["gazing_pos"]), np.asarray(out["if_padded_gazing"], bool)
  counts = [int(n) for n in out["num_gazing_each_frame"]]
  b, t = pos.shape[0], len(counts)
  new_pos, new_pad = np.zeros((b, t, slots), pos.dtype), np.ones((b, t, slots), bool)
  start = 0
  for f, n in enumerate(counts):
    new_pos[:, f, :n], new_pad[:, f, :n] = pos[:, start:start + n], pad[:, start:start + n]
    start += n
  return new_pos.reshape(b, t * slots), new_pad.reshape(b, t * slots)


@functools.partial(jax.jit, static_argnums=(0,), static_argnames=("slots",))
def _judge_frames(graphdef, params, perceptual, video, pos, pad, *, slots: int):
  t = video.shape[1]
  counts = (slots,) * t
  res = reconstruction_task(graphdef, params, video, pos, pad, jnp.asarray(counts), jnp.arange(t), perceptual,
                            static_counts=counts)
  return res["loss_each_reconstruction_frame"], res["reconstruction"]


def judge_score_fn(judge) -> ScoreFn:
  """The judge's loss (every term it has weights for) and reconstruction of every frame (one jitted
  program per slot bucket)."""
  def score(pv, out):
    slots = slot_bucket(max(int(n) for n in out["num_gazing_each_frame"]))
    pos, pad = repack(out, slots)
    loss, rec = _judge_frames(judge.graphdef, judge.params, judge.perceptual, jnp.asarray(pv), jnp.asarray(pos),
                              jnp.asarray(pad), slots=slots)
    return np.asarray(loss), np.asarray(rec)
  return score


def _stats(name: str, per_clip: np.ndarray) -> dict:
  return {name: float(per_clip.mean()), f"{name}_std": float(per_clip.std()),
          f"{name}_clips": [float(x) for x in per_clip]}


def curve_point(gaze_fn: GazeFn, score_fn: ScoreFn, pixel_values, tokens_per_frame: int, *, ratio=None,
                threshold=None, batch: int = 4, with_quality: bool = True, keep: bool = False,
                processor=None) -> dict:
  """Gaze all clips (N, T, 3, H, W) at one setting and score them. `keep`: also return the selections
  ("gazes": N (gazing_pos, if_padded) pairs, "num_real": (N, T)) and the reconstructions (N, T, H, W, 3)
  uint8 under "_kept" for the analyses and pictures. `processor`: the one that made `pixel_values` (PSNR and
  SSIM compare in its pixels; default: the released processor)."""
  n = len(pixel_values)
  if n == 0:
    raise ValueError("curve_point: no clips")
  losses, kept, psnrs, ssims, gazes, nreal, recs = [], [], [], [], [], [], []
  for s in range(0, n, batch):
    pv = np.asarray(pixel_values[s:s + batch])
    out = gaze_fn(pv, ratio, threshold)
    loss, rec = score_fn(pv, out)
    losses.append(np.asarray(loss).mean(1))
    real = np.asarray(out["num_real_gazing_each_frame"])
    kept.append(real.mean(1) / tokens_per_frame)
    if with_quality and rec is not None:
      a, b = quality.task_to_unit(rec, processor), quality.task_to_unit(pv, processor)
      psnrs.append(quality.psnr(a, b).mean(1))
      ssims.append(quality.ssim(a, b).mean(1))
      if keep:
        recs.append(quality.unit_to_uint8(a))
    if keep:
      pos, pad = np.asarray(out["gazing_pos"]), np.asarray(out["if_padded_gazing"])
      gazes += [(pos[i], pad[i]) for i in range(len(pv))]
      nreal.append(real)
  point = {"ratio": ratio, "threshold": threshold, **_stats("loss", np.concatenate(losses)),
           **_stats("gaze_ratio", np.concatenate(kept))}
  if psnrs:
    point.update(**_stats("psnr", np.concatenate(psnrs)), **_stats("ssim", np.concatenate(ssims)))
  if keep:
    point["_kept"] = {"gazes": gazes, "num_real": np.concatenate(nreal),
                      "reconstruction": np.concatenate(recs) if recs else None}
  return point


def ratio_at(points, epsilon: float) -> float:
  """Smallest gaze ratio at which the curve's mean loss is <= epsilon (linear between points sorted by
  gaze ratio); inf when no point reaches it."""
  if not points:
    raise ValueError("ratio_at: empty curve")
  return ev.interpolate_ratio({i: p for i, p in enumerate(points)}, epsilon)


def thresholds_from(points, count: int | None = None, extra=()) -> list[float]:
  """Stop-rule thresholds spanning a fixed-budget curve's losses (at most `count`, evenly picked), plus
  `extra` (e.g. the epsilon of the table)."""
  qs = sorted({round(float(p["loss"]), 6) for p in points})
  if count is not None and len(qs) > count:
    qs = [qs[int(round(i))] for i in np.linspace(0, len(qs) - 1, count)]
  return sorted(set(qs) | {float(x) for x in extra})
