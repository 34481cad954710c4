"""The trainer's fixed held-out set (`config.train.val_every` / `val_clips`): the first clips of the data's
val split, collated as the training batches (labels joined for NTP), in a fixed order, loaded once.

Labels: `config.data.labels` must hold labels for val clips (`launch.label` on the val split); without a
label file (the embedded dataset's plumbing runs) toy labels of the val clips are written to
WORKDIR/toy_val_labels.json, as `training.labels_path` does for the train split.
"""
from __future__ import annotations

import logging
import math
import os

from autogaze_jax.labels.format import write_labels
from data_pipelines import ops
from data_pipelines.pipeline import make_dataset
from data_pipelines.synthetic import random_labels
from data_pipelines.training import source


class NoHeldOutLabels(ValueError):
  """NTP validation needs labelled val clips and the label file has none."""


def _val_labels(config, workdir: str) -> str:
  if config.data.labels:
    return config.data.labels
  path = os.path.join(workdir, "toy_val_labels.json")
  if not os.path.exists(path):
    os.makedirs(workdir, exist_ok=True)
    keys = [ops.relative_video_path(p) for p in source(config, "val").paths]
    write_labels(random_labels(keys, seed=1, max_tokens_per_frame=config.data.max_tokens_per_frame), path)
    logging.warning("no config.data.labels: validating on toy labels %s (plumbing only)", path)
  return path


def validation_batches(config, workdir: str, *, with_labels: bool) -> list[dict]:
  """ceil(val_clips / global batch) host batches of the val split (this host's share of each)."""
  d = config.data
  kw = dict(global_batch_size=d.global_batch_size, seed=d.seed, shuffle=False, num_epochs=None)
  if with_labels:
    labels = _val_labels(config, workdir)
    try:
      src = source(config, "val", labels=labels, require_labels=True)
    except ValueError as e:
      raise NoHeldOutLabels(f"config.train.val_every = {config.train.val_every}: NTP validation needs labels of val "
                            f"clips in config.data.labels = {labels!r} ({e}); label the val split "
                            "(python -m launch.label) or set --config.train.val_every=0") from None
    ds = make_dataset(src, labels="fixed", max_tokens_per_frame=d.max_tokens_per_frame, **kw)
  else:
    ds = make_dataset(source(config, "val"), **kw)
  n = max(1, math.ceil(config.train.val_clips / d.global_batch_size))
  it = iter(ds)
  return [next(it) for _ in range(n)]
