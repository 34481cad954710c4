"""The evaluation a researcher would otherwise write by hand: curves, quality, analyses, pictures, one report.

`evaluate_models(models, judge, frames, out_dir, ...)` measures, for every named gaze model on the same
held-out clips (uint8 (N, T, H, W, 3)), and writes OUT/report.json plus PNG figures:
  curves.png    judge loss / PSNR / SSIM vs gaze ratio: fixed-budget (solid, per-clip std band) and
                stop-rule (dashed) curves of every model, the loss epsilon and each model's ratio at it;
  analysis.png  gaze ratio by frame index, repeat rate of gazed patches on static vs moving regions,
                mean local detail of the patches gazed at each scale (Spearman rho in the legend);
  pictures/     per model and clip: original / gazed / reconstruction / interframe canvas (PNG + GIF),
                gazed with the stop rule at epsilon.
The analyses and pictures use the stop rule at epsilon (capped at the largest ratio): the model gazing
as it is used. Models must share the judge's patch layout (`check_compatible`).
"""
from __future__ import annotations

import json
import logging
import math
import os

import numpy as np

from autogaze_jax.core.patches import ScaleLayout
from autogaze_jax.evaluation import analysis, canvas, curves
from autogaze_jax.evaluation import figures as figs
from autogaze_jax.evaluation import evaluate as ev
from autogaze_jax.evaluation.writers import Progress
from autogaze_jax.interop.common import CheckpointError

DEFAULT_RATIOS = (0.02, 0.05, 0.1, 0.2, 0.4, 0.75)
EPSILON_RANDOM_RATIO = 0.1   # default epsilon: the judge's loss on a random 10% of the patches


class EmptyEvaluationData(ValueError):
  """The evaluation got no clips (an empty split, a filter that kept nothing, num_clips = 0)."""


def check_compatible(name: str, gaze_cfg, judge, judge_name: str = "judge") -> None:
  """The judge scores a gaze model's ids only if both cut frames into the same multi-scale patches."""
  jc = judge.cfg
  mine = (tuple(gaze_cfg.scales), int(gaze_cfg.num_vision_tokens_each_frame), int(gaze_cfg.input_img_size))
  theirs = (tuple(jc.scales), int(jc.tokens_per_frame), int(jc.image_size))
  if mine != theirs:
    raise CheckpointError(f"gaze model {name!r} (scales {mine[0]}, {mine[1]} tokens per frame, {mine[2]} px) does "
                          f"not match the {judge_name} (scales {theirs[0]}, {theirs[1]} tokens per frame, {theirs[2]} "
                          "px): its gaze ids would address other patches; use a judge of the same layout")


def _public(point: dict) -> dict:
  return {k: v for k, v in point.items() if not k.startswith("_")}


def _finite(x):
  """JSON without NaN/Inf (null instead): report.json stays valid JSON."""
  if isinstance(x, dict):
    return {str(k): _finite(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_finite(v) for v in x]
  if isinstance(x, (float, np.floating)):
    return float(x) if math.isfinite(x) else None
  if isinstance(x, np.integer):
    return int(x)
  return x


def evaluate_models(models: dict, judge, frames_uint8, out_dir: str, *, ratios=DEFAULT_RATIOS, epsilon=None,
                    thresholds=None, num_thresholds: int | None = None, batch: int = 4, pictures: int = 2,
                    picture_frames: int = 8, motion_threshold: float = analysis.MOTION_THRESHOLD,
                    figures: bool = True) -> dict:
  """Measure every model of {name: AutoGaze}; write OUT/report.json (+ figures, pictures). Returns the report.

  ratios: fixed-budget gaze ratios; epsilon: the loss of "ratio at epsilon" (None: the judge's loss on a
  random 10% of the patches of these clips); thresholds: stop-rule thresholds (None: spanning each
  model's fixed-budget losses, at most `num_thresholds`, plus epsilon); pictures: clips drawn per model
  (their first `picture_frames` frames in the PNG, all in the GIF).
  """
  frames = np.asarray(frames_uint8)
  if frames.ndim != 5 or len(frames) == 0:
    raise EmptyEvaluationData(f"evaluation needs clips uint8 (N, T, H, W, 3) with N >= 1, got shape {frames.shape}")
  if not models:
    raise ValueError("evaluate_models: no gaze models given")
  for name, m in models.items():
    check_compatible(name, m.cfg, judge)
  if not ratios or any(not 0 < r <= 1 for r in ratios):
    raise ValueError(f"ratios {ratios}: need at least one ratio in (0, 1]")
  ratios = sorted(float(r) for r in ratios)
  os.makedirs(out_dir, exist_ok=True)
  first = next(iter(models.values()))
  pv = np.stack([first.processor.normalize(f) for f in frames])
  v = judge.cfg.tokens_per_frame
  if epsilon is None:
    epsilon = float(np.round(ev.random_gaze_loss(judge, pv, EPSILON_RANDOM_RATIO), 4))
  score = curves.judge_score_fn(judge)
  n_thr = (len(set(thresholds) | {epsilon}) if thresholds is not None   # the progress total (an estimate)
           else (num_thresholds or len(ratios)) + 1)
  progress = Progress(len(models) * (len(ratios) + n_thr), every=1, items_per_step=len(frames), name="eval")
  done = 0
  report = {"epsilon": epsilon, "num_clips": int(len(frames)), "num_frames": int(frames.shape[1]),
            "judge_loss_terms": list(judge.loss_terms), "ratios": ratios, "models": {}}
  layout = ScaleLayout.from_gaze_config(first.cfg)
  kept_all = {}
  for name, model in models.items():
    gaze = curves.model_gaze_fn(model, cap_ratio=max(ratios))
    fixed = []
    for r in ratios:
      fixed.append(curves.curve_point(gaze, score, pv, v, ratio=r, batch=batch, processor=first.processor))
      done += 1
      progress(done, {"loss": fixed[-1]["loss"]}, force=True)
      logging.info("eval %s fixed ratio %.3f: loss %.4f gaze ratio %.4f", name, r, fixed[-1]["loss"],
                   fixed[-1]["gaze_ratio"])
    qs = thresholds if thresholds is not None else curves.thresholds_from(fixed, num_thresholds or len(ratios))
    qs = sorted(set(float(q) for q in qs) | {float(epsilon)})
    stop, at_eps = [], None
    for q in qs:
      p = curves.curve_point(gaze, score, pv, v, threshold=q, batch=batch, keep=(q == float(epsilon)),
                             processor=first.processor)
      if q == float(epsilon):
        at_eps = p.pop("_kept")
      stop.append(p)
      done += 1
      progress(done, {"loss": p["loss"]}, force=True)
      logging.info("eval %s stop rule q=%.4f: loss %.4f gaze ratio %.4f", name, q, p["loss"], p["gaze_ratio"])
    clips_eps = frames
    row = {
        "ratio_at_epsilon_fixed": curves.ratio_at(fixed, epsilon),
        "ratio_at_epsilon_stop": curves.ratio_at(stop, epsilon),
        "fixed_budget": [_public(p) for p in fixed],
        "stop_rule": [_public(p) for p in stop],
        "scale_vs_detail": analysis.scale_detail(clips_eps, at_eps["gazes"], layout),
        "gaze_ratio_by_frame": [float(x) for x in analysis.gaze_ratio_by_frame(at_eps["num_real"], v)],
        "repeat_gaze": analysis.repeat_gaze(clips_eps, at_eps["gazes"], layout, motion_threshold),
    }
    byf = row["gaze_ratio_by_frame"]
    row["gaze_ratio_frame0"], row["gaze_ratio_later"] = byf[0], (float(np.mean(byf[1:])) if len(byf) > 1 else None)
    row["pictures"] = _pictures(name, frames, at_eps, layout, out_dir, pictures, picture_frames)
    report["models"][name] = row
    kept_all[name] = at_eps
  report = _finite(report)
  with open(os.path.join(out_dir, "report.json"), "w") as f:
    json.dump(report, f, indent=1, allow_nan=False)
  if figures:
    report["figures"] = {"curves": figs.plot_curves(report, os.path.join(out_dir, "curves.png")),
                         "analysis": figs.plot_analysis(report, os.path.join(out_dir, "analysis.png"))}
  logging.info("evaluation written to %s", out_dir)
  return report


def _slug(name: str) -> str:
  return "".join(c if c.isalnum() else "_" for c in name).strip("_") or "model"


def _pictures(name, frames, kept, layout, out_dir, count, max_columns) -> list:
  out = []
  pdir = os.path.join(out_dir, "pictures")
  for i in range(min(count, len(frames))):
    os.makedirs(pdir, exist_ok=True)
    base = os.path.join(pdir, f"{_slug(name)}_clip{i}")
    pos, pad = kept["gazes"][i]
    rec = None if kept["reconstruction"] is None else kept["reconstruction"][i]
    res = canvas.save_comparison(base + ".png", base + ".gif", frames[i], pos, pad, layout, rec, max_columns)
    out.append({"png": base + ".png", "gif": base + ".gif",
                "canvas_psnr": [float(x) for x in res["canvas_psnr"]],
                "reconstruction_psnr": [float(x) for x in res.get("reconstruction_psnr", [])]})
  return out


def table_lines(report: dict) -> list[str]:
  """The ratio-at-epsilon table of a report, one line per model."""
  lines = [f"Gaze ratio needed to reach judge loss {report['epsilon']} on {report['num_clips']} held-out clips",
           f"{'model':<14} {'fixed':>8} {'stop rule':>10} {'PSNR@eps':>9} {'rho(scale,detail)':>18}"]
  for name, row in report["models"].items():
    f = lambda r: "never" if r is None or not math.isfinite(r) else f"{r:.3f}"  # noqa: E731
    eps_pt = next((p for p in row["stop_rule"] if p["threshold"] == report["epsilon"]), {})
    ps = eps_pt.get("psnr")
    rho = row["scale_vs_detail"]["rho"]
    lines.append(f"{name:<14} {f(row['ratio_at_epsilon_fixed']):>8} {f(row['ratio_at_epsilon_stop']):>10} "
                 f"{(f'{ps:.2f}' if ps is not None else '-'):>9} {(f'{rho:+.3f}' if rho is not None else '-'):>18}")
  return lines
