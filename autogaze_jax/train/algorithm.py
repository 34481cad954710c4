"""The small protocol every trainable algorithm implements, and what the two gaze-model algorithms share.

`train/loop.py` knows nothing of NTP, GRPO or judge training: it validates, asks the algorithm for its
models and optimizer, builds the train state, and calls the algorithm's step. The input pipeline is
built outside the library (`launch/train.py`) from `batch_keys` / `needs_labels` and handed to the loop.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from typing import Callable, Protocol

import numpy as np
from flax import nnx

from autogaze_jax.api import AutoGaze
from autogaze_jax.core.patches import ScaleLayout
from autogaze_jax.evaluation import canvas, curves, quality, viz
from autogaze_jax.gaze.config import GazeConfig
from autogaze_jax.judge.load import JudgeTermsError, check_loss_terms, judge_config
from autogaze_jax.train import model_config
from autogaze_jax.train.state import ConfigError, make_optimizer

def validate_judge(v) -> tuple[str, ...]:
  """`config.videomae` (checkpoint, size, loss_type): the terms the judge will score with, or a ConfigError
  naming the key (an unknown size, a term without weights), before anything is loaded or compiled."""
  try:
    judge_config(v.size)
  except ValueError as e:
    raise ConfigError(f"config.videomae.size: {e}") from None
  try:
    return check_loss_terms(v.checkpoint, v.size, v.get("loss_type", ""))
  except JudgeTermsError as e:
    raise ConfigError(f"config.videomae.loss_type: {e}") from None


# step(state, batch, rng, frozen) -> (state, metrics); batch["video"] is float task space (B, T, C, H, W)
Step = Callable


@dataclasses.dataclass(frozen=True)
class Models:
  """What a run trains and what its step only reads.

  graphdef/params: the trained model (static graph, initial nnx.State). frozen_graphdef/frozen: the
  static graph and the pytree of a model the step calls but never updates (GRPO's judge and its
  perceptual nets; judge training's perceptual nets), or None.
  """
  graphdef: object
  params: object
  frozen_graphdef: object = None
  frozen: object = None


class Algorithm(Protocol):
  needs_labels: bool                 # the input pipeline joins gaze labels (launch/train.py)
  batch_keys: tuple[str, ...]        # host batch entries the step reads ("frames" becomes "video")
  finite_keys: tuple[str, ...]       # metrics that stop the run when NaN/Inf
  progress_keys: tuple[str, ...]     # metrics on the console progress line

  def validate(self, config) -> None:
    """Raise ConfigError on values this algorithm cannot work with (before anything compiles)."""

  def init(self, config) -> Models: ...

  def optimizer(self, config) -> tuple:
    """(optax transformation, lr schedule)."""

  def make_step(self, config, models: Models, tx, schedule) -> Step: ...

  def picture(self, config, graphdef, params, frames: np.ndarray, workdir: str, step: int, judge=None) -> dict:
    """{name: (H, W, 3) uint8} for TensorBoard (may be empty), drawn on the validation clip `frames`;
    `judge` (graphdef, params, perceptual): the run's frozen judge, when it has one."""

  def picture_judge(self, models: Models):
    """The judge the pictures reconstruct with (`.graphdef`, `.params`, `.perceptual`), or None."""

  def export(self, config, graphdef, params, workdir: str) -> None:
    """Write the final model in its official format to WORKDIR/export."""

  # validation (train.val_every): the loop jits `make_eval`'s step, sums its outputs over the held-out
  # batches and logs `val_metrics(sums, num_batches)` as val_<name>; `val_best` = (val_<name>, min|max)
  val_best: tuple[str, str]

  def make_eval(self, config, models: Models) -> Callable | None:
    """`eval_step(params, batch, rng, frozen) -> {name: array}` on one held-out batch, or None."""

  def val_metrics(self, sums: dict, num_batches: int) -> dict:
    """Batch sums of the eval step's outputs -> {name: float}."""


def mean_over_batches(sums: dict, num_batches: int) -> dict:
  """The default `val_metrics`: every output is a per-batch mean, averaged over the (equal) batches."""
  return {k: float(np.asarray(v)) / num_batches for k, v in sums.items() if np.ndim(v) == 0}


def gaze_config(config) -> GazeConfig:
  """The run's GazeConfig: size, architecture overrides and sampling of `config.model` (ConfigError
  naming the key); see train/model_config.py."""
  return model_config.gaze_config(config)


def _gaze(graphdef, params) -> AutoGaze:
  model = nnx.merge(graphdef, params)
  return AutoGaze(model.cfg, nnx.split(model, nnx.Param)[1])


class GazeModelAlgorithm:
  """NTP and GRPO train the gaze model: same init, optimizer, pictures and export."""

  def check_tokens_per_frame(self, key: str, value: int, config) -> None:
    v = gaze_config(config).num_vision_tokens_each_frame
    if not 1 <= value <= v:
      raise ConfigError(f"config.{key} = {value} must be in 1..{v}")

  def init(self, config) -> Models:
    """The gaze model from `config.model.init` (official-format checkpoint) or a fresh init."""
    if config.model.init:
      m = AutoGaze.from_pretrained(config.model.init, dtype=config.model.dtype)
      # the run's sampling configs (and a check of any architecture override) on the checkpoint's weights
      m = AutoGaze(gaze_config(config), m.params, processor=m.processor, preprocessor_config=m.preprocessor_config)
      logging.info("gaze model initialised from %s", config.model.init)
    else:
      m = AutoGaze(gaze_config(config), seed=config.train.seed)
    return Models(m.graphdef, m.params)

  def optimizer(self, config):
    return make_optimizer(config.optimizer, config.train.num_steps)

  def picture_judge(self, models: Models):
    return None

  def picture(self, config, graphdef, params, frames, workdir, step, judge=None) -> dict:
    """The validation clip gazed greedily at `config.train.picture_ratio`, drawn as `launch.evaluate`'s
    side by side (original / gazed patches / the judge's reconstruction when the run has a judge /
    interframe canvas, with per-frame PSNR) above one row per scale; written to
    WORKDIR/pictures/step_NNNNNN.png and returned as {"val_gaze": image}."""
    gaze = _gaze(graphdef, params)
    pv = gaze.processor.normalize(frames)[None]
    out = gaze.generate(pv, config.train.picture_ratio, None, generate_only=True)
    rec = None
    if judge is not None:
      _, r = curves.judge_score_fn(judge)(pv, out)
      rec = quality.unit_to_uint8(quality.task_to_unit(r, gaze.processor))[0]
    pos, pad, layout = out["gazing_pos"][0], out["if_padded_gazing"][0], ScaleLayout.from_gaze_config(gaze.cfg)
    rows, labels, _ = canvas.comparison_rows(frames, pos, pad, layout, rec)
    rows += viz.per_scale_rows(frames, pos, pad, layout)
    labels += [f"scale {s}" for s in layout.scales]
    os.makedirs(os.path.join(workdir, "pictures"), exist_ok=True)
    path = os.path.join(workdir, "pictures", f"step_{step:06d}.png")
    img = viz.save_png_grid(path, rows, labels)
    logging.info("validation gaze picture: %s", path)
    return {"val_gaze": img}

  def export(self, config, graphdef, params, workdir):
    out = os.path.join(workdir, "export")
    _gaze(graphdef, params).save_pretrained(out)
    logging.info("exported the gaze model (official format) to %s", out)
