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
from autogaze_jax.interop.common import (CONFIG_NAME, WEIGHTS_NAME, CheckpointError, read_json_config, read_safetensors,
                                        write_json, write_safetensors)

MARK = "vision_model."

_IDENT = (lambda a: a, lambda a: a)
_LINEAR = (lambda a: a.T, lambda a: a.T)                                   # (out,in) <-> (in,out)
# conv (D, C, p, p) <-> (C*p*p, D), rows in (c, ky, kx) order, as F.unfold / patches.multiscale_patches
_CONV = (lambda a: a.reshape(a.shape[0], -1).T, None)


def _linear_rows(hf: str, ours: tuple) -> list:
  return [(f"{hf}.weight", ours + ("kernel",), _LINEAR), (f"{hf}.bias", ours + ("bias",), _IDENT)]


def _ln_rows(hf: str, ours: tuple) -> list:
  return [(f"{hf}.weight", ours + ("scale",), _IDENT), (f"{hf}.bias", ours + ("bias",), _IDENT)]


def name_table(cfg) -> list:
  """[(HF name without the `vision_model.` prefix, our param path, (to_ours, to_torch))]."""
  rows = [("embeddings.patch_embedding.weight", ("embeddings", "patch_embedding", "kernel"), _CONV),
          ("embeddings.patch_embedding.bias", ("embeddings", "patch_embedding", "bias"), _IDENT),
          ("embeddings.position_embedding.weight", ("embeddings", "position_embedding"), _IDENT)]
  for i in range(cfg.num_hidden_layers):
    hf, me = f"encoder.layers.{i}.", ("layers", i)
    for p in ("q_proj", "k_proj", "v_proj", "out_proj"):
      rows += _linear_rows(hf + f"self_attn.{p}", me + ("self_attn", p))
    rows += _ln_rows(hf + "layer_norm1", me + ("layer_norm1",)) + _ln_rows(hf + "layer_norm2", me + ("layer_norm2",))
    rows += _linear_rows(hf + "mlp.fc1", me + ("mlp", "fc1")) + _linear_rows(hf + "mlp.fc2", me + ("mlp", "fc2"))
  rows += _ln_rows("post_layernorm", ("post_layernorm",))
  if cfg.use_head:
    h = ("head",)
    rows += [("head.probe", h + ("probe",), _IDENT),
             ("head.attention.in_proj_weight", h + ("attention", "in_proj", "kernel"), _LINEAR),
             ("head.attention.in_proj_bias", h + ("attention", "in_proj", "bias"), _IDENT)]
    rows += _linear_rows("head.attention.out_proj", h + ("attention", "out_proj"))
    rows += _ln_rows("head.layernorm", h + ("layernorm",))
    rows += _linear_rows("head.mlp.fc1", h + ("mlp", "fc1")) + _linear_rows("head.mlp.fc2", h + ("mlp", "fc2"))
  return rows


def expected_shapes(cfg) -> dict:
  """{HF name (no prefix): torch shape} for `cfg`."""
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
  table = name_table(cfg)
  expected = {n for n, _, _ in table}
  missing = sorted(expected - set(vision))
  unknown = sorted(set(vision) - expected)
  if missing or unknown:
    hint = " (set use_head=False for a checkpoint without the pooling head)" if any(
        m.startswith("head.") for m in missing) else ""
    raise CheckpointError(f"SigLIP vision tensors do not match the config: missing "
                          f"{[MARK + m for m in missing]}, unexpected {[MARK + u for u in unknown]}{hint}")
  shapes = expected_shapes(cfg)
  out: dict = {}
  for name, path, (to_ours, _) in table:
    arr = np.asarray(vision[name])
    if tuple(arr.shape) != shapes[name]:
      raise CheckpointError(f"tensor {MARK}{name} has shape {tuple(arr.shape)}, the config expects {shapes[name]}")
    if not np.issubdtype(arr.dtype, np.floating) and arr.dtype.name != "bfloat16":
      raise CheckpointError(f"tensor {MARK}{name} has dtype {arr.dtype}, expected a float type")
    node = out
    for k in path[:-1]:
      node = node.setdefault(k, {})
    node[path[-1]] = np.ascontiguousarray(to_ours(arr.astype(np.float32)))
  return out, ignored


def params_to_hf(cfg, params, prefix: str = MARK) -> dict[str, np.ndarray]:
  """Our params (nnx.State or pure dict) -> HF state dict (torch layouts, float32)."""
  if not isinstance(params, dict):
    params = params.to_pure_dict()
  out = {}
  c, p = cfg.num_channels, cfg.patch_size
  for name, path, (_, to_torch) in name_table(cfg):
    node = params
    for k in path:
      node = node[k]
    a = np.asarray(node, np.float32)
    if name == "embeddings.patch_embedding.weight":
      a = a.T.reshape(cfg.hidden_size, c, p, p)
    else:
      a = to_torch(a)
    out[prefix + name] = np.ascontiguousarray(a)
  return out


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
