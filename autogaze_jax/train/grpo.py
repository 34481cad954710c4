"""GRPO post-training with the frozen VideoMAE's negative reconstruction loss as reward.

One jitted program per step, vectorised over batch x group (row = g * B + b, as official
`GRPO.preprocess_inputs`). Ratios and requirements follow the model's training sampling configs
(`config.model`, gaze/sampling.py; recipe: ratio fixed 0.75, per-frame `self`, requirement U(0.5, 1.0)):
  1. clip ratio r drawn once per step; with the `self` per-frame strategy a reference rollout per video
     (sampling at the scheduled temperature, budget max(1, int(r * 265)), stop when the predicted loss
     <= tau, tau drawn per video from the requirement config) -> n_t real tokens per frame; with
     uniform / dirichlet the per-frame budgets come from the drawn per-frame ratios;
  2. G sampled rollouts per video with those budgets, stopped only when the config has a requirement
     during training (recipe: no stop, so every rollout has n_t tokens);
  3. frozen VideoMAE on the G*B rows for R random frames (shared by the batch) -> rewards, task targets;
  4. advantages: reward - group mean (no std), discounted by gamma^(real slots to the reward's end);
  5. loss = -sum_j exp(logp - sg(logp)) * A  +  task-loss-head MSE at the last real slot of each
     reconstructed frame; log-probs recomputed teacher-forced (never differentiated through the sampler).
Rollouts use fixed per-frame capacities (pad slots are masked EOS), which leaves every real slot's
numbers equal to the official variable-length layout.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from autogaze_jax.gaze import sampling as S
from autogaze_jax.gaze.rollout import RolloutSpec, slot_ids, rollout_frames
from autogaze_jax.judge.load import Judge, load_judge
from autogaze_jax.judge.losses import perceptual_targets, reconstruction_task
from autogaze_jax.train.algorithm import GazeModelAlgorithm, Models, gaze_config, mean_over_batches, validate_judge
from autogaze_jax.train.ntp import NORM_EPS
from autogaze_jax.train.state import ConfigError, TrainState, apply_update


def discounted_advantages(reward, traj_len, if_padded_gazing, group: int, gamma: float):
  """Official `GRPO.get_discounted_advantages` summed over rewards.

  reward (G*B, R); traj_len (R,) slot index bounds L_r; if_padded_gazing (G*B, N) -> advantages (G*B, N).
  a_r = reward_r - mean over the group; slot j < L_r gets gamma^(d) * a_r with d = (real slots in
  [j, L_r)) - 1; padded slots get 0.
  """
  gb, n = if_padded_gazing.shape
  b = gb // group
  r = reward.reshape(group, b, -1)
  centered = (r - jnp.mean(r, axis=0, keepdims=True)).reshape(gb, -1)          # (GB, R)
  real = (~if_padded_gazing).astype(jnp.float32)
  csum = jnp.cumsum(real, axis=1)                                                 # real slots in [0, j]
  before = csum - real                                                            # real slots in [0, j)
  total = jnp.take_along_axis(csum, jnp.clip(traj_len[None, :] - 1, 0, n - 1).astype(jnp.int32), axis=1)  # (GB, R)
  j = jnp.arange(n)
  inside = j[None, None, :] < traj_len[None, :, None]                               # (1, R, N)
  d = total[:, :, None] - before[:, None, :] - 1.0                                  # (GB, R, N)
  adv = jnp.where(inside, jnp.power(gamma, d) * centered[:, :, None], 0.0) * real[:, None, :]
  return jnp.sum(adv, axis=1)


def grpo_losses(log_action_probs, task_loss_prediction, if_padded_gazing, advantages, task_losses, task_losses_mask,
                optimize_task_loss_prediction: bool = True) -> dict:
  """Per-row loss terms (official `GRPO.loss`): policy term and task-loss-head term."""
  rows = log_action_probs.shape[0]
  ratio = jnp.exp(log_action_probs - jax.lax.stop_gradient(log_action_probs))
  grpo = -jnp.sum(ratio * advantages, axis=1)
  if optimize_task_loss_prediction:
    m = task_losses_mask.astype(jnp.float32) * (~if_padded_gazing).astype(jnp.float32)
    tlp = jnp.sum(m * jnp.square(task_loss_prediction - task_losses), axis=1) / (jnp.sum(m) / rows + NORM_EPS)
  else:
    tlp = 0.0 * jnp.mean(task_loss_prediction, axis=1)
  return {"grpo_loss": grpo, "task_loss_prediction_loss": tlp, "loss": grpo + tlp}


def policy_loss_fn(graphdef, params, video_rows, gazing_pos, if_padded_gazing, counts, task: dict, group: int,
                   gamma: float, optimize_task_loss_prediction: bool = True):
  """Teacher-forced log-probs of given rollouts -> (mean loss, aux). `task` holds reward, traj_len_each_reward
  and the task-loss targets/mask of these rows (from `losses.reconstruction_task`). Rows are g * B + b, so
  the vision encoder runs on the B distinct videos once and its features are tiled over the group (the
  same numbers and gradient as per row, 1/G of the encoder's work)."""
  model = nnx.merge(graphdef, params)
  b = video_rows.shape[0] // group
  vision = jnp.tile(model.embed_video(video_rows[:b])[0], (group, 1, 1, 1))
  out = model.teacher_forced(video_rows, gazing_pos, if_padded_gazing, counts, vision=vision)
  adv = discounted_advantages(task["reward"], task["traj_len_each_reward"], if_padded_gazing, group, gamma)
  terms = grpo_losses(out["log_action_probs"], out["task_loss_prediction"], if_padded_gazing, adv,
                      task["reconstruction_loss_each_gazing_token"], task["reconstruction_loss_each_gazing_token_mask"],
                      optimize_task_loss_prediction)
  aux = {k: jnp.mean(v) for k, v in terms.items()}
  aux.update(advantage_abs_mean=jnp.sum(jnp.abs(adv)) / jnp.maximum(jnp.sum(~if_padded_gazing), 1))
  return aux["loss"], (aux, out, adv, terms)


def temperature_at(step, total_steps: int, t0: float, t1: float):
  """Official `get_scheduled_temperature`: T0 * (T1/T0)^(step / total_steps)."""
  return t0 * (t1 / t0) ** (jnp.asarray(step, jnp.float32) / max(total_steps, 1))


def rollout_capacity(sampling: S.SamplingConfig, tokens_per_frame: int) -> int:
  """Static per-frame slots of the step's rollouts: the budget of the largest ratio a training draw can
  give (dirichlet can put a whole clip's budget on one frame: every token)."""
  if sampling.frame.strategy(True) == "dirichlet":
    return tokens_per_frame
  r = np.float32(sampling.ratio.max_ratio(True))
  return max(1, int(r * np.float32(tokens_per_frame)))      # host-side: a static shape


def capacity_buckets(buckets, cap: int) -> tuple[int, ...]:
  """Static per-frame capacities a step may run its group rollouts, rewards and update at: the configured
  `grpo.capacity_buckets` below `cap`, then `cap`. The step takes the smallest one >= its largest budget,
  so a clip whose reference rollout stops early is not padded to the ratio cap (recipe: 198 per frame)."""
  return tuple(sorted({int(x) for x in buckets if 1 <= int(x) < cap} | {cap}))


_STEP_KEYS = ("ratio", "split", "tau", "req", "ref", "grp", "frames")


def step_keys(rng) -> dict:
  """The step's random streams, one key each, split from the step rng."""
  return dict(zip(_STEP_KEYS, jax.random.split(rng, len(_STEP_KEYS))))


def reward_frames(key, num_frames: int, count: int) -> jax.Array:
  """The frames reconstructed for the rewards from the step's "frames" key (`step_keys`): distinct,
  uniform, shared by the batch."""
  return jax.random.permutation(key, num_frames)[:count]


def make_train_step(gaze_graphdef, mae_graphdef, tx, *, cfg, sampling: S.SamplingConfig, schedule=None):
  """`train_step(state, batch, rng, frozen) -> (state, metrics)`; batch: video (B,T,3,224,224); frozen:
  {"videomae": judge params, "perceptual": {term: net}} (the reward's loss terms). `cfg`: the grpo block
  with total_steps and tokens_per_step resolved; `sampling`: the model's sampling configs."""
  g = cfg.group_size
  rs, fs, qs = sampling.ratio, sampling.frame, sampling.requirement

  def train_step(state: TrainState, batch, rng, frozen):
    model = nnx.merge(gaze_graphdef, state.params)
    video = batch["video"]
    b, t = video.shape[:2]
    eos, vpf = model.cfg.eos_token_id, model.cfg.num_vision_tokens_each_frame
    cap = rollout_capacity(sampling, vpf)
    k_ratio, k_split, k_tau, k_req, k_ref, k_grp, k_frames = step_keys(rng).values()
    temp = temperature_at(state.step, cfg.total_steps, cfg.temperature_start, cfg.temperature_end)
    vis, _ = model.embed_video(video)
    vis = jax.lax.stop_gradient(vis)
    ratio = S.draw_ratio(k_ratio, rs, True)                        # one clip ratio per step (official)
    if fs.strategy(True) == "self":
      # 1) reference rollout -> the per-frame budget of each video
      tau = jax.vmap(lambda k: S.draw_requirement(k, qs, True, force=True))(jax.random.split(k_tau, b))[:, None]
      spec_ref = RolloutSpec(capacity=cap, tokens_per_step=cfg.tokens_per_step, max_frames=t, sample=True,
                             top_k=cfg.top_k, use_threshold=True)
      _, ref = rollout_frames(model, vis, jnp.full((b, t), S.budgets(ratio, vpf), jnp.int32),
                              jnp.broadcast_to(tau, (b, t)), temp, k_ref, spec_ref)
      ref_slots = jnp.arange(ref["tokens"].shape[-1])[None, None] < ref["length"][..., None]
      n_t = jnp.maximum(1, jnp.sum(ref_slots & (ref["tokens"] != eos), axis=-1)).astype(jnp.int32)   # (B, T)
    else:
      tau = None                                                     # no reference pass
      n_t = jnp.broadcast_to(S.budgets(S.draw_frame_ratios(k_split, fs, ratio, t, True), vpf), (b, t))
    # 2-5) at the smallest capacity bucket that holds every budget (one compiled branch per bucket)
    buckets = capacity_buckets(cfg.get("capacity_buckets", ()), cap)
    group_step = functools.partial(_group_step, state, video, vis, n_t, temp=temp, ratio=ratio, tau=tau,
                                   frozen=frozen, keys=(k_req, k_grp, k_frames))
    if len(buckets) == 1:
      return group_step(cap)
    i = jnp.searchsorted(jnp.asarray(buckets, jnp.int32), jnp.max(n_t))   # first bucket >= the largest budget
    return jax.lax.switch(i, [functools.partial(group_step, c) for c in buckets])

  def _group_step(state, video, vis, n_t, cap, *, temp, ratio, tau, frozen, keys):
    """Steps 2-5 with per-frame capacity `cap` (static, >= every budget in n_t)."""
    k_req, k_grp, k_frames = keys
    model = nnx.merge(gaze_graphdef, state.params)
    b, t = video.shape[:2]
    vpf = model.cfg.num_vision_tokens_each_frame
    # 2) G rollouts per video with n_t budgets (stopped only if the config has a training requirement)
    q = S.draw_requirement(k_req, qs, True)
    spec_grp = RolloutSpec(capacity=cap, tokens_per_step=cfg.tokens_per_step, max_frames=t, sample=True,
                           top_k=cfg.top_k, use_threshold=q is not None)
    vis_g = jnp.tile(vis, (g, 1, 1, 1))
    thr = jnp.full((g * b, t), 0.0 if q is None else q, jnp.float32)
    _, grp = rollout_frames(model, vis_g, jnp.tile(n_t, (g, 1)).astype(jnp.int32), thr, temp, k_grp, spec_grp)
    # the rollout writes whole multi-token steps (ceil(cap / k) * k slots per frame); slots past the cap
    # are never real, so the judge and the teacher-forced pass see `cap` slots per frame
    gp, pad = (x.reshape(g * b, -1) for x in slot_ids(grp["tokens"][..., :cap], grp["length"], vpf))
    counts = (cap,) * t
    # 3) frozen VideoMAE rewards on R random frames, shared by the batch
    frames = reward_frames(k_frames, t, cfg.frames_to_reconstruct)
    video_rows = jnp.tile(video, (g, 1, 1, 1, 1))
    # perceptual target features of the B videos once, tiled over the group (rows are g * B + b)
    mae_cfg = nnx.merge(mae_graphdef, frozen["videomae"]).cfg
    tf = perceptual_targets(mae_cfg, jnp.take(video, frames, axis=1), frozen["perceptual"])
    tf = {k: jnp.tile(v, (g, 1, 1)) for k, v in tf.items()} if tf else None
    task = reconstruction_task(mae_graphdef, frozen["videomae"], video_rows, gp, pad, jnp.asarray(counts), frames,
                               frozen["perceptual"], static_counts=counts, target_features=tf,
                               prefix_buckets_n=cfg.get("judge_prefix_buckets", 1))
    terms = jax.lax.stop_gradient(task["loss_terms"])
    task = jax.lax.stop_gradient({k: task[k] for k in ("reward", "traj_len_each_reward",
                                                       "reconstruction_loss_each_gazing_token",
                                                       "reconstruction_loss_each_gazing_token_mask",
                                                       "reconstruction_loss", "avg_gazing_ratio_per_frame")})
    # 4-5) policy gradient on teacher-forced log-probs
    (_, (aux, _, _, _)), grads = jax.value_and_grad(policy_loss_fn, argnums=1, has_aux=True)(
        gaze_graphdef, state.params, video_rows, gp, pad, counts, task, g, cfg.discount_factor,
        cfg.optimize_task_loss_prediction)
    state, update_metrics = apply_update(state, tx, grads, schedule)
    reward = task["reward"]
    metrics = {**aux, **update_metrics, "temperature": temp,
               "reward_mean": jnp.mean(reward), "reward_std": jnp.std(reward),
               "reconstruction_loss": task["reconstruction_loss"],
               "gaze_ratio": task["avg_gazing_ratio_per_frame"], "ratio_drawn": ratio,
               "capacity": jnp.float32(cap),
               **({} if tau is None else {"tau_mean": jnp.mean(tau)}),
               # each loss term of the judge (unweighted), negated as the reward is
               **{f"reward_{k}": -jnp.mean(v) for k, v in terms.items()}}
    return state, metrics

  return train_step


class GRPO(GazeModelAlgorithm):
  """GRPO against the frozen judge (`config.videomae`: checkpoint, else a random init of its size)."""
  needs_labels = False
  batch_keys = ("frames",)
  finite_keys = ("loss", "grad_norm", "reward_mean")
  progress_keys = ("loss", "grpo_loss", "task_loss_prediction_loss", "reward_mean", "gaze_ratio", "temperature", "lr")

  def validate(self, config):
    g = config.grpo
    if g.group_size < 2:
      raise ConfigError(f"config.grpo.group_size = {g.group_size}: GRPO needs at least 2 rollouts per video")
    gcfg = gaze_config(config)              # architecture and sampling configs, each bad key named
    frames = gcfg.max_num_frames
    if not 1 <= g.frames_to_reconstruct <= frames:
      raise ConfigError(f"config.grpo.frames_to_reconstruct = {g.frames_to_reconstruct} must be in 1..{frames}")
    k = gcfg.decoder.num_multi_token_pred
    if not 0 <= g.tokens_per_step <= k:
      raise ConfigError(f"config.grpo.tokens_per_step = {g.tokens_per_step} must be in 0..{k} "
                        f"(0 = the model's num_multi_token_pred {k})")
    if g.temperature_start <= 0 or g.temperature_end <= 0:
      raise ConfigError("config.grpo.temperature_start/end must be positive")
    cb = g.get("capacity_buckets", ())
    if not isinstance(cb, (tuple, list)) or not all(isinstance(x, int) and x >= 1 for x in cb):
      raise ConfigError(f"config.grpo.capacity_buckets = {cb!r}: expected a tuple of positive ints (tokens per frame)")
    pb = g.get("judge_prefix_buckets", 1)
    if not isinstance(pb, int) or pb < 1:
      raise ConfigError(f"config.grpo.judge_prefix_buckets = {pb!r}: expected an int >= 1 (1 = no frame skipping)")
    validate_judge(config.videomae)

  def init(self, config) -> Models:
    gaze = super().init(config)
    v = config.videomae
    judge = load_judge(v.checkpoint, v.size, seed=config.train.seed, loss_type=v.get("loss_type", ""))
    return Models(gaze.graphdef, gaze.params, judge.graphdef,
                  {"videomae": judge.params, "perceptual": judge.perceptual})

  def picture_judge(self, models: Models):
    return Judge(None, models.frozen_graphdef, models.frozen["videomae"], models.frozen["perceptual"])

  def make_step(self, config, models: Models, tx, schedule):
    gcfg = gaze_config(config)
    g = ml_collections.ConfigDict(config.grpo.to_dict())
    g.total_steps = config.train.num_steps
    g.tokens_per_step = g.tokens_per_step or gcfg.decoder.num_multi_token_pred
    return make_train_step(models.graphdef, models.frozen_graphdef, tx, cfg=g, sampling=gcfg.sampling,
                           schedule=schedule)

  # ---- validation: greedy held-out rollouts stopped at train.val_threshold, scored by the judge ----
  val_best = ("val_reward", "max")

  def make_eval(self, config, models: Models):
    gcfg = gaze_config(config)
    v = gcfg.num_vision_tokens_each_frame
    cap = max(1, int(round(config.train.val_max_ratio * v)))
    tps = config.grpo.get("tokens_per_step", 0) or gcfg.decoder.num_multi_token_pred
    return make_eval_step(models.graphdef, models.frozen_graphdef, capacity=cap, tokens_per_step=tps,
                          threshold=config.train.val_threshold)

  def val_metrics(self, sums, num_batches):
    return mean_over_batches(sums, num_batches)


def make_eval_step(gaze_graphdef, mae_graphdef, *, capacity: int, tokens_per_step: int, threshold: float):
  """`eval_step(params, batch, rng, frozen) -> metrics` of one held-out batch: a greedy rollout per video
  (budget `capacity` tokens per frame, each frame stopped once the task-loss head predicts <= threshold)
  scored on every frame by the frozen judge: reward (= -loss), the loss terms and the gaze ratio."""

  def eval_step(params, batch, rng, frozen):
    model = nnx.merge(gaze_graphdef, params)
    video = batch["video"]
    b, t = video.shape[:2]
    vis, _ = model.embed_video(video)
    spec = RolloutSpec(capacity=capacity, tokens_per_step=tokens_per_step, max_frames=t, sample=False,
                       use_threshold=True)
    _, ro = rollout_frames(model, vis, jnp.full((b, t), capacity, jnp.int32), jnp.full((b, t), threshold, jnp.float32),
                           1.0, rng, spec)
    gp, pad = (x.reshape(b, -1) for x in slot_ids(ro["tokens"], ro["length"], model.cfg.num_vision_tokens_each_frame))
    counts = (ro["tokens"].shape[-1],) * t
    task = reconstruction_task(mae_graphdef, frozen["videomae"], video, gp, pad, jnp.asarray(counts), jnp.arange(t),
                               frozen["perceptual"], static_counts=counts)
    return {"reward": jnp.mean(task["reward"]), "reconstruction_loss": task["reconstruction_loss"],
            "gaze_ratio": task["avg_gazing_ratio_per_frame"].astype(jnp.float32),
            **{f"loss_{k}": jnp.mean(v) for k, v in task["loss_terms"].items()}}

  return eval_step
