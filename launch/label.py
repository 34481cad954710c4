"""Greedy gaze labels: frozen VideoMAE -> <workdir>/gazing_labels.json + greedy_meta.json (resumable).

  python -m launch.label --config=configs/greedy_labels.py --config.data.src=DIR --workdir=DIR
  python -m launch.label --config=configs/greedy_labels.py:smoke --workdir=runs/labels_smoke

Without --config.data.src the embedded synthetic dataset is labelled; without
--config.videomae.checkpoint a random-weight model is used (a warning says so). Restarting with the
same --workdir continues where a killed run stopped. Multi-process runs call
jax.distributed.initialize() (--distributed, or automatic with the JAX coordinator variables).
"""
from __future__ import annotations

import json

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "config file, optionally with :arg", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "output directory (shard files, gazing_labels.json, greedy_meta.json)")
_DIST = flags.DEFINE_bool("distributed", False, "call jax.distributed.initialize() (multi-process)")


def main(argv):
  del argv
  from launch.runtime import init_runtime
  init_runtime(_DIST.value)
  if _CONFIG.value is None or not _WORKDIR.value:
    raise app.UsageError("--config and --workdir are required (see --help)")
  from launch.wiring import label
  try:
    summary = label(_CONFIG.value, _WORKDIR.value)
  except ValueError as e:
    raise app.UsageError(str(e))
  if summary is not None:
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
  app.run(main)
