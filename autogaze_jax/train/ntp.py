"""Next-token-prediction pre-training on greedy gaze labels.

Losses (official `NTP`, checked on gaze_tiny/teacher_forced.npz):
  m = ~if_padded_gazing;  Lbar = sum(m) / B + 1e-6   (batch-average real-token count, not per sample)
  ntp[b] = -sum_j m[b,j] * log_action_probs[b,j] / Lbar          (log(p + 1e-8), EOS never trained)
  tlp[b] = sum_j m'[b,j] (task_loss_prediction - task_losses)^2 / (sum(m') / B + 1e-6),  m' = mask * m
  loss   = mean_b(ntp[b] + tlp[b])
The normalisers use the global batch (the official code uses each device's micro-batch); with equal
shards this is the same up to the per-device count variation, and it makes the sharded step equal
the single-device step.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

import numpy as np

from autogaze_jax.gaze.model import sequence_layout
from autogaze_jax.train.algorithm import GazeModelAlgorithm, Models, gaze_config
from autogaze_jax.train.state import ConfigError, TrainState, apply_update

NORM_EPS = 1e-6


def ntp_losses(log_action_probs, task_loss_prediction, if_padded_gazing, task_losses, task_losses_mask=None,
               optimize_task_loss_prediction: bool = True) -> dict:
  """Per-sample NTP loss terms (B,) as the official `NTP.loss` / `NTP.__call__`."""
  b = log_action_probs.shape[0]
  m = (~if_padded_gazing).astype(jnp.float32)
  ntp = -jnp.sum(m * log_action_probs, axis=1) / (jnp.sum(m) / b + NORM_EPS)
  if optimize_task_loss_prediction:
    mm = m if task_losses_mask is None else m * task_losses_mask.astype(jnp.float32)
    tlp = jnp.sum(mm * jnp.square(task_loss_prediction - task_losses), axis=1) / (jnp.sum(mm) / b + NORM_EPS)
  else:
    tlp = 0.0 * jnp.mean(task_loss_prediction, axis=1)
  return {"ntp_loss": ntp, "task_loss_prediction_loss": tlp, "loss": ntp + tlp}


def make_train_step(graphdef, tx, num_gazing_each_frame: tuple[int, ...], schedule=None,
                    optimize_task_loss_prediction: bool = True):
  """`train_step(state, batch, rng, frozen) -> (state, metrics)` (rng and frozen unused: NTP is
  deterministic given the batch and reads no other model).

  batch: video (B, T, 3, 224, 224) float processor output, gazing_pos (B, N), if_padded_gazing (B, N),
  task_losses (B, N) (fixed-capacity collation, N = sum(num_gazing_each_frame), static).
  """
  counts = tuple(int(n) for n in num_gazing_each_frame)

  def loss_fn(params, batch):
    out = nnx.merge(graphdef, params).teacher_forced(batch["video"], batch["gazing_pos"], batch["if_padded_gazing"],
                                                      counts)
    terms = ntp_losses(out["log_action_probs"], out["task_loss_prediction"], batch["if_padded_gazing"],
                       batch["task_losses"], optimize_task_loss_prediction=optimize_task_loss_prediction)
    real = ~batch["if_padded_gazing"]
    aux = {k: jnp.mean(v) for k, v in terms.items()}
    # top-1 accuracy of the label token under its head (multi-token read-out), real slots only
    aux["token_prob"] = jnp.sum(jnp.exp(out["log_action_probs"]) * real) / jnp.maximum(jnp.sum(real), 1)
    return aux["loss"], aux

  def train_step(state: TrainState, batch, rng, frozen=None):
    del rng, frozen
    (_, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, batch)
    state, update_metrics = apply_update(state, tx, grads, schedule)
    return state, {**aux, **update_metrics, "real_tokens": jnp.sum(~batch["if_padded_gazing"]).astype(jnp.float32)}

  return train_step


class NTP(GazeModelAlgorithm):
  """Next-token prediction on greedy labels (fixed-capacity collation: max_tokens_per_frame + EOS slots)."""
  needs_labels = True
  batch_keys = ("frames", "gazing_pos", "if_padded_gazing", "task_losses")
  finite_keys = ("loss", "grad_norm")
  progress_keys = ("loss", "ntp_loss", "task_loss_prediction_loss", "token_prob", "lr")

  def validate(self, config):
    self.check_tokens_per_frame("data.max_tokens_per_frame", config.data.max_tokens_per_frame, config)
    if config.data.source != "synthetic" and not config.data.labels:
      raise ConfigError("NTP needs gaze labels: set config.data.labels (gazing_labels.json; see launch.label)")

  def make_step(self, config, models: Models, tx, schedule):
    counts = (config.data.max_tokens_per_frame + 1,) * gaze_config(config).max_num_frames
    return make_train_step(models.graphdef, tx, counts, schedule, config.ntp.optimize_task_loss_prediction)

  # ---- validation: held-out teacher-forced losses and the per-head top-1 accuracy ----
  val_best = ("val_loss", "min")

  def make_eval(self, config, models: Models):
    counts = (config.data.max_tokens_per_frame + 1,) * gaze_config(config).max_num_frames
    return make_eval_step(models.graphdef, counts, config.ntp.optimize_task_loss_prediction)

  def val_metrics(self, sums, num_batches):
    out = {k: float(v) / num_batches for k, v in sums.items() if k not in ("head_hits", "head_count")}
    hits, count = np.asarray(sums["head_hits"]), np.asarray(sums["head_count"])
    out["accuracy"] = float(hits.sum() / max(count.sum(), 1))
    out.update({f"head{k}_accuracy": float(hits[k] / count[k]) for k in range(len(count)) if count[k]})
    return out


def make_eval_step(graphdef, num_gazing_each_frame: tuple[int, ...], optimize_task_loss_prediction: bool = True):
  """`eval_step(params, batch, rng, frozen) -> metrics` of one labelled held-out batch: the training
  losses (no update) and, per multi-token head k, how many real label tokens it scores (head_count) and
  ranks first among all ids (head_hits: the top-1 accuracy of the head that predicts the k-th token of
  a decoder step)."""
  counts = tuple(int(n) for n in num_gazing_each_frame)

  def eval_step(params, batch, rng=None, frozen=None):
    del rng, frozen
    model = nnx.merge(graphdef, params)
    cfg = model.cfg
    out = model.teacher_forced(batch["video"], batch["gazing_pos"], batch["if_padded_gazing"], counts, debug=True)
    terms = ntp_losses(out["log_action_probs"], out["task_loss_prediction"], batch["if_padded_gazing"],
                       batch["task_losses"], optimize_task_loss_prediction=optimize_task_loss_prediction)
    k = cfg.decoder.num_multi_token_pred
    lay = sequence_layout(cfg.num_frame_tokens, k, counts)
    b = batch["video"].shape[0]
    logits = out["logits_at_sources"].reshape(b, len(lay.sources), k, -1)[:, lay.src_in_sources, lay.src_head]
    label = batch["gazing_pos"] - cfg.num_vision_tokens_each_frame * jnp.asarray(lay.slot_frame)[None]
    real = ~batch["if_padded_gazing"]
    hit = (jnp.argmax(logits, axis=-1) == label) & real                        # (B, N)
    head = jax.nn.one_hot(jnp.asarray(lay.src_head), k, dtype=jnp.float32)      # (N, K)
    res = {name: jnp.mean(v) for name, v in terms.items()}
    res["token_prob"] = jnp.sum(jnp.exp(out["log_action_probs"]) * real) / jnp.maximum(jnp.sum(real), 1)
    res["head_hits"] = jnp.einsum("bn,nk->k", hit.astype(jnp.float32), head)
    res["head_count"] = jnp.einsum("bn,nk->k", real.astype(jnp.float32), head)
    return res

  return eval_step
