"""Official VideoMAE task-model weights <-> our params.

Reads HF `ViTMAEForPreTraining` names (`vit.*`, `decoder.*`, as in `tests/fixtures/videomae_tiny`)
from safetensors only (nothing unpickles). An optional `module.` (DDP) and/or `mae.` prefix
(`VideoMAEReconstruction.mae`) is stripped. Tensors of the bundled perceptual nets (`dinov2_reg.*`,
`siglip2.*`) are returned separately, never silently dropped. Missing, unexpected, mis-shaped or
non-float32 tensors raise `CheckpointError` naming them (the official loader uses strict=False, which
would load nothing on a prefix mismatch). Export writes the same names and torch layouts with
`{"format": "pt"}` metadata; load -> save -> load is bit-exact.
"""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np

from autogaze_jax.interop.common import (CONFIG_NAME, WEIGHTS_NAME, CheckpointError, read_json_config, read_safetensors,
                                        write_json, write_safetensors)
from autogaze_jax.interop.gaze import torch_shapes
from autogaze_jax.judge.config import VideoMAEConfig
from autogaze_jax.judge.model import abstract_params

STRIP_PREFIXES = ("module.", "mae.")
PERCEPTUAL_PREFIXES = ("dinov2_reg.", "siglip2.")

_IDENT = (lambda a: a, lambda a: a)
_LINEAR = (lambda a: a.T, lambda a: a.T)                                   # (out,in) <-> (in,out)
_CONV = (lambda a: a.transpose(2, 3, 1, 0), lambda a: a.transpose(3, 2, 0, 1))  # OIHW <-> HWIO


def _block_rows(prefix: str, ours: tuple) -> list:
  rows = []
  for hf, me in (("attention.attention.query", "query"), ("attention.attention.key", "key"),
                 ("attention.attention.value", "value"), ("attention.output.dense", "attention_output"),
                 ("intermediate.dense", "intermediate"), ("output.dense", "output")):
    rows += [(f"{prefix}{hf}.weight", ours + (me, "kernel"), _LINEAR), (f"{prefix}{hf}.bias", ours + (me, "bias"), _IDENT)]
  for ln in ("layernorm_before", "layernorm_after"):
    rows += [(f"{prefix}{ln}.weight", ours + (ln, "scale"), _IDENT), (f"{prefix}{ln}.bias", ours + (ln, "bias"), _IDENT)]
  return rows


def name_table(cfg: VideoMAEConfig) -> list:
  """[(official name, our param path, (to_ours, to_torch))]."""
  e = ("vit", "embeddings")
  rows = [("vit.embeddings.cls_token", e + ("cls_token",), _IDENT),
          ("vit.embeddings.position_embeddings", e + ("position_embeddings",), _IDENT),
          ("vit.embeddings.patch_embeddings.projection.weight", e + ("patch_kernel",), _CONV),
          ("vit.embeddings.patch_embeddings.projection.bias", e + ("patch_bias",), _IDENT)]
  if cfg.scale_embed:
    rows.append(("vit.embeddings.scale_embed", e + ("scale_embed",), _IDENT))
  if cfg.time_embed:
    rows.append(("vit.embeddings.time_embed", e + ("time_embed",), _IDENT))
  for i in range(cfg.num_hidden_layers):
    rows += _block_rows(f"vit.encoder.layer.{i}.", ("vit", "layer", i))
  rows += [("vit.layernorm.weight", ("vit", "layernorm", "scale"), _IDENT),
           ("vit.layernorm.bias", ("vit", "layernorm", "bias"), _IDENT),
           ("decoder.decoder_embed.weight", ("decoder", "decoder_embed", "kernel"), _LINEAR),
           ("decoder.decoder_embed.bias", ("decoder", "decoder_embed", "bias"), _IDENT),
           ("decoder.mask_token", ("decoder", "mask_token"), _IDENT),
           ("decoder.decoder_pos_embed", ("decoder", "decoder_pos_embed"), _IDENT)]
  for i in range(cfg.decoder_num_hidden_layers):
    rows += _block_rows(f"decoder.decoder_layers.{i}.", ("decoder", "decoder_layers", i))
  rows += [("decoder.decoder_norm.weight", ("decoder", "decoder_norm", "scale"), _IDENT),
           ("decoder.decoder_norm.bias", ("decoder", "decoder_norm", "bias"), _IDENT),
           ("decoder.decoder_pred.weight", ("decoder", "decoder_pred", "kernel"), _LINEAR),
           ("decoder.decoder_pred.bias", ("decoder", "decoder_pred", "bias"), _IDENT)]
  if cfg.scale_embed:
    rows.append(("decoder.decoder_scale_embed", ("decoder", "decoder_scale_embed"), _IDENT))
  if cfg.time_embed:
    rows.append(("decoder.time_embed", ("decoder", "time_embed"), _IDENT))
  return rows


def _strip(name: str) -> str:
  for p in STRIP_PREFIXES:
    if name.startswith(p):
      name = name[len(p):]
  return name


def _expected_shapes(cfg: VideoMAEConfig) -> dict:
  """{official name: torch shape} from an abstract model of this config."""
  from flax import nnx
  _, abstract = abstract_params(cfg)
  table = name_table(cfg)
  by_path = torch_shapes(table, nnx.to_pure_dict(abstract))
  return {name: by_path[path] for name, path, _ in table}


def official_to_params(cfg: VideoMAEConfig, tensors: dict) -> tuple[dict, dict]:
  """Official state dict (numpy) -> (nested pure dict of our params, perceptual-net tensors by name)."""
  stripped, perceptual = {}, {}
  for k, a in tensors.items():
    s = _strip(k)
    if s.startswith(PERCEPTUAL_PREFIXES):
      perceptual[s] = a
    elif s in stripped:
      raise CheckpointError(f"tensor {s} appears twice (as {k} and with another prefix)")
    else:
      stripped[s] = a
  table = name_table(cfg)
  expected = {n for n, _, _ in table}
  missing = sorted(expected - set(stripped))
  unknown = sorted(set(stripped) - expected)
  if missing or unknown:
    raise CheckpointError(f"VideoMAE tensors do not match the config: missing {missing}, unexpected {unknown}")
  shapes = _expected_shapes(cfg)
  out: dict = {}
  for name, path, (to_ours, _) in table:
    arr = stripped[name]
    if arr.dtype != np.float32:
      raise CheckpointError(f"tensor {name} has dtype {arr.dtype}, expected float32")
    if tuple(arr.shape) != shapes[name]:
      raise CheckpointError(f"tensor {name} has shape {tuple(arr.shape)}, the config expects {shapes[name]}")
    node = out
    for k in path[:-1]:
      node = node.setdefault(k, {})
    node[path[-1]] = np.ascontiguousarray(to_ours(arr))
  return out, perceptual


def params_to_official(cfg: VideoMAEConfig, params: dict, prefix: str = "") -> dict:
  """Nested pure dict (or nnx.State) of our params -> official state dict (torch layouts, float32)."""
  if not isinstance(params, dict):
    from flax import nnx
    params = nnx.to_pure_dict(params)
  out = {}
  for name, path, (_, to_torch) in name_table(cfg):
    node = params
    for k in path:
      node = node[k]
    out[prefix + name] = np.ascontiguousarray(to_torch(np.asarray(node, np.float32)))
  return out


def read_config(ckpt_dir: str, **overrides) -> VideoMAEConfig:
  return read_json_config(os.path.join(ckpt_dir, CONFIG_NAME),
                          lambda d: VideoMAEConfig.from_official_dict(d, **overrides), "VideoMAE checkpoint")


def load_checkpoint(ckpt_dir: str, cfg: VideoMAEConfig | None = None, weights: str | None = None):
  """Directory with config.json + model.safetensors (or an explicit weights file) ->
  (cfg, graphdef, params nnx.State, perceptual tensors dict)."""
  from flax import nnx
  cfg = cfg or read_config(ckpt_dir)
  tensors, _ = read_safetensors(weights or os.path.join(ckpt_dir, WEIGHTS_NAME))
  tree, perceptual = official_to_params(cfg, tensors)
  graphdef, state = abstract_params(cfg)
  nnx.replace_by_pure_dict(state, tree)
  state = jax.tree.map(jnp.asarray, state)
  return cfg, graphdef, state, perceptual


def save_checkpoint(ckpt_dir: str, cfg: VideoMAEConfig, params, perceptual: dict | None = None):
  """Write config.json + model.safetensors (official names, `{"format": "pt"}`), atomically."""
  os.makedirs(ckpt_dir, exist_ok=True)
  write_json(os.path.join(ckpt_dir, CONFIG_NAME), cfg.to_official_dict())
  tensors = params_to_official(cfg, params)
  tensors.update(perceptual or {})
  write_safetensors(os.path.join(ckpt_dir, WEIGHTS_NAME), tensors)
