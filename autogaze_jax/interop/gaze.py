"""Official checkpoint format <-> our params.

An official AutoGaze checkpoint directory holds `config.json`, `model.safetensors` (49 float32
tensors under `gazing_model.`, torch layouts, metadata {"format": "pt"}) and
`preprocessor_config.json`. Weights are read from safetensors only: nothing here unpickles.
The name/layout table is built from the config, so non-default sizes (the tiny fixture) work.
"""
from __future__ import annotations

import functools
import os

import numpy as np

from autogaze_jax.gaze.config import GazeConfig
from autogaze_jax.gaze.functional import abstract_params
from autogaze_jax.gaze.preprocess import PREPROCESSOR_NAME, default_preprocessor_config
from autogaze_jax.core.atomic_files import write_json
from autogaze_jax.interop.common import (CONFIG_NAME, CONV3D_OI111, CONV3D_OITHW, IDENT, LINEAR, WEIGHTS_NAME,
                                        CheckpointError, Row, layernorm_rows, params_to_tensors, read_json_config,
                                        tensors_to_params, torch_shapes, weight_bias_rows,
                                        write_safetensors)
from autogaze_jax.interop.common import read_safetensors  # noqa: F401  (api.py reads checkpoints through this module)

PREFIX = "gazing_model."

# What a gaze checkpoint needs from a hub repo (nothing else is downloaded).
HUB_FILES = (CONFIG_NAME, WEIGHTS_NAME, PREPROCESSOR_NAME)


def name_table(cfg: GazeConfig) -> list[Row]:
  """[(official name, our state path, (to_ours, to_torch))] in official `state_dict()` order."""
  rows = weight_bias_rows("vision_model.temporal_conv", ("vision_model", "temporal_conv"), CONV3D_OITHW)
  rows += layernorm_rows("vision_model.norm", ("vision_model", "norm"))
  for i in range(cfg.vision.depth):
    rows += weight_bias_rows(f"vision_model.blocks.{i}.conv3d", ("vision_model", "blocks", i), CONV3D_OITHW)
  rows += weight_bias_rows("vision_model.out_proj", ("vision_model", "out_proj"), CONV3D_OI111)
  rows += [("connector.pos_embed", ("connector", "pos_embed"), IDENT),
           ("gaze_decoder.model.embed_tokens.weight", ("gaze_decoder", "embed_tokens"), IDENT)]
  for i in range(cfg.decoder.num_hidden_layers):
    base = ("gaze_decoder", "layers", i)
    for p in ("q_proj", "k_proj", "v_proj", "o_proj"):
      rows.append((f"gaze_decoder.model.layers.{i}.self_attn.{p}.weight", base + ("self_attn", p, "kernel"), LINEAR))
    for p in ("gate_proj", "up_proj", "down_proj"):
      rows.append((f"gaze_decoder.model.layers.{i}.mlp.{p}.weight", base + ("mlp", p, "kernel"), LINEAR))
    for p in ("input_layernorm", "post_attention_layernorm"):
      rows.append((f"gaze_decoder.model.layers.{i}.{p}.weight", base + (p, "scale"), IDENT))
  rows += [("gaze_decoder.model.norm.weight", ("gaze_decoder", "norm", "scale"), IDENT),
           ("gaze_decoder.lm_head.weight", ("gaze_decoder", "lm_head", "kernel"), LINEAR),
           ("gaze_decoder.task_loss_prediction_head.weight", ("gaze_decoder", "task_loss_prediction_head", "kernel"),
            LINEAR)]
  return [(PREFIX + n, p, f) for n, p, f in rows]


def read_config(ckpt_dir: str) -> GazeConfig:
  if not os.path.isdir(ckpt_dir):
    raise CheckpointError(f"checkpoint directory {ckpt_dir!r} does not exist")
  return read_json_config(os.path.join(ckpt_dir, CONFIG_NAME), GazeConfig.from_official_dict)


def official_to_params(cfg: GazeConfig, tensors: dict[str, np.ndarray]) -> dict:
  """Official state dict (numpy) -> nested dict of our params; names every bad/missing/extra tensor."""
  # Without its raw JSON the config is the same cache key for every checkpoint of one architecture.
  return tensors_to_params(name_table(cfg), tensors, _abstract_torch_shapes(cfg.replace(raw_json="")),
                           what="checkpoint")


def params_to_official(cfg: GazeConfig, params: dict) -> dict[str, np.ndarray]:
  """Nested dict of our params -> official state dict (torch layouts, float32, contiguous)."""
  return params_to_tensors(name_table(cfg), params)


@functools.lru_cache(maxsize=16)
def _abstract_torch_shapes(cfg: GazeConfig) -> dict:
  """{our path: torch shape} from an abstract model of this config."""
  return torch_shapes(name_table(cfg), abstract_params(cfg)[1].to_pure_dict())


def write_checkpoint(ckpt_dir: str, cfg: GazeConfig, params: dict, preprocessor: dict | None = None):
  """Write config.json + model.safetensors (+ preprocessor_config.json) as `save_pretrained` does."""
  os.makedirs(ckpt_dir, exist_ok=True)
  write_json(os.path.join(ckpt_dir, CONFIG_NAME), cfg.to_official_dict())
  write_safetensors(os.path.join(ckpt_dir, WEIGHTS_NAME), params_to_official(cfg, params))
  write_json(os.path.join(ckpt_dir, PREPROCESSOR_NAME), preprocessor or default_preprocessor_config())
