"""Train AutoGaze: NTP, GRPO or the VideoMAE judge, on one CPU, a GPU or a TPU pod slice.

  python -m launch.train --config=configs/ntp.py --workdir=runs/ntp
  python -m launch.train --config=configs/ntp.py:smoke --workdir=runs/smoke --config.optimizer.lr=1e-3
  python -m launch.train --config=configs/grpo.py --workdir=runs/grpo --config.model.init=runs/ntp/export

Restarting with the same --workdir resumes exactly from its last checkpoint. A checkpoint that cannot
be written (e.g. a full disk) ends the run with one line naming the path, the free space and the last
complete checkpoint (exit status 1). Multi-process runs call jax.distributed.initialize() (set
--distributed, or it is automatic on TPU pods / SLURM / with the JAX coordinator environment variables).
"""
from __future__ import annotations

import logging
import sys
import threading

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "config file, optionally with :arg", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "directory for checkpoints, metrics and exports")
_DIST = flags.DEFINE_bool("distributed", False, "call jax.distributed.initialize() (multi-process, auto-detected)")
_COORD = flags.DEFINE_string("coordinator", None, "host:port of process 0 (multi-process without auto-detection)")
_NPROC = flags.DEFINE_integer("num_processes", None, "number of processes (with --coordinator)")
_PID = flags.DEFINE_integer("process_id", None, "this process's index (with --coordinator)")
_ALLOW = flags.DEFINE_bool("allow_config_change", False, "resume although the config differs from the workdir's "
                           "(beyond the keys safe to change); the change is recorded in WORKDIR/config_changes.jsonl")
_STOP = flags.DEFINE_integer("stop_after", None, "leave after N steps of this run, with a checkpoint (like a preemption)")


def main(argv):
  del argv
  from launch.runtime import init_runtime
  init_runtime(_DIST.value, _COORD.value, _NPROC.value, _PID.value)
  from autogaze_jax.interop.common import CheckpointError
  from autogaze_jax.train.state import ConfigError
  from launch.wiring import train
  if _CONFIG.value is None or not _WORKDIR.value:
    raise app.UsageError("--config and --workdir are required (see --help)")
  try:
    result = train(_CONFIG.value, _WORKDIR.value, stop_after=_STOP.value, allow_config_change=_ALLOW.value)
  except ConfigError as e:
    raise app.UsageError(str(e))
  except CheckpointError as e:   # a full disk, an unreadable --config.model.init: one line, not orbax's stacks
    logging.error("%s: %s", type(e).__name__, e)
    # orbax's abandoned background writes (and a TensorBoard writer that could not flush) are
    # finalised at exit, each printing the stack of the failure just reported: unraisable
    # exceptions, asyncio "exception was never retrieved", dying daemon threads
    sys.unraisablehook = lambda unraisable: None
    threading.excepthook = lambda args: None
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)
    sys.exit(1)
  if result.get("preempted"):   # a scheduler must tell a preempted run from a finished one
    logging.warning("preempted at step %d, checkpoint saved: rerun the same command to resume", result["step"])
    sys.exit(143)
  logging.info("done: %s", result)


if __name__ == "__main__":
  app.run(main)
