"""Official VideoMAE task-model weights <-> our params.

Reads HF `ViTMAEForPreTraining` names (`vit.*`, `decoder.*`, as in `tests/fixtures/videomae_tiny`)
from safetensors; the official trainer's `videomae.pt` (`convert_task_checkpoint`) goes through the
restricted pickle reader of `torch_pickle`, never the stock unpickler. An optional `module.` (DDP)
and/or `mae.` prefix (`VideoMAEReconstruction.mae`) is stripped. Tensors of the bundled perceptual
nets (`dinov2_reg.*`, `siglip2.*`) are returned separately, never silently dropped. Missing, unexpected, mis-shaped or
non-float32 tensors raise `CheckpointError` naming them (the official loader uses strict=False, which
would load nothing on a prefix mismatch). Export writes the same names and torch layouts with
`{"format": "pt"}` metadata; load -> save -> load is bit-exact.
"""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np

from autogaze_jax.interop import siglip
from autogaze_jax.core.atomic_files import write_json
from autogaze_jax.interop.common import (CONFIG_NAME, CONV2D_OIHW, IDENT, WEIGHTS_NAME, CheckpointError, Row,
                                        layernorm_rows, params_to_tensors, read_json_config, read_safetensors,
                                        tensors_to_params, torch_shapes, weight_bias_rows,
                                        write_safetensors)
from autogaze_jax.interop.torch_pickle import read_torch_state_dict
from autogaze_jax.judge import perceptual as perc
from autogaze_jax.judge.config import VideoMAEConfig
from autogaze_jax.judge.model import abstract_params
from autogaze_jax.vit.model import GazedViTConfig

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


# ---------------------------------------------------------------- the official task checkpoint (videomae.pt)
# What `VideoMAEReconstruction.__init__` passes to `from_pretrained` on top of the backbone's config.json
# (its defaults, and the loss overrides of the official RL recipe).
TASK_OVERRIDES = {"scales": "32+64+112+224", "scale_embed": True, "time_embed": True, "max_num_frames": 256,
                  "causal": True, "loss_type": "l1+dinov2_reg+siglip2", "loss_weights": "1+0.3+0.3"}
TASK_DEFAULTS = {"l1_loss_config": None, "dinov2_reg_loss_config": {"model": "facebook/dinov2-with-registers-base"},
                 "siglip2_loss_config": {"model": "google/siglip2-base-patch16-224"}}
DDP_PREFIX, TASK_PREFIX = "module.", "mae."
PERCEPTUAL_CONFIG = "{}_config.json"      # in the judge dir: the HF config.json of a bundled perceptual net


def split_task_state_dict(tensors: dict) -> tuple[dict, dict]:
  """`Trainer.save_checkpoint` state dict (`module.mae.*`) -> (VideoMAE tensors by official name,
  {"dinov2_reg": {HF name: tensor}, "siglip2": {...}}). Every key must carry both prefixes: without
  `module.` the official loader (DDP, strict=False) would silently load nothing."""
  if not tensors:
    raise CheckpointError("the task checkpoint holds no tensors")
  lacking = sorted(k for k in tensors if not k.startswith(DDP_PREFIX))
  if lacking:
    raise CheckpointError(
        f"{len(lacking)} of {len(tensors)} keys lack the DDP prefix {DDP_PREFIX!r} (e.g. {lacking[:3]}): not a "
        f"Trainer.save_checkpoint task state dict; the official trainer (DDP, strict=False) would load nothing")
  outside = sorted(k for k in tensors if not k.startswith(DDP_PREFIX + TASK_PREFIX))
  if outside:
    raise CheckpointError(f"unexpected tensors outside {DDP_PREFIX + TASK_PREFIX!r}: {outside}")
  cut = len(DDP_PREFIX + TASK_PREFIX)
  model, nets = {}, {t: {} for t in ("dinov2_reg", "siglip2")}
  for k, a in tensors.items():
    s = k[cut:]
    head = s.split(".", 1)[0]
    if head in nets:
      nets[head][s[len(head) + 1:]] = a
    else:
      model[s] = a
  return model, nets


def extractor_config(term: str, hf: dict | None) -> perc.ExtractorConfig:
  """An HF config.json dict of the perceptual net (None: the released base net) -> ExtractorConfig.
  Missing keys take the HF classes' defaults; unsupported variants raise CheckpointError."""
  if hf is None:
    return perc.DINOV2_REG_BASE if term == "dinov2_reg" else perc.SIGLIP2_BASE
  if term == "dinov2_reg":
    bad = {k: hf.get(k) for k, ok in (("hidden_act", "gelu"), ("use_swiglu_ffn", False), ("qkv_bias", True),
                                      ("num_channels", 3)) if hf.get(k, ok) != ok}
    if bad or hf.get("model_type", "dinov2_with_registers") != "dinov2_with_registers":
      raise CheckpointError(f"dinov2_reg config: only Dinov2WithRegisters with gelu, qkv bias, no SwiGLU, 3 channels "
                            f"is supported, got {bad or hf.get('model_type')}")
    d, ps = int(hf.get("hidden_size", 768)), int(hf.get("patch_size", 14))
    return perc.ExtractorConfig("dinov2_reg", hidden_size=d, num_layers=int(hf.get("num_hidden_layers", 12)),
                                num_heads=int(hf.get("num_attention_heads", 12)),
                                intermediate_size=int(d * hf.get("mlp_ratio", 4)), patch_size=ps,
                                num_registers=int(hf.get("num_register_tokens", 4)),
                                pos_grid=int(hf.get("image_size", 224)) // ps, eps=float(hf.get("layer_norm_eps", 1e-6)))
  v = _siglip_vision(hf)
  ps = int(v.get("patch_size", 16))
  return perc.ExtractorConfig("siglip2", hidden_size=int(v.get("hidden_size", 768)),
                              num_layers=int(v.get("num_hidden_layers", 12)),
                              num_heads=int(v.get("num_attention_heads", 12)),
                              intermediate_size=int(v.get("intermediate_size", 3072)), patch_size=ps, num_registers=0,
                              pos_grid=int(v.get("image_size", 224)) // ps, eps=float(v.get("layer_norm_eps", 1e-6)))



def bundled_perceptual(ckpt_dir: str, cfg: VideoMAEConfig, tensors: dict[str, np.ndarray]) -> dict:
  """{term: PerceptualNet} for each perceptual loss term of `cfg` whose tensors the checkpoint bundles
  (`dinov2_reg.*`, `siglip2.*`), sized by the dir's `<term>_config.json` when it has one (written by
  `convert_task_checkpoint`), else the released base nets."""
  nets = {}
  for term in ("dinov2_reg", "siglip2"):
    sub = {k: a for k, a in tensors.items() if k.startswith(term + ".")}
    if term not in cfg.loss_type or not sub:
      continue
    path = os.path.join(ckpt_dir, PERCEPTUAL_CONFIG.format(term))
    hf = read_json_config(path, lambda d: d, f"{term} config") if os.path.exists(path) else None
    nets[term] = perc.from_tensors(extractor_config(term, hf), sub)
  return nets

def _siglip_vision(hf: dict) -> dict:
  v = hf.get("vision_config", hf)
  if v.get("hidden_act", "gelu_pytorch_tanh") != "gelu_pytorch_tanh" or v.get("num_channels", 3) != 3:
    raise CheckpointError(f"siglip2 config: only gelu_pytorch_tanh with 3 channels is supported, got "
                          f"{v.get('hidden_act')}, {v.get('num_channels')} channels")
  return v


def perceptual_state_shapes(term: str, ecfg: perc.ExtractorConfig, hf: dict | None = None) -> dict[str, tuple]:
  """The full HF state dict of a perceptual net (what `state_dict()` saves, unused tensors included):
  {name: torch shape}."""
  d = ecfg.hidden_size
  if term == "dinov2_reg":
    return {**perc.expected_shapes(ecfg), "embeddings.mask_token": (1, d), "layernorm.weight": (d,),
            "layernorm.bias": (d,)}
  use_head = bool(_siglip_vision(hf).get("vision_use_head", True)) if hf else True
  vcfg = GazedViTConfig(hidden_size=d, intermediate_size=ecfg.intermediate_size, num_hidden_layers=ecfg.num_layers,
                        num_attention_heads=ecfg.num_heads, image_size=ecfg.pos_grid * ecfg.patch_size,
                        patch_size=ecfg.patch_size, layer_norm_eps=ecfg.eps, scales=(ecfg.pos_grid * ecfg.patch_size,),
                        use_head=use_head)
  return {siglip.MARK + k: s for k, s in siglip.expected_shapes(vcfg).items()}


def check_perceptual(term: str, tensors: dict, shapes: dict[str, tuple], prefix: str) -> None:
  """Strict: exactly the names of `shapes`, those shapes, float32; errors spell names with `prefix`."""
  missing, unknown = sorted(set(shapes) - set(tensors)), sorted(set(tensors) - set(shapes))
  if missing or unknown:
    names = lambda ks: f"{len(ks)} {[prefix + k for k in ks[:8]]}{' ...' if len(ks) > 8 else ''}"  # noqa: E731
    raise CheckpointError(f"{term} tensors do not match its config ({len(tensors)} given, {len(shapes)} expected): "
                          f"missing {names(missing)}, unexpected {names(unknown)} (a net of another size: give the "
                          f"converter its HF config dir)")
  for k, shape in shapes.items():
    a = tensors[k]
    if tuple(a.shape) != tuple(shape):
      raise CheckpointError(f"tensor {prefix}{k} has shape {tuple(a.shape)}, the {term} config expects {tuple(shape)}")
    if a.dtype != np.float32:
      raise CheckpointError(f"tensor {prefix}{k} has dtype {a.dtype}, expected float32")


def _object(d):
  if not isinstance(d, dict):
    raise ValueError(f"expected a JSON object, got {type(d).__name__}")
  return d


def _json_dict(path: str, what: str) -> dict:
  """A config.json file, or a directory holding one, as a dict."""
  if os.path.isdir(path):
    path = os.path.join(path, CONFIG_NAME)
  return read_json_config(path, _object, what)


def _hf_net(term: str, hf_dir: str | None) -> tuple[dict | None, dict | None]:
  """An HF net dir (config.json, optionally model.safetensors) -> (config dict, tensors or None)."""
  if not hf_dir:
    return None, None
  hf = _json_dict(hf_dir, f"{term} dir")
  weights = os.path.join(hf_dir, WEIGHTS_NAME) if os.path.isdir(hf_dir) else ""
  if not (weights and os.path.isfile(weights)):
    return hf, None
  tensors, _ = read_safetensors(weights)
  if term == "siglip2":   # the hub file is a whole SiglipModel: keep the vision tower
    tensors = {k: a for k, a in tensors.items() if k.startswith(siglip.MARK)}
  return hf, tensors


def convert_task_checkpoint(videomae_pt: str, config: str, out_dir: str, dinov2_reg: str | None = None,
                            siglip2: str | None = None, overrides: dict | None = None) -> dict:
  """Official `videomae.pt` (+ the backbone's config.json, file or dir) -> our official-format judge
  dir: config.json (`overrides`, default TASK_OVERRIDES, applied as the task does) + model.safetensors
  (`vit.*`, `decoder.*`, `dinov2_reg.*`, `siglip2.*`), loadable by `judge.load.load_judge`.

  `dinov2_reg` / `siglip2`: optional HF dirs of the perceptual nets. Their config.json sizes the net
  (default: the released base nets; a given one is copied to `<term>_config.json` in out_dir); their
  weights are bundled only where the .pt has none (as in the official task, the checkpoint's weights
  win). Everything is checked strictly: a .pt without `module.`, and every missing, unexpected,
  mis-shaped or non-float32 tensor raise CheckpointError. Returns {part: tensor count, ...}."""
  d = _json_dict(config, "VideoMAE config")
  for k, v in TASK_DEFAULTS.items():
    d.setdefault(k, v)
  d.update(TASK_OVERRIDES if overrides is None else overrides)
  try:
    cfg = VideoMAEConfig.from_official_dict(d)
  except ValueError as e:
    raise CheckpointError(f"{config}: {e}") from None
  model, nets = split_task_state_dict(read_torch_state_dict(videomae_pt))
  table = name_table(cfg)
  params = tensors_to_params(table, model, torch_shapes(table, abstract_params(cfg)[1].to_pure_dict()),
                             what="VideoMAE", prefix=DDP_PREFIX + TASK_PREFIX)
  perceptual, counts, hf_configs = {}, {"vit": 0, "decoder": 0}, {}
  for name in model:
    counts[name.split(".", 1)[0]] += 1
  for term, hf_dir in (("dinov2_reg", dinov2_reg), ("siglip2", siglip2)):
    hf, dir_tensors = _hf_net(term, hf_dir)
    ecfg = extractor_config(term, hf)
    pre = f"{DDP_PREFIX}{TASK_PREFIX}{term}."          # how the source file spells the names
    tensors, source = nets[term], f"{videomae_pt} ({pre}*)"
    if not tensors and dir_tensors is not None:
      tensors, source, pre = dir_tensors, os.path.join(hf_dir, WEIGHTS_NAME), ""
    if not tensors:
      if term in cfg.loss_type:
        raise CheckpointError(f"{videomae_pt} has no {term}.* tensors and no {term} HF dir with {WEIGHTS_NAME} was "
                              f"given, yet loss_type {'+'.join(cfg.loss_type)} needs them")
      continue
    check_perceptual(term, tensors, perceptual_state_shapes(term, ecfg, hf), pre)
    perc.from_tensors(ecfg, tensors)   # what load_judge will build: fail here, not there
    perceptual.update({f"{term}.{k}": a for k, a in tensors.items()})
    counts[term] = len(tensors)
    counts[term + "_source"] = source
    if hf is not None:
      hf_configs[term] = hf
  save_checkpoint(out_dir, cfg, params, perceptual)
  for term in ("dinov2_reg", "siglip2"):
    side = os.path.join(out_dir, PERCEPTUAL_CONFIG.format(term))
    if term in hf_configs:
      write_json(side, hf_configs[term])
    elif os.path.exists(side):
      os.remove(side)
  return counts
