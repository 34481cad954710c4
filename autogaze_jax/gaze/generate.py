"""Host-side wrapper around the compiled rollout: arguments -> budgets/thresholds -> the official dict.

`generate(model, pixel_values, gazing_ratio=..., task_loss_requirement=...)` mirrors the official
`AutoGaze.forward({'video': x}, gazing_ratio=R, task_loss_requirement=Q)` output:
gazing_pos (B, N) global ids (padded slots hold `265 * (t + 1)`), if_padded_gazing, num_gazing_each_frame
(T,), gazing_mask (per scale (B, T, g^2) float32), sample_num_gazing_each_frame (B, T) (each sample's own slot counts; equal
to num_gazing_each_frame in the official coupled mode), log_action_probs / task_loss_prediction (teacher-forced,
None with generate_only), scales, frame_sampling_rate, num_vision_tokens_each_frame,
has_task_loss_requirement, task_loss_requirement (B, T) or None; plus num_real_gazing_each_frame (B, T).
With neither gazing_ratio nor task_loss_requirement the call follows the config's inference sampling
(`gaze/sampling.py`, docs/sampling.md): ratio, per-frame split and requirement drawn from `seed`, the
`self` split by a greedy pre-generation pass (per sample; the official code allows only B == 1).
The device program works on fixed-capacity per-frame buffers; only this final compaction to the
variable-length official layout happens in numpy.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from autogaze_jax.core.patches import ScaleLayout, gazing_masks
from autogaze_jax.gaze import sampling
from autogaze_jax.gaze.functional import check_pixel_values, teacher_forced
from autogaze_jax.gaze.rollout import RolloutSpec, budgets_from_ratio, slot_ids, rollout


def check_ratio(gazing_ratio, frames: int) -> np.ndarray:
  r = np.asarray(gazing_ratio, np.float64)
  if r.ndim > 1 or (r.ndim == 1 and r.shape[0] != frames):
    raise ValueError(f"gazing_ratio must be a number or a list of {frames} per-frame ratios, got shape {r.shape}")
  if not np.all(np.isfinite(r)) or np.any(r <= 0) or np.any(r > 1):
    raise ValueError(f"gazing_ratio must be in (0, 1], got {gazing_ratio!r}")
  return np.broadcast_to(r, (frames,))


def check_threshold(task_loss_requirement) -> float | None:
  if task_loss_requirement is None:
    return None
  try:
    q = float(task_loss_requirement)
  except (TypeError, ValueError):
    raise ValueError(f"task_loss_requirement must be a finite number, got {task_loss_requirement!r}") from None
  if not math.isfinite(q):
    raise ValueError(f"task_loss_requirement must be a finite number, got {task_loss_requirement!r}")
  return q  # negative values are legal (the fixtures use -2.5)


def make_spec(cfg, budgets: np.ndarray, frames: int, *, use_threshold: bool, coupled: bool,
              tokens_per_step: int | None, sample: bool, top_k: int, capacity: int | None) -> RolloutSpec:
  k = tokens_per_step or cfg.decoder.num_multi_token_pred
  if not 1 <= k <= cfg.decoder.num_multi_token_pred:
    raise ValueError(f"tokens_per_step must be in 1..{cfg.decoder.num_multi_token_pred}, got {k}")
  cap = int(capacity or budgets.max())
  if budgets.max() > cap:
    raise ValueError(f"a budget of {budgets.max()} exceeds the rollout capacity {cap}")
  # Round the capacity up to whole steps so that nearby ratios share one compiled program.
  cap = int(math.ceil(cap / k) * k)
  return RolloutSpec(capacity=cap, tokens_per_step=k, max_frames=max(frames, 1), coupled=coupled,
                     sample=sample, top_k=top_k, use_threshold=use_threshold)


def generate(model, pixel_values, gazing_ratio=None, task_loss_requirement=None, *, coupled: bool = False,
             tokens_per_step: int | None = None, sample: bool = False, temperature: float = 1.0, top_k: int = 50,
             seed: int = 0, generate_only: bool = False, capacity: int | None = None,
             return_trace: bool = False) -> dict:
  """Gaze a batch of processed clips (B, T, 3, H, W). See the module docstring for the output."""
  cfg = model.cfg
  pv = check_pixel_values(pixel_values, cfg)
  b, t = pv.shape[:2]
  if gazing_ratio is None and task_loss_requirement is None:
    budgets, q = config_budgets(model, pv, seed, coupled=coupled, tokens_per_step=tokens_per_step,
                                capacity=capacity)
  else:
    q = check_threshold(task_loss_requirement)
    ratio = check_ratio(default_ratio(cfg, gazing_ratio, q), t)
    budgets = budgets_from_ratio(ratio, t, cfg.num_vision_tokens_each_frame)
  spec = make_spec(cfg, budgets, t, use_threshold=q is not None, coupled=coupled, tokens_per_step=tokens_per_step,
                   sample=sample, top_k=top_k, capacity=capacity)
  thr = np.full((b, t), np.float32(q if q is not None else 0.0), np.float32)
  outs = rollout(model.graphdef, model.params, pv, jnp.asarray(np.broadcast_to(budgets, (b, t)), jnp.int32),
                 jnp.asarray(thr), jnp.float32(temperature), jax.random.key(seed), spec)
  outs = jax.tree.map(np.asarray, outs)
  res = compact(outs["tokens"], outs["length"], cfg.num_vision_tokens_each_frame)
  layout = ScaleLayout.from_gaze_config(cfg)
  masks = gazing_masks(jnp.asarray(res["gazing_pos"]), jnp.asarray(res["if_padded_gazing"]), t, layout)
  res.update(
      gazing_mask=[np.asarray(m) for m in masks], scales=list(cfg.scales), frame_sampling_rate=1,
      num_vision_tokens_each_frame=cfg.num_vision_tokens_each_frame, has_task_loss_requirement=q is not None,
      task_loss_requirement=thr if q is not None else None, log_action_probs=None, task_loss_prediction=None)
  if not generate_only:
    tf = teacher_forced(model.graphdef, model.params, pv, jnp.asarray(res["gazing_pos"]),
                        jnp.asarray(res["if_padded_gazing"]), tuple(int(n) for n in res["num_gazing_each_frame"]))
    res.update(log_action_probs=np.asarray(tf["log_action_probs"]),
               task_loss_prediction=np.asarray(tf["task_loss_prediction"]))
  if return_trace:
    res["trace"] = outs
  return res


def compact(tokens: np.ndarray, length: np.ndarray, vocab_per_frame: int) -> dict:
  """Fixed-capacity per-frame tokens (B, T, C) + lengths (B, T) -> the official variable-length layout:
  frame t keeps max_b length[b, t] slots (the batch-shared count) of `rollout.slot_ids`."""
  t = tokens.shape[1]
  gp, pad = slot_ids(np.asarray(tokens), np.asarray(length), vocab_per_frame)
  n_t = np.asarray(length).max(axis=0)
  frame = np.repeat(np.arange(t), n_t)
  padded = np.concatenate([pad[:, i, :n] for i, n in enumerate(n_t)], axis=1)
  return {"gazing_pos": np.concatenate([gp[:, i, :n] for i, n in enumerate(n_t)], axis=1).astype(np.int64),
          "if_padded_gazing": padded,
          "num_gazing_each_frame": n_t.astype(np.int64), "sample_num_gazing_each_frame": np.asarray(length).astype(np.int64),
          "num_real_gazing_each_frame": np.stack([(~padded[:, frame == i]).sum(1) for i in range(t)], 1)}


def default_ratio(cfg, gazing_ratio, threshold):
  """The official argument rules: a threshold alone means ratio 1 (budget 265); neither means the
  config's fixed gazing ratio (callers that follow the whole sampling config use `config_budgets`)."""
  if gazing_ratio is not None:
    return gazing_ratio
  if threshold is not None:
    return 1.0
  return cfg.sampling.ratio.fixed


def config_draws(cfg, frames: int, seed: int, training: bool = False):
  """(clip ratio, per-frame ratios (T,) or None for `self`, requirement or None) drawn from the config's
  sampling strategies with a key derived from `seed` (the rollout's own key stays `key(seed)`)."""
  s = cfg.sampling
  k_ratio, k_frames, k_req = jax.random.split(jax.random.fold_in(jax.random.key(seed), 0x5A3), 3)
  ratio = float(sampling.draw_ratio(k_ratio, s.ratio, training))
  per_frame = None
  if s.frame.strategy(training) != "self":
    per_frame = np.asarray(sampling.draw_frame_ratios(k_frames, s.frame, ratio, frames, training))
  q = sampling.draw_requirement(k_req, s.requirement, training)
  return ratio, per_frame, None if q is None else float(q)


def config_budgets(model, pv, seed: int, **kw) -> tuple[np.ndarray, float | None]:
  """Budgets (T,) or (B, T) and the requirement of a call without ratio and requirement (official
  `AutoGaze.forward` in eval mode). `self`: a greedy pass capped at the clip ratio and stopped at a forced
  requirement draw; each sample's real tokens per frame (at least 1) become its budgets."""
  cfg = model.cfg
  t = pv.shape[1]
  ratio, per_frame, q = config_draws(cfg, t, seed)
  if per_frame is not None:
    return np.asarray(sampling.budgets(per_frame, cfg.num_vision_tokens_each_frame), np.int64), q
  k_forced = jax.random.fold_in(jax.random.key(seed), 0x5E1F)
  q_forced = float(sampling.draw_requirement(k_forced, cfg.sampling.requirement, False, force=True))
  pre = generate(model, pv, max(ratio, 1e-6), q_forced, seed=seed, generate_only=True, **kw)
  return np.maximum(1, np.asarray(pre["num_real_gazing_each_frame"])).astype(np.int64), q
