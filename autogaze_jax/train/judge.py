"""Training the VideoMAE judge itself with random multi-scale gaze masks.

`make_train_step(cfg, graphdef, tx)` -> `(state, batch, rng, perceptual) -> (state, metrics)` with
`batch = {"video": (B,T,C,224,224) float32 task space}`; `JudgeTraining` is its `Algorithm`. Per video and frame a gaze ratio is drawn
(frame 0 ~ U(frame0_ratio), later frames ~ U(other_ratio)), then a uniform random subset of the V
multi-scale ids of that size (at least 1). Slot counts per frame are static (the ratio upper bound
times V), the unused slots are padding, so the step compiles once.
Position tables (`position_embeddings`, `decoder_pos_embed`) are fixed sin-cos tables in the official
model (requires_grad=False): the optimizer masks their updates.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from autogaze_jax.core.sharding import path_str
from autogaze_jax.interop.videomae import save_checkpoint
from autogaze_jax.judge.config import VideoMAEConfig
from autogaze_jax.judge import perceptual as perc
from autogaze_jax.judge.load import JudgeTermsError, judge_config, load_judge, require_weights, select_terms
from autogaze_jax.judge.losses import reconstruction_task
from autogaze_jax.judge.model import init_params
from autogaze_jax.train.algorithm import Models, validate_judge
from autogaze_jax.train.state import ConfigError, TrainState, apply_update

FROZEN_PARAMS = r"(position_embeddings|decoder_pos_embed)(/value)?$"


@dataclasses.dataclass(frozen=True)
class VideoMAETrainConfig:
  lr: float = 1.5e-4
  total_steps: int = 10000
  warmup_frac: float = 0.05
  weight_decay: float = 0.0
  grad_clip: float = 1.0
  frame0_ratio: tuple[float, float] = (0.05, 0.5)
  other_ratio: tuple[float, float] = (0.0, 0.2)
  recon_frames: int = 0          # frames reconstructed per step (random subset); 0 = all frames
  tokens_per_frame: int = VideoMAEConfig().tokens_per_frame    # the judge's multi-scale ids per frame

  def slots_per_frame(self, num_frames: int) -> tuple[int, ...]:
    v = self.tokens_per_frame
    k0 = max(1, math.ceil(self.frame0_ratio[1] * v))
    k = max(1, math.ceil(self.other_ratio[1] * v))
    return (k0,) + (k,) * (num_frames - 1)


def schedule(cfg: VideoMAETrainConfig):
  """Linear warmup (warmup_frac of the steps) then cosine decay to 0."""
  warm = max(1, int(cfg.warmup_frac * cfg.total_steps))
  return optax.warmup_cosine_decay_schedule(0.0, cfg.lr, warm, max(cfg.total_steps, warm + 1))


def make_optimizer(cfg: VideoMAETrainConfig) -> optax.GradientTransformation:
  """Adam(W) with `schedule`, global-norm clipping, frozen sin-cos tables."""
  sched = schedule(cfg)
  tx = optax.chain(optax.clip_by_global_norm(cfg.grad_clip),
                   optax.adamw(sched, weight_decay=cfg.weight_decay))

  def labels(params):
    return jax.tree_util.tree_map_with_path(
        lambda p, _: "frozen" if re.search(FROZEN_PARAMS, path_str(p)) else "train", params)
  return optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)


def random_gaze(cfg: VideoMAETrainConfig, rng, batch: int, num_frames: int):
  """Random multi-scale gaze selections in the gaze model's output format.

  Returns gazing_pos (B,N) int32 global ids, if_padded_gazing (B,N) bool, num_gazing_each_frame (T,)
  int32 (static counts, padding at the end of each frame), N = sum(slots_per_frame).
  """
  v = cfg.tokens_per_frame
  slots = cfg.slots_per_frame(num_frames)
  k_ratio, k_perm = jax.random.split(rng)
  lo = jnp.asarray([cfg.frame0_ratio[0]] + [cfg.other_ratio[0]] * (num_frames - 1))
  hi = jnp.asarray([cfg.frame0_ratio[1]] + [cfg.other_ratio[1]] * (num_frames - 1))
  ratio = jax.random.uniform(k_ratio, (batch, num_frames), minval=lo, maxval=hi)
  n_real = jnp.clip(jnp.round(ratio * v).astype(jnp.int32), 1, jnp.asarray(slots))
  perm = jnp.argsort(jax.random.uniform(k_perm, (batch, num_frames, v)), axis=-1).astype(jnp.int32)
  pos, pad = [], []
  for t, k in enumerate(slots):
    pos.append(perm[:, t, :k] + t * v)
    pad.append(jnp.arange(k)[None] >= n_real[:, t:t + 1])
  return jnp.concatenate(pos, 1), jnp.concatenate(pad, 1), jnp.asarray(slots, jnp.int32)


def make_train_step(cfg: VideoMAETrainConfig, graphdef, tx):
  """Pure step `(state, batch, rng, perceptual {term: net}) -> (state, metrics)`; jit it (donate the state)."""

  def train_step(state: TrainState, batch, rng, perceptual=None):
    rng = jax.random.fold_in(rng, state.step)
    k_gaze, k_frames = jax.random.split(rng)
    video = batch["video"]
    b, t = video.shape[:2]
    gazing_pos, if_padded, counts = random_gaze(cfg, k_gaze, b, t)
    if cfg.recon_frames:
      frames = jax.random.permutation(k_frames, t)[:cfg.recon_frames]
    else:
      frames = jnp.arange(t)

    def loss_fn(params):
      out = reconstruction_task(graphdef, params, video, gazing_pos, if_padded, counts, frames, perceptual,
                                static_counts=cfg.slots_per_frame(t))
      return jnp.mean(out["loss_mean"]), out

    (loss, out), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    state, metrics = apply_update(state, tx, grads, schedule(cfg))
    metrics.update({"loss": loss, "gaze_ratio": out["avg_gazing_ratio_per_frame"].astype(jnp.float32)})
    metrics.update({f"loss_{k}": jnp.mean(v) for k, v in out["loss_terms"].items()})
    return state, metrics

  return train_step


class JudgeTraining:
  """Train the judge (`config.videomae`: continue a checkpoint, else a random init of its size)."""
  needs_labels = False
  batch_keys = ("frames",)
  finite_keys = ("loss", "grad_norm")
  progress_keys = ("loss", "gaze_ratio", "lr")

  def validate(self, config):
    if config.videomae.checkpoint:
      validate_judge(config.videomae)
    else:
      self.scratch_config(config)

  def scratch_config(self, config) -> VideoMAEConfig:
    """Pretraining from scratch: the size's config with the chosen loss terms, each perceptual term
    scored by the nets at `config.videomae.<term>_weights` (random perceptual nets would train nothing)."""
    v = config.videomae
    try:
      cfg = judge_config(v.size)
    except ValueError as e:
      raise ConfigError(f"config.videomae.size: {e}") from None
    try:
      cfg = select_terms(cfg, v.get("loss_type", "")).replace(
          dinov2_reg_weights=v.get("dinov2_reg_weights", ""), siglip2_weights=v.get("siglip2_weights", ""))
      require_weights(cfg, set(), "judge pretraining")
    except JudgeTermsError as e:
      raise ConfigError(f"config.videomae.loss_type / <term>_weights: {e}") from None
    return cfg

  def train_config(self, config) -> VideoMAETrainConfig:
    v = config.videomae
    return VideoMAETrainConfig(lr=config.optimizer.lr, total_steps=config.train.num_steps,
                               warmup_frac=config.optimizer.warmup_frac, grad_clip=config.optimizer.grad_clip or 1.0,
                               frame0_ratio=tuple(v.frame0_ratio), other_ratio=tuple(v.other_ratio),
                               recon_frames=v.recon_frames)

  def init(self, config) -> Models:
    if not config.videomae.checkpoint:  # pretraining: a random init is the point here, not a fallback
      cfg = self.scratch_config(config)
      graphdef, params = init_params(cfg, config.train.seed)
      return Models(graphdef, params, frozen=perc.load_from_config(cfg))
    judge = load_judge(config.videomae.checkpoint, seed=config.train.seed, loss_type=config.videomae.get("loss_type", ""))
    return Models(judge.graphdef, judge.params, frozen=judge.perceptual)

  def optimizer(self, config):
    tc = self.train_config(config)
    return make_optimizer(tc), schedule(tc)

  def make_step(self, config, models: Models, tx, schedule_fn):
    return make_train_step(self.train_config(config), models.graphdef, tx)

  def picture_judge(self, models: Models):
    return None

  def picture(self, config, graphdef, params, frames, workdir, step, judge=None) -> dict:
    return {}

  def export(self, config, graphdef, params, workdir):
    out = os.path.join(workdir, "export")
    save_checkpoint(out, nnx.merge(graphdef, params).cfg, jax.tree.map(np.asarray, params.to_pure_dict()))
    logging.info("exported the VideoMAE (official task-model format) to %s", out)

  # ---- validation: the judge's loss on held-out clips under fixed random gaze masks ----
  val_best = ("val_loss", "min")

  def make_eval(self, config, models: Models):
    return make_eval_step(self.train_config(config), models.graphdef)

  def val_metrics(self, sums, num_batches):
    return {k: float(v) / num_batches for k, v in sums.items()}


def make_eval_step(cfg: VideoMAETrainConfig, graphdef):
  """`eval_step(params, batch, rng, perceptual) -> metrics`: random gaze masks drawn from `rng` (the loop
  fixes it per held-out batch, so every validation scores the same masks), every frame reconstructed."""

  def eval_step(params, batch, rng, perceptual=None):
    video = batch["video"]
    b, t = video.shape[:2]
    gazing_pos, if_padded, counts = random_gaze(cfg, rng, b, t)
    out = reconstruction_task(graphdef, params, video, gazing_pos, if_padded, counts, jnp.arange(t), perceptual,
                              static_counts=cfg.slots_per_frame(t))
    return {"loss": jnp.mean(out["loss_mean"]), "gaze_ratio": out["avg_gazing_ratio_per_frame"].astype(jnp.float32),
            **{f"loss_{k}": jnp.mean(v) for k, v in out["loss_terms"].items()}}

  return eval_step
