"""`AutoGaze`: the user-facing handle = config + static graphdef + param pytree.

The NNX model is split exactly once; every computation is a pure jitted function of
`(graphdef, params, arrays)` (graphdef static), so params can be sharded, donated, checkpointed
and swapped without retracing.
"""
from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from autogaze_jax import interop
from autogaze_jax.config import GazeConfig
from autogaze_jax.models.gaze_model import GazeModel
from autogaze_jax.preprocess import Processor


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
  s = model.cfg.input_img_size
  if pixel_values.shape[-2:] != (s, s):
    from autogaze_jax.resize import resize_bicubic
    pixel_values = resize_bicubic(pixel_values, s, s)
  return model.vision_model(pixel_values)[0]


class AutoGaze:
  """Config + params of one gaze model, with official checkpoint I/O.

  >>> model = AutoGaze.from_pretrained("path/to/checkpoint")   # config.json + model.safetensors
  >>> out = model.teacher_forced(pixel_values, gazing_pos, if_padded, num_gazing_each_frame)
  >>> model.save_pretrained("out_dir")                         # loadable by the official code
  """

  def __init__(self, cfg: GazeConfig, params=None, seed: int = 0, processor: Processor | None = None):
    self.cfg = cfg
    if params is None:
      self.graphdef, self.params = init_params(cfg, seed)
    else:
      self.graphdef, self.params = params_from_pure_dict(cfg, params) if isinstance(params, dict) else (
          abstract_params(cfg)[0], params)
    self.processor = processor or Processor.from_pretrained(None)

  # ---- checkpoint interop ----
  @classmethod
  def from_pretrained(cls, ckpt_dir: str, dtype: str | None = None) -> "AutoGaze":
    cfg = interop.read_config(ckpt_dir)
    if dtype is not None:
      cfg = cfg.replace(dtype=dtype)
    tensors, meta = interop.read_safetensors(os.path.join(ckpt_dir, interop.hf.WEIGHTS_NAME))
    if meta.get("format", "pt") != "pt":
      raise interop.CheckpointError(f"{ckpt_dir}: safetensors metadata format {meta.get('format')!r} is not 'pt'")
    params = interop.official_to_params(cfg, tensors)
    return cls(cfg, params, processor=Processor.from_pretrained(ckpt_dir))

  def save_pretrained(self, ckpt_dir: str):
    proc = None
    interop.write_checkpoint(ckpt_dir, self.cfg, self.pure_params(), proc)

  def pure_params(self) -> dict:
    return jax.tree.map(np.asarray, self.params.to_pure_dict())

  @property
  def num_params(self) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(self.params)))

  # ---- computation ----
  def teacher_forced(self, pixel_values, gazing_pos, if_padded_gazing, num_gazing_each_frame, debug=False):
    pv = _check_pixel_values(pixel_values, self.cfg)
    return teacher_forced(self.graphdef, self.params, pv, jnp.asarray(gazing_pos),
                          jnp.asarray(if_padded_gazing, bool), tuple(int(n) for n in num_gazing_each_frame),
                          debug)

  def vision_features(self, pixel_values):
    return vision_features(self.graphdef, self.params, _check_pixel_values(pixel_values, self.cfg))


def _check_pixel_values(pv, cfg: GazeConfig):
  pv = jnp.asarray(pv)
  if pv.ndim != 5 or pv.shape[2] != 3:
    raise ValueError(f"pixel_values must be (B, T, 3, H, W) processor output, got shape {pv.shape}")
  if not jnp.issubdtype(pv.dtype, jnp.floating):
    raise ValueError(f"pixel_values must be float (processor output), got {pv.dtype}; "
                     "use AutoGaze.gaze() for uint8 frames")
  if pv.shape[1] < 1:
    raise ValueError("pixel_values has no frames")
  return pv.astype(jnp.float32)
