"""Per-frame reconstruction losses, GRPO rewards and task-loss targets.

`reconstruction_task` is the one function behind all three consumers: GRPO (`reward`,
`traj_len_each_reward`), the gaze model's task-loss head (`reconstruction_loss_each_gazing_token` and
its mask) and the greedy label search (`loss_each_reconstruction_frame`). Shapes are static: the
frames to reconstruct are an index array of static length R; per-frame slot counts stay traced.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from autogaze_jax.judge.model import forward, slot_frames
from autogaze_jax.judge.perceptual import PerceptualNet, feature_loss, features
from autogaze_jax.judge.config import JudgeTermsError, VideoMAEConfig


def frame_losses(cfg: VideoMAEConfig, pred: jax.Array, target: jax.Array,
                 perceptual: dict[str, PerceptualNet] | None = None,
                 target_features: dict[str, jax.Array] | None = None) -> tuple[jax.Array, dict]:
  """pred/target (B,R,C,H,W) task space -> (loss (B,R) float32, {term: (B,R)}).

  loss = sum_i w_i * term_i over `cfg.loss_type` (official `forward_loss`, list order): `l1` = mean
  |pred - target| over C,H,W; `dinov2_reg` / `siglip2` = mean squared difference of the extractors'
  last-4-layer features. A perceptual term whose net is not in `perceptual` is a `JudgeTermsError`:
  a total with a term silently missing would change what a loss threshold means. `target_features`:
  `perceptual_targets(cfg, target, perceptual)` computed once by a caller that scores many predictions
  against the same target.
  """
  perceptual = perceptual or {}
  b, r = pred.shape[:2]
  pred, target = pred.astype(jnp.float32), target.astype(jnp.float32)
  total = jnp.zeros((b, r), jnp.float32)
  terms = {}
  for term, weight in zip(cfg.loss_type, cfg.loss_weights):
    if term == "l1":
      val = jnp.mean(jnp.abs(pred - target), axis=(-1, -2, -3))
    elif term in perceptual:
      flat = lambda x: x.reshape(b * r, *x.shape[2:])  # noqa: E731
      tf = None if target_features is None else target_features[term]
      val = feature_loss(perceptual[term], flat(pred), flat(target), cfg.jnp_dtype, tf).reshape(b, r)
    else:
      raise JudgeTermsError(f"loss term {term!r} (weight {weight}) of loss_type {'+'.join(cfg.loss_type)} has no "
                            f"perceptual net: load the judge with judge.load.load_judge, or choose its terms "
                            f"(select_terms / loss_type='l1')")
    terms[term] = val
    total = total + weight * val
  return total, terms


def perceptual_targets(cfg: VideoMAEConfig, target: jax.Array,
                       perceptual: dict[str, PerceptualNet] | None) -> dict[str, jax.Array]:
  """{term: features (B*R, tokens, F)} of target (B,R,C,H,W) for the configured perceptual terms."""
  flat = target.reshape(-1, *target.shape[2:])
  return {term: jax.lax.stop_gradient(features(perceptual[term], flat, cfg.jnp_dtype))
          for term in cfg.loss_type if term in (perceptual or {})}


def task_targets(loss: jax.Array, if_padded_gazing: jax.Array, num_gazing_each_frame: jax.Array,
                 frame_idx_to_reconstruct: jax.Array) -> dict:
  """Per-frame losses (B,R) -> rewards and the task-loss-head targets (official `forward_output`/`reward`).

  Returns float32 `reward` (B,R) = -loss (no gradient); int32 `traj_len_each_reward` (R,) = slots
  (padding included) up to the end of frame R[r]; int32 `num_non_padded_gazing_at_each_reconstruction_frame`
  (B,R); float32 `reconstruction_loss_each_gazing_token` and `..._mask` (B,N): inside a frame f in R,
  mask[j] = padded[j+1] (True for the frame's last slot), target = loss(f) * mask; 0 outside R frames.
  """
  b, n = if_padded_gazing.shape
  r_idx = frame_idx_to_reconstruct.astype(jnp.int32)
  counts = num_gazing_each_frame.astype(jnp.int32)
  seg = slot_frames(counts, n)                                           # (N,)
  match = seg[:, None] == r_idx[None, :]                                 # (N,R)
  in_r, which = jnp.any(match, axis=1), jnp.argmax(match, axis=1)
  same_next = jnp.concatenate([seg[1:] == seg[:-1], jnp.zeros((1,), bool)])
  pad_next = jnp.concatenate([if_padded_gazing[:, 1:], jnp.ones((b, 1), bool)], axis=1)
  mask = (jnp.where(same_next[None], pad_next, True) & in_r[None]).astype(jnp.float32)
  target = jnp.take_along_axis(loss, jnp.broadcast_to(which[None], (b, n)), axis=1) * mask
  real = (~if_padded_gazing).astype(jnp.int32)
  return {
      "reward": -jax.lax.stop_gradient(loss),
      "traj_len_each_reward": jnp.cumsum(counts)[r_idx],
      "num_non_padded_gazing_at_each_reconstruction_frame": jnp.einsum("bn,nr->br", real, match.astype(jnp.int32)),
      "reconstruction_loss_each_gazing_token": jax.lax.stop_gradient(target),
      "reconstruction_loss_each_gazing_token_mask": mask,
  }


def reconstruction_task(graphdef, params, video, gazing_pos, if_padded_gazing, num_gazing_each_frame,
                        frame_idx_to_reconstruct, perceptual: dict[str, PerceptualNet] | None = None,
                        static_counts: tuple[int, ...] | None = None,
                        target_features: dict[str, jax.Array] | None = None, prefix_buckets_n: int = 1) -> dict:
  """The task model call of GRPO / NTP / greedy search (official `forward_output` + `reward` + `metric`).

  video (B,T,C,224,224) task space; gazing_pos (B,N); if_padded_gazing (B,N) bool;
  num_gazing_each_frame (T,); frame_idx_to_reconstruct (R,) int; perceptual {term: net} (optional);
  static_counts: optional Python tuple of the slot counts (faster encoder, see `models.videomae.forward`).
  target_features: `perceptual_targets` of the reconstructed frames when the caller has them (GRPO: one
  video's targets serve its whole group). prefix_buckets_n: with static_counts, skip the frames after the
  latest reconstructed one (`model.forward`; the result then has no `encoder_last_hidden_state`).
  Returns everything of `task_targets` plus `loss_each_reconstruction_frame` (B,R),
  `loss_mean` (B,) (differentiable: the VideoMAE training loss), `loss_terms` {term: (B,R)},
  `reconstruction` (B,R,C,224,224), `encoder_last_hidden_state` (B,1+N,D),
  `avg_gazing_ratio_per_frame` () and `reconstruction_loss` () (batch mean of `loss_mean`).
  """
  cfg: VideoMAEConfig = nnx.merge(graphdef, params).cfg   # static; merging is trace-time only
  out = forward(graphdef, params, video, gazing_pos, if_padded_gazing, num_gazing_each_frame,
                frame_idx_to_reconstruct, static_counts, prefix_buckets_n)
  target = jnp.take(video, frame_idx_to_reconstruct, axis=1)
  loss, terms = frame_losses(cfg, out["reconstruction"], target, perceptual, target_features)
  res = task_targets(loss, if_padded_gazing, num_gazing_each_frame, frame_idx_to_reconstruct)
  b, t = video.shape[:2]
  res.update(loss_each_reconstruction_frame=loss, loss_mean=jnp.mean(loss, axis=1), loss_terms=terms,
             reconstruction=out["reconstruction"], reconstruction_loss=jnp.mean(loss),
             avg_gazing_ratio_per_frame=jnp.sum(~if_padded_gazing) / (b * t * cfg.tokens_per_frame))
  if "encoder_last_hidden_state" in out:
    res["encoder_last_hidden_state"] = out["encoder_last_hidden_state"]
  return res

