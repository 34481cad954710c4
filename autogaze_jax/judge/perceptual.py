"""Frozen perceptual feature extractors for the reconstruction loss.

DINOv2-with-registers (HF `Dinov2WithRegistersModel`) and SigLIP2 vision (HF `SiglipVisionModel`). They
are frozen judges, loaded from safetensors (a local path, or a hub id through huggingface_hub's cache);
a random init exists only for tests with tiny configs.

SigLIP2 is the gazed ViT's tower (vit/model.py) run on whole frames with bidirectional attention and no
pooling head, its params converted by interop/siglip.py: one SigLIP implementation, one name table.
DINOv2 has another embedding (cls + register tokens, a resized table), layer scales and exact GELU, so
it only shares the encoder layer (`core.layers.transformer_block`); its params stay a flat dict keyed by
the HF names (linear weights stored (in, out), conv weights HWIO).

`features(net, images)`: images (M,3,224,224) in the *task* space (ImageNet-normalised `x/127.5-1`)
-> (M, tokens, 4*width) = the last 4 `hidden_states` (before the final LayerNorm),
concatenated on channels; DINOv2 drops cls + registers. `PerceptualNet` is a pytree: arrays are
leaves, the config (and the ViT graph) static.

DINOv2's position table is resized 37x37 -> 16x16 by torch's *antialiased* bicubic (`antialias=True`,
a = -0.5, PIL-style support), `aa_bicubic_matrix`; the table, each net's input and its features equal the
official task's (tests/interop/test_convert.py, the `videomae_perceptual` fixture).
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from autogaze_jax.interop import siglip
from autogaze_jax.interop.common import CheckpointError, read_safetensors, resolve_checkpoint_dir
from autogaze_jax.core.layers import attend, dense, transformer_block
from autogaze_jax.vit.model import GazedViTConfig, abstract_params, plain_hidden_states
from autogaze_jax.gaze.preprocess import IMAGENET_MEAN as TASK_MEAN, IMAGENET_STD as TASK_STD  # the vit-mae preprocessor's


@dataclasses.dataclass(frozen=True)
class ExtractorConfig:
  kind: str                    # "dinov2_reg" | "siglip2"
  hidden_size: int = 768
  num_layers: int = 12
  num_heads: int = 12
  intermediate_size: int = 3072
  patch_size: int = 14
  num_registers: int = 4       # dinov2_reg only
  pos_grid: int = 37           # stored position table side (dinov2: 518/14; siglip: 224/16)
  eps: float = 1e-6
  image_size: int = 224        # input side (no resize)

  @property
  def grid(self) -> int:
    return self.image_size // self.patch_size


DINOV2_REG_BASE = ExtractorConfig("dinov2_reg")
SIGLIP2_BASE = ExtractorConfig("siglip2", patch_size=16, num_registers=0, pos_grid=14)


@flax.struct.dataclass
class PerceptualNet:
  cfg: ExtractorConfig = flax.struct.field(pytree_node=False)
  params: Any                    # dinov2_reg: {HF name: array}; siglip2: the gazed ViT's params (nnx.State)
  graphdef: Any = flax.struct.field(pytree_node=False, default=None)   # siglip2: the gazed ViT's graph


def _vit_config(cfg: ExtractorConfig) -> GazedViTConfig:
  """The gazed ViT that is SigLIP2's vision tower: one scale (the input size, so the frames are not
  resized), bidirectional attention, no pooling head. Its table side is `pos_grid`."""
  return GazedViTConfig(hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
                        num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
                        image_size=cfg.pos_grid * cfg.patch_size, patch_size=cfg.patch_size,
                        layer_norm_eps=cfg.eps, scales=(cfg.image_size,), attn_type="bidirectional",
                        use_head=False)


# ---------------------------------------------------------------- names
_DINOV2_LAYER = {"ln1": "norm1", "ln2": "norm2", "q": "attention.attention.query", "k": "attention.attention.key",
                 "v": "attention.attention.value", "o": "attention.output.dense", "fc1": "mlp.fc1", "fc2": "mlp.fc2"}


def expected_shapes(cfg: ExtractorConfig) -> dict[str, tuple]:
  """HF tensor name -> torch shape, for the tensors a net loads."""
  if cfg.kind == "siglip2":
    return {siglip.MARK + k: s for k, s in siglip.expected_shapes(_vit_config(cfg)).items()}
  d, f, p = cfg.hidden_size, cfg.intermediate_size, cfg.patch_size
  out = {"embeddings.cls_token": (1, 1, d), "embeddings.register_tokens": (1, cfg.num_registers, d),
         "embeddings.position_embeddings": (1, 1 + cfg.pos_grid ** 2, d),
         "embeddings.patch_embeddings.projection.weight": (d, 3, p, p),
         "embeddings.patch_embeddings.projection.bias": (d,)}
  for i in range(cfg.num_layers):
    n = {part: f"encoder.layer.{i}.{name}" for part, name in _DINOV2_LAYER.items()}
    for k in ("ln1", "ln2"):
      out[n[k] + ".weight"], out[n[k] + ".bias"] = (d,), (d,)
    for k in ("q", "k", "v", "o"):
      out[n[k] + ".weight"], out[n[k] + ".bias"] = (d, d), (d,)
    out[n["fc1"] + ".weight"], out[n["fc1"] + ".bias"] = (f, d), (f,)
    out[n["fc2"] + ".weight"], out[n["fc2"] + ".bias"] = (d, f), (d,)
    out[f"encoder.layer.{i}.layer_scale1.lambda1"] = (d,)
    out[f"encoder.layer.{i}.layer_scale2.lambda1"] = (d,)
  return out


# Tensors of the HF checkpoints that the features never use (heads, the final norm, mask token).
_UNUSED = {"dinov2_reg": ("embeddings.mask_token", "layernorm."), "siglip2": (siglip.MARK + "head.",)}
_STRIP = {"dinov2_reg": ("module.", "mae.", "dinov2_reg."), "siglip2": ("module.", "mae.", "siglip2.")}


def from_tensors(cfg: ExtractorConfig, tensors: dict[str, np.ndarray]) -> PerceptualNet:
  """HF state dict (numpy, torch layouts) -> PerceptualNet; names missing/unexpected/mis-shaped tensors."""
  clean = {}
  for k, a in tensors.items():
    for p in _STRIP[cfg.kind]:
      if k.startswith(p):
        k = k[len(p):]
    if not k.startswith(_UNUSED[cfg.kind]):
      clean[k] = a
  if cfg.kind == "siglip2":
    vcfg = _vit_config(cfg)
    tree, ignored = siglip.hf_to_params(vcfg, clean)
    if ignored:
      raise CheckpointError(f"siglip2 tensors do not match the config: unexpected {ignored}")
    graphdef, state = abstract_params(vcfg)
    state.replace_by_pure_dict(jax.tree.map(jnp.asarray, tree))
    return PerceptualNet(cfg, state, graphdef)
  want = expected_shapes(cfg)
  missing, unknown = sorted(set(want) - set(clean)), sorted(set(clean) - set(want))
  if missing or unknown:
    raise CheckpointError(f"{cfg.kind} tensors do not match the config: missing {missing}, unexpected {unknown}")
  params = {}
  for k, shape in want.items():
    a = np.asarray(clean[k], np.float32)
    if a.shape != shape:
      raise CheckpointError(f"{cfg.kind} tensor {k} has shape {a.shape}, expected {shape}")
    if a.ndim == 4:
      a = a.transpose(2, 3, 1, 0)                       # OIHW -> HWIO
    elif a.ndim == 2:
      a = a.T                                           # (out,in) -> (in,out)
    params[k] = jnp.asarray(a)
  # constant: the stored table resized once to this input size
  params["embeddings.position_embeddings"] = jnp.asarray(_dinov2_pos(cfg, np.asarray(clean[
      "embeddings.position_embeddings"], np.float32)))
  return PerceptualNet(cfg, params)


def load(cfg: ExtractorConfig, path: str) -> PerceptualNet:
  """Safetensors file, directory holding model.safetensors, or hub id ('facebook/dinov2-with-registers-base',
  'org/name@revision', through the huggingface_hub cache) -> PerceptualNet."""
  path = resolve_checkpoint_dir(path, allow_patterns=("config.json", "model.safetensors"),
                                what=f"{cfg.kind} weights")
  if os.path.isdir(path):
    path = os.path.join(path, "model.safetensors")
  tensors, _ = read_safetensors(path)
  return from_tensors(cfg, tensors)


def random_tensors(cfg: ExtractorConfig, seed: int = 0, std: float = 0.2) -> dict[str, np.ndarray]:
  """HF-named random tensors (torch layouts): for tests of tiny configs only."""
  rng = np.random.default_rng(seed)
  out = {}
  for k, shape in expected_shapes(cfg).items():
    a = rng.normal(0.0, std, shape)
    if k.endswith(("ln1.weight", "norm1.weight", "norm2.weight", "layer_norm1.weight", "layer_norm2.weight")):
      a = 1.0 + a
    out[k] = a.astype(np.float32)
  return out


# ---------------------------------------------------------------- resize (torch antialias bicubic)
def aa_bicubic_matrix(in_size: int, out_size: int) -> np.ndarray:
  """(out, in) weights of torch `interpolate(mode="bicubic", antialias=True, align_corners=False)`.

  ATen `_compute_indices_min_size_weights_aa`: support = 2*scale when downscaling, kernel a = -0.5,
  taps [int(center - support + .5), int(center + support + .5)) clipped, weights normalised.
  """
  def filt(x):
    x = abs(x)
    a = -0.5
    if x < 1:
      return ((a + 2) * x - (a + 3)) * x * x + 1
    if x < 2:
      return (((x - 5) * x + 8) * x - 4) * a
    return 0.0

  scale = in_size / out_size
  support = 2.0 * scale if scale >= 1 else 2.0
  inv = 1.0 / scale if scale >= 1 else 1.0
  w = np.zeros((out_size, in_size), np.float64)
  for i in range(out_size):
    center = scale * (i + 0.5)
    lo = max(int(center - support + 0.5), 0)
    hi = min(int(center + support + 0.5), in_size)
    ws = np.array([filt((j + lo - center + 0.5) * inv) for j in range(hi - lo)])
    w[i, lo:hi] = ws / ws.sum()
  return w.astype(np.float32)


def _dinov2_pos(cfg: ExtractorConfig, table: np.ndarray) -> np.ndarray:
  """(1, 1+P, D) stored table -> (1, 1+grid^2, D) for this input size (identity when it matches)."""
  g, s, d = cfg.grid, cfg.pos_grid, table.shape[-1]
  if g == s:
    return table
  patch = table[0, 1:].reshape(s, s, d)
  m = aa_bicubic_matrix(s, g).astype(np.float64)
  patch = np.einsum("ih,jw,hwd->ijd", m, m, patch.astype(np.float64)).reshape(1, g * g, d)
  return np.concatenate([table[:, :1], patch.astype(np.float32)], axis=1)


# ---------------------------------------------------------------- forward
def to_input(kind: str, z: jax.Array) -> jax.Array:
  """Task space -> the extractor's input space (official `retransform`, no resize)."""
  mean = jnp.asarray(TASK_MEAN, jnp.float32)[:, None, None]
  std = jnp.asarray(TASK_STD, jnp.float32)[:, None, None]
  v = (z * std + mean + 1.0) * 127.5 / 255.0                      # pixels in [0, 1]
  if kind == "dinov2_reg":
    return (v - mean) / std
  return (v - 0.5) / 0.5


def features(net: PerceptualNet, images: jax.Array, dtype=jnp.float32) -> jax.Array:
  """images (M,3,H,W) task space -> (M, tokens, 4*width) float32 (see module docstring)."""
  cfg = net.cfg
  x = to_input(cfg.kind, images.astype(jnp.float32))
  if cfg.kind == "siglip2":
    vcfg = _vit_config(cfg).replace(dtype=jnp.dtype(dtype).name)
    hidden = plain_hidden_states(vcfg, nnx.merge(net.graphdef, net.params), x[:, None])
    drop = 0
  else:
    hidden = _dinov2_hidden_states(cfg, net.params, x, dtype)
    drop = 1 + cfg.num_registers
  return jnp.concatenate([t[:, drop:] for t in hidden[-4:]], axis=-1)


def _dinov2_hidden_states(cfg: ExtractorConfig, p: dict, x: jax.Array, dtype) -> list[jax.Array]:
  """HF `hidden_states` of DINOv2-with-registers on x (M,3,H,W) in its input space: [embeddings
  (cls, registers, patches), after layer 1, ..., after layer L], float32."""
  m, g, ps, d = x.shape[0], cfg.grid, cfg.patch_size, cfg.hidden_size
  patches = x.reshape(m, 3, g, ps, g, ps).transpose(0, 2, 4, 3, 5, 1).reshape(m, g * g, ps * ps * 3)
  w, b = p["embeddings.patch_embeddings.projection.weight"], p["embeddings.patch_embeddings.projection.bias"]
  tok = dense(patches.astype(dtype), w.reshape(-1, d), b).astype(jnp.float32)
  pos = p["embeddings.position_embeddings"]
  cls = jnp.broadcast_to(p["embeddings.cls_token"] + pos[:, :1], (m, 1, d))
  reg = jnp.broadcast_to(p["embeddings.register_tokens"], (m, cfg.num_registers, d))
  hidden = [jnp.concatenate([cls, reg, tok + pos[:, 1:]], axis=1)]
  full = lambda q, k, v: attend(q, k, v, jnp.ones((q.shape[0], q.shape[1], k.shape[1]), bool))  # noqa: E731
  for i in range(cfg.num_layers):
    n = f"encoder.layer.{i}."
    w = {part: (p[n + name + ".weight"], p[n + name + ".bias"]) for part, name in _DINOV2_LAYER.items()}
    w.update(ls1=p[n + "layer_scale1.lambda1"], ls2=p[n + "layer_scale2.lambda1"])
    hidden.append(transformer_block(w, hidden[-1], full, heads=cfg.num_heads, eps=cfg.eps, dtype=dtype,
                                    tanh_gelu=False))
  return hidden


def feature_loss(net: PerceptualNet, pred: jax.Array, target: jax.Array, dtype=jnp.float32,
                 target_features: jax.Array | None = None) -> jax.Array:
  """pred/target (M,3,H,W) task space -> (M,) mean squared feature difference (official
  `dinov2_reg_loss` / `siglip2_loss`). Target features carry no gradient; `target_features` (M or 1,
  tokens, F): the target's `features`, when the caller scores many predictions against one target."""
  f_hat = features(net, pred, dtype)
  f = jax.lax.stop_gradient(features(net, target, dtype) if target_features is None else target_features)
  return jnp.mean(jnp.square(f_hat - f), axis=(-1, -2))


def load_from_config(vcfg) -> dict[str, PerceptualNet]:
  """{term: net} for each perceptual term of `vcfg.loss_type` whose weights path is set; terms
  without a path are left out (`losses.frame_losses` logs that they are skipped)."""
  out = {}
  for term, path, cfg in (("dinov2_reg", vcfg.dinov2_reg_weights, DINOV2_REG_BASE),
                          ("siglip2", vcfg.siglip2_weights, SIGLIP2_BASE)):
    if term in vcfg.loss_type and path:
      out[term] = load(cfg, path)
  return out

