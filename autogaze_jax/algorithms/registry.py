"""The closed set of trainable algorithms and what the trainer needs from each.

An algorithm provides: validate(config), make_data(config, workdir) -> (iterator, info),
init(config, workdir) -> (graphdef, params, frozen), make_step(config, graphdef, tx, schedule, info) ->
step(state, batch, rng, frozen) -> (state, metrics), device_batch(host_batch, mesh), export(...),
plus finite_keys / progress_keys and an optional picture(...).
"""
from __future__ import annotations

import json
import logging
import os

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from autogaze_jax.config import GazeConfig, tiny_config


def gaze_config(config) -> GazeConfig:
  cfg = tiny_config() if config.model.size == "tiny" else GazeConfig()
  return cfg.replace(dtype=config.model.dtype)


def init_gaze(config, seed: int):
  """(graphdef, params) from `config.model.init` (official-format checkpoint) or a fresh init."""
  from autogaze_jax import AutoGaze
  if config.model.init:
    m = AutoGaze.from_pretrained(config.model.init, dtype=config.model.dtype)
    logging.info("gaze model initialised from %s", config.model.init)
  else:
    m = AutoGaze(gaze_config(config), seed=seed)
  return m.graphdef, m.params


def export_gaze(graphdef, params, workdir: str, name: str = "export"):
  from flax import nnx
  from autogaze_jax import AutoGaze
  model = nnx.merge(graphdef, params)
  AutoGaze(model.cfg, nnx.split(model, nnx.Param)[1]).save_pretrained(os.path.join(workdir, name))
  logging.info("exported the gaze model (official format) to %s", os.path.join(workdir, name))


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
  picture = None

  @staticmethod
  def validate(config):
    from autogaze_jax.trainer import ConfigError
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
      keys = [src.load(i)["video_path"] if hasattr(src, "load") else src[i]["video_path"] for i in range(len(src))]
      labels_lib.write_labels(random_labels(keys, max_tokens_per_frame=config.data.max_tokens_per_frame), path)
      logging.warning("no config.data.labels: training on toy labels %s (plumbing only)", path)
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
    from autogaze_jax.algorithms.ntp import make_train_step
    from data_pipelines.pipeline import normalize_on_device
    inner = make_train_step(graphdef, tx, info["num_gazing_each_frame"], schedule,
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


ALGORITHMS = {"ntp": NTP}
