"""HF SigLIP vision weights <-> GazedViT params (local files only: safetensors or npz, never pickle).

Names are the common HF layout (`SiglipVisionModel` / `SiglipModel` state dicts):
  vision_model.embeddings.patch_embedding.{weight (D,C,p,p), bias}
  vision_model.embeddings.position_embedding.weight (g0^2, D)
  vision_model.encoder.layers.{i}.self_attn.{q,k,v,out}_proj.{weight (out,in), bias}
  vision_model.encoder.layers.{i}.layer_norm{1,2}.{weight, bias}
  vision_model.encoder.layers.{i}.mlp.fc{1,2}.{weight, bias}
  vision_model.post_layernorm.{weight, bias}
  vision_model.head.{probe, attention.in_proj_weight (3D,D), attention.in_proj_bias,
                     attention.out_proj.{weight,bias}, layernorm.{weight,bias}, mlp.fc{1,2}.{weight,bias}}
Any prefix before `vision_model.` (e.g. `siglip2.` or a VILA `vision_tower.vision_tower.`) is
stripped; tensors without `vision_model.` (text tower, logit_scale/bias) are returned as ignored,
never silently loaded. Missing, unexpected or mis-shaped vision tensors raise `CheckpointError`
naming them. Non-float32 tensors are upcast to float32 (bf16 releases load fine).
"""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np

from autogaze_jax.vit.model import GazedViTConfig, abstract_params
from autogaze_jax.core.atomic_files import write_json
from autogaze_jax.interop.common import (CONFIG_NAME, IDENT, LINEAR, WEIGHTS_NAME, CheckpointError, Row,
                                        conv2d_oihw_unfolded, layernorm_rows, params_to_tensors, read_json_config,
                                        read_safetensors, tensors_to_params, weight_bias_rows,
                                        write_safetensors)

MARK = "vision_model."


def name_table(cfg) -> list[Row]:
  """[(HF name without the `vision_model.` prefix, our param path, (to_ours, to_torch))]."""
  # Our patch kernel is the conv flattened in (c, ky, kx) order, as F.unfold / patches.multiscale_patches.
  rows = weight_bias_rows("embeddings.patch_embedding", ("embeddings", "patch_embedding"),
                          conv2d_oihw_unfolded(cfg.num_channels, cfg.patch_size))
  rows.append(("embeddings.position_embedding.weight", ("embeddings", "position_embedding"), IDENT))
  for i in range(cfg.num_hidden_layers):
    hf, me = f"encoder.layers.{i}.", ("layers", i)
    for p in ("q_proj", "k_proj", "v_proj", "out_proj"):
      rows += weight_bias_rows(hf + f"self_attn.{p}", me + ("self_attn", p))
    for ln in ("layer_norm1", "layer_norm2"):
      rows += layernorm_rows(hf + ln, me + (ln,))
    for fc in ("fc1", "fc2"):
      rows += weight_bias_rows(hf + f"mlp.{fc}", me + ("mlp", fc))
  rows += layernorm_rows("post_layernorm", ("post_layernorm",))
  if cfg.use_head:
    h = ("head",)
    rows += [("head.probe", h + ("probe",), IDENT),
             ("head.attention.in_proj_weight", h + ("attention", "in_proj", "kernel"), LINEAR),
             ("head.attention.in_proj_bias", h + ("attention", "in_proj", "bias"), IDENT)]
    rows += weight_bias_rows("head.attention.out_proj", h + ("attention", "out_proj"))
    rows += layernorm_rows("head.layernorm", h + ("layernorm",))
    for fc in ("fc1", "fc2"):
      rows += weight_bias_rows(f"head.mlp.{fc}", h + ("mlp", fc))
  return rows


def expected_shapes(cfg) -> dict:
  """{HF name (no prefix): torch shape} for `cfg`, from the config alone: the abstract model is not
  free here (its init draws the random weights in numpy)."""
  d, f, c, p = cfg.hidden_size, cfg.intermediate_size, cfg.num_channels, cfg.patch_size
  out = {}
  for name, _, _ in name_table(cfg):
    if name == "embeddings.patch_embedding.weight":
      shape = (d, c, p, p)
    elif name == "embeddings.position_embedding.weight":
      shape = (cfg.num_positions, d)
    elif name == "head.probe":
      shape = (1, 1, d)
    elif name == "head.attention.in_proj_weight":
      shape = (3 * d, d)
    elif name == "head.attention.in_proj_bias":
      shape = (3 * d,)
    elif ".fc1." in name:
      shape = (f, d) if name.endswith("weight") else (f,)
    elif ".fc2." in name:
      shape = (d, f) if name.endswith("weight") else (d,)
    else:  # square projections and layer norms
      shape = (d, d) if name.endswith("_proj.weight") else (d,)
    out[name] = shape
  return out


def read_weights(path: str) -> dict[str, np.ndarray]:
  """All tensors of a .safetensors or .npz file (numpy; npz read with allow_pickle=False)."""
  if not os.path.isfile(path):
    raise CheckpointError(f"missing SigLIP weights file {path}")
  if path.endswith(".npz"):
    try:
      with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}
    except (OSError, ValueError) as e:
      raise CheckpointError(f"cannot read {path} as .npz: {e}") from None
  return read_safetensors(path)[0]


def split_vision(tensors: dict) -> tuple[dict, list[str]]:
  """{name after `vision_model.`: tensor} and the sorted names of ignored (non-vision) tensors."""
  vision, ignored = {}, []
  for k, a in tensors.items():
    i = k.find(MARK)
    if i < 0:
      ignored.append(k)
      continue
    short = k[i + len(MARK):]
    if short in vision:
      raise CheckpointError(f"tensor vision_model.{short} appears twice (under different prefixes, e.g. {k})")
    vision[short] = a
  if not vision:
    raise CheckpointError(f"no `vision_model.*` tensors found (got {len(tensors)} tensors, e.g. "
                          f"{sorted(tensors)[:3]})")
  return vision, sorted(ignored)


def hf_to_params(cfg, tensors: dict) -> tuple[dict, list[str]]:
  """HF state dict (numpy) -> (nested pure dict of our params, ignored tensor names)."""
  vision, ignored = split_vision(tensors)
  table, by_name = name_table(cfg), expected_shapes(cfg)
  params = tensors_to_params(table, vision, {path: by_name[name] for name, path, _ in table}, what="SigLIP vision",
                             prefix=MARK, any_float=True, hint=_head_hint)
  return params, ignored


def _head_hint(missing: list[str]) -> str:
  """Headless SigLIP exports are common; say which switch loads them."""
  return (" (set use_head=False for a checkpoint without the pooling head)"
          if any(m.startswith("head.") for m in missing) else "")


def params_to_hf(cfg, params, prefix: str = MARK) -> dict[str, np.ndarray]:
  """Our params (nnx.State or pure dict) -> HF state dict (torch layouts, float32)."""
  return params_to_tensors(name_table(cfg), params, prefix)


def read_config(path: str, **overrides):
  """GazedViTConfig from an HF config.json file or a directory holding one."""
  if os.path.isdir(path):
    path = os.path.join(path, CONFIG_NAME)
  return read_json_config(path, lambda d: GazedViTConfig.from_hf_dict(d, **overrides), "SigLIP config")


def load(path: str, cfg=None):
  """A weights file (.safetensors / .npz) or a directory (config.json + model.safetensors) ->
  (cfg, graphdef, params State, ignored tensor names). `cfg` overrides the directory's config.json."""
  weights = path
  if os.path.isdir(path):
    weights = os.path.join(path, WEIGHTS_NAME)
    if cfg is None and os.path.isfile(os.path.join(path, CONFIG_NAME)):
      cfg = read_config(path)
  cfg = cfg or GazedViTConfig()
  tree, ignored = hf_to_params(cfg, read_weights(weights))
  graphdef, state = abstract_params(cfg)
  state.replace_by_pure_dict(jax.tree.map(jnp.asarray, tree))
  return cfg, graphdef, state, ignored


def save(path: str, cfg, params):
  """Write HF-named weights: `path` ending in .safetensors/.npz is a file; otherwise a directory
  with config.json + model.safetensors (metadata {"format": "pt"}), written atomically."""
  tensors = params_to_hf(cfg, params)
  if path.endswith(".npz"):
    np.savez(path, **tensors)
    return
  if not path.endswith(".safetensors"):
    os.makedirs(path, exist_ok=True)
    write_json(os.path.join(path, CONFIG_NAME), cfg.to_hf_dict())
    path = os.path.join(path, WEIGHTS_NAME)
  write_safetensors(path, tensors)
