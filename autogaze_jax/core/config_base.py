"""What the frozen model configs (GazeConfig, VideoMAEConfig, GazedViTConfig) have in common.

A mixin for frozen dataclasses: one validation error format, the compute-dtype check and its jnp
dtype, and `replace`. It imports nothing of the project, so gaze/config.py stays a pure dataclass
module; jax is imported only when a dtype is asked for, so reading or validating a config never
pays for it.
"""
from __future__ import annotations

import dataclasses
from typing import Self

DTYPES = ("float32", "bfloat16")


class ConfigBase:
  """Base of a frozen dataclass config with a `dtype: str` field (one of DTYPES)."""

  def _check(self, ok: bool, name: str, value, want: str):
    """Raise ValueError naming the config, the field (or fields) and the expected value unless `ok`."""
    if not ok:
      raise ValueError(f"{type(self).__name__}.{name} = {value!r} is invalid: expected {want}")

  def _check_dtype(self):
    self._check(self.dtype in DTYPES, "dtype", self.dtype, f"one of {DTYPES}")

  @property
  def jnp_dtype(self):
    import jax.numpy as jnp
    return jnp.dtype(self.dtype)

  def replace(self, **kw) -> Self:
    return dataclasses.replace(self, **kw)
