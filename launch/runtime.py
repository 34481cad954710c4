"""Process setup shared by the entry points (the only place, with tests/conftest.py, that sets jax config)."""
from __future__ import annotations

import logging
import os


def init_runtime(distributed: bool = False, coordinator: str | None = None, num_processes: int | None = None,
                 process_id: int | None = None) -> None:
  """jax.distributed for multi-process runs, fp32 matmuls (no TF32 on GPUs: parity with the official
  CPU numbers), INFO logging with orbax's per-file chatter muted. On TPU pods / SLURM / GKE the
  coordinator, process count and id are detected; elsewhere pass them (e.g. 2 processes on localhost)."""
  import jax
  if coordinator or distributed or os.environ.get("JAX_COORDINATOR_ADDRESS"):
    jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes, process_id=process_id)
  jax.config.update("jax_default_matmul_precision", "highest")
  logging.getLogger().setLevel(logging.INFO)
  for noisy in ("orbax", "absl"):
    logging.getLogger(noisy).setLevel(logging.WARNING)
