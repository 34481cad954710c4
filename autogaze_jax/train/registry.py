"""The closed set of trainable algorithms and what the trainer needs from each.

An algorithm provides: validate(config), make_data(config, workdir) -> (iterator, info),
init(config, workdir) -> (graphdef, params, frozen), make_step(config, graphdef, tx, schedule, info) ->
step(state, batch, rng, frozen) -> (state, metrics), device_batch(host_batch, mesh), export(...),
plus finite_keys / progress_keys and an optional picture(...).
"""
from __future__ import annotations

import logging
import os

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from autogaze_jax.api import AutoGaze
from autogaze_jax.core.patches import ScaleLayout
from autogaze_jax.evaluation import viz
from autogaze_jax.gaze.config import GazeConfig, tiny_config
from autogaze_jax.gaze.preprocess import normalize_on_device
from autogaze_jax.interop.videomae import load_checkpoint, save_checkpoint
from autogaze_jax.judge.config import VideoMAEConfig, tiny_videomae_config
from autogaze_jax.judge.model import init_params
from autogaze_jax.train import grpo, judge as judge_train, ntp
from autogaze_jax.train.state import ConfigError, TrainState


def gaze_config(config) -> GazeConfig:
  cfg = tiny_config() if config.model.size == "tiny" else GazeConfig()
  return cfg.replace(dtype=config.model.dtype)


def init_gaze(config, seed: int):
  """(graphdef, params) from `config.model.init` (official-format checkpoint) or a fresh init."""
  if config.model.init:
    m = AutoGaze.from_pretrained(config.model.init, dtype=config.model.dtype)
    logging.info("gaze model initialised from %s", config.model.init)
  else:
    m = AutoGaze(gaze_config(config), seed=seed)
  return m.graphdef, m.params


def export_gaze(graphdef, params, workdir: str, name: str = "export"):
  from flax import nnx
  model = nnx.merge(graphdef, params)
  AutoGaze(model.cfg, nnx.split(model, nnx.Param)[1]).save_pretrained(os.path.join(workdir, name))
  logging.info("exported the gaze model (official format) to %s", os.path.join(workdir, name))


def gaze_picture(config, graphdef, params, workdir: str, step: int) -> dict:
  """The fixed validation clip (first clip of the val split) gazed greedily at
  `config.train.picture_ratio`: per-scale rows written to WORKDIR/pictures/step_NNNNNN.png and
  returned for TensorBoard as {"val_gaze": (H, W, 3) uint8}."""
  from flax import nnx
  frames = np.asarray(data_source(config, "val")[0]["frames"])
  model = nnx.merge(graphdef, params)
  gaze = AutoGaze(model.cfg, nnx.split(model, nnx.Param)[1])
  out = gaze.generate(gaze.processor.normalize(frames)[None], config.train.picture_ratio, None, generate_only=True)
  os.makedirs(os.path.join(workdir, "pictures"), exist_ok=True)
  path = os.path.join(workdir, "pictures", f"step_{step:06d}.png")
  img = viz.training_picture(path, frames, out["gazing_pos"][0], out["if_padded_gazing"][0],
                             ScaleLayout.from_gaze_config(model.cfg))
  logging.info("validation gaze picture: %s", path)
  return {"val_gaze": img}


def put_batch(batch: dict, mesh, keys) -> dict:
  """Host-local numpy batch -> global arrays sharded over the `data` axis."""
  out = {}
  for k in keys:
    v = np.asarray(batch[k])
    out[k] = jax.make_array_from_process_local_data(NamedSharding(mesh, P("data")), v)
  return out


def data_source(config, split: str, labels=None, require_labels=None):
  from data_pipelines.pipeline import make_source
  d = config.data
  return make_source(d.source, d.path or None, split, labels=labels, require_labels=require_labels,
                     synthetic_num_clips=d.synthetic_num_clips, seed=d.seed, cache_dir=d.cache_dir or None)


class NTP:
  finite_keys = ("loss", "grad_norm")
  progress_keys = ("loss", "ntp_loss", "task_loss_prediction_loss", "token_prob", "lr")
  picture = staticmethod(gaze_picture)

  @staticmethod
  def validate(config):
    if not 1 <= config.data.max_tokens_per_frame <= 265:
      raise ConfigError(f"config.data.max_tokens_per_frame = {config.data.max_tokens_per_frame} must be in 1..265")
    if config.data.source != "synthetic" and not config.data.labels:
      raise ConfigError("NTP needs gaze labels: set config.data.labels (gazing_labels.json; see launch.label)")

  @staticmethod
  def labels_path(config, workdir: str) -> str:
    if config.data.labels:
      return config.data.labels
    # Plumbing-only fallback on the embedded dataset: valid toy labels (not learnable structure).
    from data_pipelines import labels as labels_lib
    from data_pipelines.synthetic import random_labels
    src = data_source(config, "train")
    path = os.path.join(workdir, "toy_labels.json")
    if not os.path.exists(path) and jax.process_index() == 0:
      from data_pipelines import ops  # keys from the file names: no need to decode the videos
      keys = [ops.relative_video_path(p) for p in src.paths]
      labels_lib.write_labels(random_labels(keys, max_tokens_per_frame=config.data.max_tokens_per_frame), path)
      logging.warning("no config.data.labels: training on toy labels %s (plumbing only)", path)
    if jax.process_count() > 1:  # the other hosts read the file process 0 just wrote
      from jax.experimental import multihost_utils
      multihost_utils.sync_global_devices("toy_labels")
    return path

  @classmethod
  def make_data(cls, config, workdir):
    from data_pipelines.pipeline import make_iterator
    src = data_source(config, "train", labels=cls.labels_path(config, workdir), require_labels=True)
    it = make_iterator(src, global_batch_size=config.data.global_batch_size, seed=config.data.seed,
                       shuffle=config.data.shuffle, labels="fixed",
                       max_tokens_per_frame=config.data.max_tokens_per_frame, num_workers=config.data.num_workers)
    counts = (config.data.max_tokens_per_frame + 1,) * 16
    return it, {"num_gazing_each_frame": counts}

  @staticmethod
  def init(config, workdir):
    graphdef, params = init_gaze(config, config.train.seed)
    return graphdef, params, None

  @staticmethod
  def make_step(config, graphdef, tx, schedule, info):
    inner = ntp.make_train_step(graphdef, tx, info["num_gazing_each_frame"], schedule,
                            config.ntp.optimize_task_loss_prediction)

    def step(state, batch, rng, frozen):
      del frozen
      batch = dict(batch, video=normalize_on_device(batch["frames"]))
      return inner(state, batch, rng)
    return step

  @staticmethod
  def device_batch(batch, mesh):
    return put_batch(batch, mesh, ("frames", "gazing_pos", "if_padded_gazing", "task_losses"))

  @staticmethod
  def export(config, graphdef, params, workdir):
    export_gaze(graphdef, params, workdir)


def load_videomae(config):
  """Frozen judge: (graphdef, params) from config.videomae.checkpoint (official task-model format), else
  the size named by config.videomae.size at random init (with a warning: rewards are then meaningless)."""
  if config.videomae.checkpoint:
    _, graphdef, params, _ = load_checkpoint(config.videomae.checkpoint)
    return graphdef, params
  logging.warning("no config.videomae.checkpoint: using a RANDOMLY INITIALISED VideoMAE (%s)", config.videomae.size)
  cfg = videomae_size(config.videomae.size)
  return init_params(cfg, config.train.seed)


def videomae_size(size: str):
  if size == "tiny":
    return tiny_videomae_config()
  if size == "small":  # the embedded default's judge: trains in minutes on a CPU
    return tiny_videomae_config(hidden_size=64, num_hidden_layers=3, num_attention_heads=4, intermediate_size=128,
                                decoder_hidden_size=64, decoder_num_hidden_layers=2, decoder_num_attention_heads=4,
                                decoder_intermediate_size=128, initializer_range=0.02)
  if size == "default":
    return VideoMAEConfig()
  raise ValueError(f"config.videomae.size = {size!r}: choose tiny, small or default")


class GRPO:
  finite_keys = ("loss", "grad_norm", "reward_mean")
  progress_keys = ("loss", "grpo_loss", "task_loss_prediction_loss", "reward_mean", "gaze_ratio", "temperature", "lr")
  picture = staticmethod(gaze_picture)

  @staticmethod
  def validate(config):
    g = config.grpo
    if g.group_size < 2:
      raise ConfigError(f"config.grpo.group_size = {g.group_size}: GRPO needs at least 2 rollouts per video")
    if not 1 <= g.max_tokens_per_frame <= 265:
      raise ConfigError(f"config.grpo.max_tokens_per_frame = {g.max_tokens_per_frame} must be in 1..265")
    if not 1 <= g.frames_to_reconstruct <= 16:
      raise ConfigError(f"config.grpo.frames_to_reconstruct = {g.frames_to_reconstruct} must be in 1..16")
    if not 0 < g.requirement_min <= g.requirement_max:
      raise ConfigError(f"config.grpo.requirement_min/max = {g.requirement_min}/{g.requirement_max}: need 0 < min <= max")
    if g.temperature_start <= 0 or g.temperature_end <= 0:
      raise ConfigError("config.grpo.temperature_start/end must be positive")
    videomae_size(config.videomae.size)

  @staticmethod
  def make_data(config, workdir):
    from data_pipelines.pipeline import make_iterator
    src = data_source(config, "train")
    it = make_iterator(src, global_batch_size=config.data.global_batch_size, seed=config.data.seed,
                       shuffle=config.data.shuffle, num_workers=config.data.num_workers)
    return it, {}

  @staticmethod
  def init(config, workdir):
    graphdef, params = init_gaze(config, config.train.seed)
    return graphdef, params, load_videomae(config)

  @staticmethod
  def make_step(config, graphdef, tx, schedule, info):
    import ml_collections
    g = ml_collections.ConfigDict(config.grpo.to_dict())
    g.total_steps = config.train.num_steps
    mae_graphdef = info["videomae_graphdef"]
    inner = grpo.make_train_step(graphdef, mae_graphdef, tx, cfg=g, schedule=schedule)

    def step(state, batch, rng, frozen):
      return inner(state, {"video": normalize_on_device(batch["frames"])}, rng, frozen)
    return step

  @staticmethod
  def device_batch(batch, mesh):
    return put_batch(batch, mesh, ("frames",))

  @staticmethod
  def export(config, graphdef, params, workdir):
    export_gaze(graphdef, params, workdir)


class VideoMAETraining:
  """Train the judge itself with random multi-scale gaze."""
  finite_keys = ("loss", "grad_norm")
  progress_keys = ("loss", "gaze_ratio", "lr")
  picture = None

  @staticmethod
  def validate(config):
    videomae_size(config.videomae.size)

  @staticmethod
  def train_config(config):
    v = config.videomae
    return judge_train.VideoMAETrainConfig(lr=config.optimizer.lr, total_steps=config.train.num_steps,
                               warmup_frac=config.optimizer.warmup_frac, grad_clip=config.optimizer.grad_clip or 1.0,
                               frame0_ratio=tuple(v.frame0_ratio), other_ratio=tuple(v.other_ratio),
                               recon_frames=v.recon_frames)

  make_data = GRPO.make_data
  device_batch = GRPO.device_batch

  @staticmethod
  def init(config, workdir):
    graphdef, params = (load_videomae(config) if config.videomae.checkpoint
                        else init_params(videomae_size(config.videomae.size), config.train.seed))
    return graphdef, params, None

  @classmethod
  def make_tx(cls, config):
    tc = cls.train_config(config)
    return judge_train.make_optimizer(tc), judge_train.schedule(tc)

  @classmethod
  def make_step(cls, config, graphdef, tx, schedule, info):
    inner = judge_train.make_train_step(cls.train_config(config), graphdef, tx)

    def step(state, batch, rng, frozen):
      s = judge_train.TrainState(step=state.step, params=state.params, opt_state=state.opt_state, frozen={})
      s, m = inner(s, {"video": normalize_on_device(batch["frames"])}, rng)
      return TrainState(step=s.step, params=s.params, opt_state=s.opt_state), m
    return step

  @staticmethod
  def export(config, graphdef, params, workdir):
    from flax import nnx
    cfg = nnx.merge(graphdef, params).cfg
    save_checkpoint(os.path.join(workdir, "export"), cfg, jax.tree.map(np.asarray, params.to_pure_dict())
                    if hasattr(params, "to_pure_dict") else params)
    logging.info("exported the VideoMAE (official task-model format) to %s", os.path.join(workdir, "export"))


ALGORITHMS = {"ntp": NTP, "grpo": GRPO, "videomae": VideoMAETraining}
