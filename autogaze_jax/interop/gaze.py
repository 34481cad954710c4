"""Official checkpoint format <-> our params.

An official AutoGaze checkpoint directory holds `config.json`, `model.safetensors` (49 float32
tensors under `gazing_model.`, torch layouts, metadata {"format": "pt"}) and
`preprocessor_config.json`. Weights are read from safetensors only: nothing here unpickles.
The name/layout table is built from the config, so non-default sizes (the tiny fixture) work.
"""
from __future__ import annotations

import functools
import os
from typing import Callable

import numpy as np

from autogaze_jax.gaze.config import GazeConfig
from autogaze_jax.gaze.functional import abstract_params
from autogaze_jax.gaze.preprocess import PREPROCESSOR_NAME, default_preprocessor_config
from autogaze_jax.interop.common import (CONFIG_NAME, WEIGHTS_NAME, CheckpointError, read_json_config,  # noqa: F401
                                        read_safetensors, write_json, write_safetensors)

PREFIX = "gazing_model."


# torch <-> flax layout converters: (to_ours, to_torch)
_IDENT = (lambda a: a, lambda a: a)
_LINEAR = (lambda a: a.T, lambda a: a.T)                                   # (out,in) <-> (in,out)
_CONV = (lambda a: a.transpose(2, 3, 4, 1, 0), lambda a: a.transpose(4, 3, 0, 1, 2))  # OITHW <-> THWIO
_POINTWISE = (lambda a: a.reshape(a.shape[0], a.shape[1]).T,              # (O,I,1,1,1) <-> (I,O)
              lambda a: a.T.reshape(a.shape[1], a.shape[0], 1, 1, 1))


def name_table(cfg: GazeConfig) -> list[tuple[str, tuple, tuple[Callable, Callable]]]:
  """[(official name, our state path, (to_ours, to_torch))] in official `state_dict()` order."""
  rows = [("vision_model.temporal_conv.weight", ("vision_model", "temporal_conv", "kernel"), _CONV),
          ("vision_model.temporal_conv.bias", ("vision_model", "temporal_conv", "bias"), _IDENT),
          ("vision_model.norm.weight", ("vision_model", "norm", "scale"), _IDENT),
          ("vision_model.norm.bias", ("vision_model", "norm", "bias"), _IDENT)]
  for i in range(cfg.vision.depth):
    rows += [(f"vision_model.blocks.{i}.conv3d.weight", ("vision_model", "blocks", i, "kernel"), _CONV),
             (f"vision_model.blocks.{i}.conv3d.bias", ("vision_model", "blocks", i, "bias"), _IDENT)]
  rows += [("vision_model.out_proj.weight", ("vision_model", "out_proj", "kernel"), _POINTWISE),
           ("vision_model.out_proj.bias", ("vision_model", "out_proj", "bias"), _IDENT),
           ("connector.pos_embed", ("connector", "pos_embed"), _IDENT),
           ("gaze_decoder.model.embed_tokens.weight", ("gaze_decoder", "embed_tokens"), _IDENT)]
  for i in range(cfg.decoder.num_hidden_layers):
    base = ("gaze_decoder", "layers", i)
    for p in ("q_proj", "k_proj", "v_proj", "o_proj"):
      rows.append((f"gaze_decoder.model.layers.{i}.self_attn.{p}.weight", base + ("self_attn", p, "kernel"), _LINEAR))
    for p in ("gate_proj", "up_proj", "down_proj"):
      rows.append((f"gaze_decoder.model.layers.{i}.mlp.{p}.weight", base + ("mlp", p, "kernel"), _LINEAR))
    for p in ("input_layernorm", "post_attention_layernorm"):
      rows.append((f"gaze_decoder.model.layers.{i}.{p}.weight", base + (p, "scale"), _IDENT))
  rows += [("gaze_decoder.model.norm.weight", ("gaze_decoder", "norm", "scale"), _IDENT),
           ("gaze_decoder.lm_head.weight", ("gaze_decoder", "lm_head", "kernel"), _LINEAR),
           ("gaze_decoder.task_loss_prediction_head.weight", ("gaze_decoder", "task_loss_prediction_head", "kernel"),
            _LINEAR)]
  return [(PREFIX + n, p, f) for n, p, f in rows]


def read_config(ckpt_dir: str) -> GazeConfig:
  if not os.path.isdir(ckpt_dir):
    raise CheckpointError(f"checkpoint directory {ckpt_dir!r} does not exist")
  return read_json_config(os.path.join(ckpt_dir, CONFIG_NAME), GazeConfig.from_official_dict)


def official_to_params(cfg: GazeConfig, tensors: dict[str, np.ndarray]) -> dict:
  """Official state dict (numpy) -> nested dict of our params; names every bad/missing/extra tensor."""
  table = name_table(cfg)
  expected = {n for n, _, _ in table}
  missing = [n for n in expected if n not in tensors]
  unknown = [n for n in tensors if n not in expected]
  if missing or unknown:
    raise CheckpointError(f"checkpoint tensors do not match the config: missing {sorted(missing)}, "
                          f"unexpected {sorted(unknown)}")
  out: dict = {}
  for name, path, (to_ours, to_torch) in table:
    arr = tensors[name]
    if arr.dtype != np.float32:
      raise CheckpointError(f"tensor {name} has dtype {arr.dtype}, expected float32")
    want = _torch_shape(cfg, path)
    if tuple(arr.shape) != want:
      raise CheckpointError(f"tensor {name} has shape {tuple(arr.shape)}, the config expects {want}")
    node = out
    for key in path[:-1]:
      node = node.setdefault(key, {})
    node[path[-1]] = np.ascontiguousarray(to_ours(arr))
  return out


def params_to_official(cfg: GazeConfig, params: dict) -> dict[str, np.ndarray]:
  """Nested dict of our params -> official state dict (torch layouts, float32, contiguous)."""
  out = {}
  for name, path, (_, to_torch) in name_table(cfg):
    node = params
    for key in path:
      node = node[key]
    out[name] = np.ascontiguousarray(to_torch(np.asarray(node, np.float32)))
  return out


def _torch_shape(cfg: GazeConfig, path: tuple) -> tuple[int, ...]:
  """Expected torch shape of a tensor, from an abstract model of this config."""
  return _abstract_torch_shapes(cfg.replace(raw_json=""))[path]


def torch_shapes(table, abstract_pure: dict) -> dict:
  """{our path: torch shape} for a name table over an abstract (ShapeDtypeStruct) pure-dict state."""
  shapes = {}
  for _, path, (_, to_torch) in table:
    node = abstract_pure
    for k in path:
      node = node[k]
    shapes[path] = tuple(to_torch(np.empty(node.shape, np.float32)).shape)
  return shapes


@functools.lru_cache(maxsize=16)
def _abstract_torch_shapes(cfg: GazeConfig) -> dict:
  return torch_shapes(name_table(cfg), abstract_params(cfg)[1].to_pure_dict())


def write_checkpoint(ckpt_dir: str, cfg: GazeConfig, params: dict, preprocessor: dict | None = None):
  """Write config.json + model.safetensors (+ preprocessor_config.json) as `save_pretrained` does."""
  os.makedirs(ckpt_dir, exist_ok=True)
  write_json(os.path.join(ckpt_dir, CONFIG_NAME), cfg.to_official_dict())
  write_safetensors(os.path.join(ckpt_dir, WEIGHTS_NAME), params_to_official(cfg, params))
  write_json(os.path.join(ckpt_dir, PREPROCESSOR_NAME), preprocessor or default_preprocessor_config())
