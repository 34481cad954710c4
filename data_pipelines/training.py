"""The trainer's input, built from the training config's `data` block (`launch/train.py` hands it to
`autogaze_jax.train.loop.run`): the library's loop never builds a pipeline itself.

  source(config, split)                  the clip source of `config.data` (synthetic | folder | arrayrecord)
  make_train_iterator(config, workdir, with_labels)   the checkpointable training iterator
  validation_clip(config)                (T, H, W, 3) uint8: the fixed clip of the periodic pictures
"""
from __future__ import annotations

import logging
import os

import numpy as np

from autogaze_jax.labels.format import write_labels
from data_pipelines import ops
from data_pipelines.pipeline import DataIterator, make_iterator, make_source
from data_pipelines.synthetic import random_labels


def source(config, split: str, labels=None, require_labels=None):
  d = config.data
  return make_source(d.source, d.path or None, split, labels=labels, require_labels=require_labels,
                     synthetic_num_clips=d.synthetic_num_clips, seed=d.seed, cache_dir=d.cache_dir or None)


def labels_path(config, workdir: str, *, process_index: int = 0, barrier=None) -> str:
  """`config.data.labels`, or on the embedded dataset a file of valid toy labels written by process 0
  into WORKDIR/toy_labels.json (plumbing only: no learnable structure; a warning says so). `barrier()`
  is called after writing so the other processes read a complete file."""
  if config.data.labels:
    return config.data.labels
  path = os.path.join(workdir, "toy_labels.json")
  if not os.path.exists(path) and process_index == 0:
    os.makedirs(workdir, exist_ok=True)
    keys = [ops.relative_video_path(p) for p in source(config, "train").paths]  # no decoding needed
    write_labels(random_labels(keys, max_tokens_per_frame=config.data.max_tokens_per_frame,   # the model's id space
                               tokens_per_frame=config.model.get("num_vision_tokens_each_frame") or 265), path)
    logging.warning("no config.data.labels: training on toy labels %s (plumbing only)", path)
  if barrier is not None:
    barrier()
  return path


def make_train_iterator(config, workdir: str, *, with_labels: bool, process_index: int = 0,
                        barrier=None) -> DataIterator:
  """This host's shard of the training split; with labels joined and collated at fixed capacity
  (`config.data.max_tokens_per_frame` + EOS slots per frame) when the algorithm trains on them."""
  d = config.data
  kw = dict(global_batch_size=d.global_batch_size, seed=d.seed, shuffle=d.shuffle, num_workers=d.num_workers)
  if not with_labels:
    return make_iterator(source(config, "train"), **kw)
  path = labels_path(config, workdir, process_index=process_index, barrier=barrier)
  return make_iterator(source(config, "train", labels=path, require_labels=True), labels="fixed",
                       max_tokens_per_frame=d.max_tokens_per_frame, **kw)


def validation_clip(config) -> np.ndarray:
  """The first clip of the validation split (the pictures follow one clip through training)."""
  return np.asarray(source(config, "val")[0]["frames"])
