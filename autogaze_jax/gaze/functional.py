"""The gaze model as pure functions of (graphdef, params, arrays): init, load-from-dict, teacher forcing,
vision features, and the input checks every entry point shares.

The NNX model is split exactly once; every computation is a pure jitted function of
`(graphdef, params, arrays)` (graphdef static), so params can be sharded, donated, checkpointed
and swapped without retracing.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from autogaze_jax.gaze.config import GazeConfig
from autogaze_jax.gaze.model import GazeModel


def init_params(cfg: GazeConfig, seed: int = 0):
  """(graphdef, params State) of a freshly initialised model (official init distributions)."""
  return nnx.split(GazeModel(cfg, nnx.Rngs(seed)), nnx.Param)


def abstract_params(cfg: GazeConfig):
  """(graphdef, params State of ShapeDtypeStructs): no memory, no RNG."""
  return nnx.split(nnx.eval_shape(lambda: GazeModel(cfg, nnx.Rngs(0))), nnx.Param)


def params_from_pure_dict(cfg: GazeConfig, tree: dict):
  graphdef, state = abstract_params(cfg)
  state.replace_by_pure_dict(jax.tree.map(jnp.asarray, tree))
  return graphdef, state


@functools.partial(jax.jit, static_argnames=("graphdef", "num_gazing_each_frame", "debug"))
def teacher_forced(graphdef, params, pixel_values, gazing_pos, if_padded_gazing,
                   num_gazing_each_frame: tuple[int, ...], debug: bool = False) -> dict:
  """Jitted `GazeModel.teacher_forced` (see there for shapes)."""
  return nnx.merge(graphdef, params).teacher_forced(
      pixel_values, gazing_pos, if_padded_gazing, num_gazing_each_frame, debug)


@functools.partial(jax.jit, static_argnames=("graphdef",))
def vision_features(graphdef, params, pixel_values):
  """Vision-encoder output before the connector, (B, T, P, D) (official `vision_model` output)."""
  model = nnx.merge(graphdef, params)
  return model.vision_model(model.resize_input(pixel_values))[0]


def check_pixel_values(pv, cfg: GazeConfig):
  pv = jnp.asarray(pv)
  if pv.ndim != 5 or pv.shape[2] != 3:
    raise ValueError(f"pixel_values must be (B, T, 3, H, W) processor output, got shape {pv.shape}")
  if not jnp.issubdtype(pv.dtype, jnp.floating):
    raise ValueError(f"pixel_values must be float (processor output), got {pv.dtype}; "
                     "use AutoGaze.gaze() for uint8 frames")
  if pv.shape[1] < 1:
    raise ValueError("pixel_values has no frames")
  return pv.astype(jnp.float32)
