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

from autogaze_jax.interop.common import (CONFIG_NAME, CONV2D_OIHW, IDENT, WEIGHTS_NAME, CheckpointError, Row,
                                        layernorm_rows, params_to_tensors, read_json_config, read_safetensors,
                                        tensors_to_params, torch_shapes, weight_bias_rows, write_json,
                                        write_safetensors)
from autogaze_jax.judge.config import VideoMAEConfig
from autogaze_jax.judge.model import abstract_params

STRIP_PREFIXES = ("module.", "mae.")
PERCEPTUAL_PREFIXES = ("dinov2_reg.", "siglip2.")


def _block_rows(prefix: str, ours: tuple) -> list[Row]:
  rows = []
  for hf, me in (("attention.attention.query", "query"), ("attention.attention.key", "key"),
                 ("attention.attention.value", "value"), ("attention.output.dense", "attention_output"),
                 ("intermediate.dense", "intermediate"), ("output.dense", "output")):
    rows += weight_bias_rows(prefix + hf, ours + (me,))
  for ln in ("layernorm_before", "layernorm_after"):
    rows += layernorm_rows(prefix + ln, ours + (ln,))
  return rows


def name_table(cfg: VideoMAEConfig) -> list[Row]:
  """[(official name, our param path, (to_ours, to_torch))]."""
  e = ("vit", "embeddings")
  rows = [("vit.embeddings.cls_token", e + ("cls_token",), IDENT),
          ("vit.embeddings.position_embeddings", e + ("position_embeddings",), IDENT),
          ("vit.embeddings.patch_embeddings.projection.weight", e + ("patch_kernel",), CONV2D_OIHW),
          ("vit.embeddings.patch_embeddings.projection.bias", e + ("patch_bias",), IDENT)]
  if cfg.scale_embed:
    rows.append(("vit.embeddings.scale_embed", e + ("scale_embed",), IDENT))
  if cfg.time_embed:
    rows.append(("vit.embeddings.time_embed", e + ("time_embed",), IDENT))
  for i in range(cfg.num_hidden_layers):
    rows += _block_rows(f"vit.encoder.layer.{i}.", ("vit", "layer", i))
  rows += layernorm_rows("vit.layernorm", ("vit", "layernorm"))
  rows += weight_bias_rows("decoder.decoder_embed", ("decoder", "decoder_embed"))
  rows += [("decoder.mask_token", ("decoder", "mask_token"), IDENT),
           ("decoder.decoder_pos_embed", ("decoder", "decoder_pos_embed"), IDENT)]
  for i in range(cfg.decoder_num_hidden_layers):
    rows += _block_rows(f"decoder.decoder_layers.{i}.", ("decoder", "decoder_layers", i))
  rows += layernorm_rows("decoder.decoder_norm", ("decoder", "decoder_norm"))
  rows += weight_bias_rows("decoder.decoder_pred", ("decoder", "decoder_pred"))
  if cfg.scale_embed:
    rows.append(("decoder.decoder_scale_embed", ("decoder", "decoder_scale_embed"), IDENT))
  if cfg.time_embed:
    rows.append(("decoder.time_embed", ("decoder", "time_embed"), IDENT))
  return rows


def _strip(name: str) -> str:
  for p in STRIP_PREFIXES:
    if name.startswith(p):
      name = name[len(p):]
  return name


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
  shapes = torch_shapes(table, abstract_params(cfg)[1].to_pure_dict())
  return tensors_to_params(table, stripped, shapes, what="VideoMAE"), perceptual


def params_to_official(cfg: VideoMAEConfig, params, prefix: str = "") -> dict:
  """Nested pure dict (or nnx.State) of our params -> official state dict (torch layouts, float32)."""
  return params_to_tensors(name_table(cfg), params, prefix)


def read_config(ckpt_dir: str, **overrides) -> VideoMAEConfig:
  return read_json_config(os.path.join(ckpt_dir, CONFIG_NAME),
                          lambda d: VideoMAEConfig.from_official_dict(d, **overrides), "VideoMAE checkpoint")


def load_checkpoint(ckpt_dir: str, cfg: VideoMAEConfig | None = None, weights: str | None = None):
  """Directory with config.json + model.safetensors (or an explicit weights file) ->
  (cfg, graphdef, params nnx.State, perceptual tensors dict)."""
  cfg = cfg or read_config(ckpt_dir)
  tensors, _ = read_safetensors(weights or os.path.join(ckpt_dir, WEIGHTS_NAME))
  tree, perceptual = official_to_params(cfg, tensors)
  graphdef, state = abstract_params(cfg)
  state.replace_by_pure_dict(tree)
  state = jax.tree.map(jnp.asarray, state)
  return cfg, graphdef, state, perceptual


def save_checkpoint(ckpt_dir: str, cfg: VideoMAEConfig, params, perceptual: dict | None = None):
  """Write config.json + model.safetensors (official names, `{"format": "pt"}`), atomically."""
  os.makedirs(ckpt_dir, exist_ok=True)
  write_json(os.path.join(ckpt_dir, CONFIG_NAME), cfg.to_official_dict())
  tensors = params_to_official(cfg, params)
  tensors.update(perceptual or {})
  write_safetensors(os.path.join(ckpt_dir, WEIGHTS_NAME), tensors)
