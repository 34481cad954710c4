"""`config.model` (configs/common.py:model_config) -> the GazeConfig a training run builds and exports.

The block holds the size (default | tiny), architecture overrides of that size (0 / "" = the size's
value) and the sampling configs under their official config.json names (docs/sampling.md). Every bad
value is a ConfigError naming its `config.model.<key>`.
"""
from __future__ import annotations

import dataclasses
import re

from autogaze_jax.gaze.config import GazeConfig, tiny_config
from autogaze_jax.gaze.sampling import SamplingConfig, SamplingError
from autogaze_jax.interop.common import CheckpointError, resolve_checkpoint_dir
from autogaze_jax.interop.gaze import HUB_FILES, read_config
from autogaze_jax.train.state import ConfigError

# config.model key -> the GazeConfig field(s) it sets (and the name GazeConfig's own checks use)
ARCH_KEYS = {
    "scales": ("scales",),
    "num_vision_tokens_each_frame": ("num_vision_tokens_each_frame",),
    "max_num_frames": ("max_num_frames",),
    "input_img_size": ("input_img_size",),
    "num_multi_token_pred": ("decoder.num_multi_token_pred",),
    "vision_hidden_dim": ("vision.hidden_dim",),
    "vision_depth": ("vision.depth",),
    "vision_kernel_size": ("vision.kernel_size",),
    # the official connector has no projection: one width for the vision output, connector and decoder
    "hidden_size": ("decoder.hidden_size", "vision.out_dim", "connector_hidden_dim"),
    "num_hidden_layers": ("decoder.num_hidden_layers",),
    "num_attention_heads": ("decoder.num_attention_heads", "decoder.num_key_value_heads"),
    "head_dim": ("decoder.head_dim",),
    "intermediate_size": ("decoder.intermediate_size",),
}
SAMPLING_KEYS = ("gazing_ratio_config", "gazing_ratio_each_frame_config", "task_loss_requirement_config",
                 "has_task_loss_requirement_during_training", "has_task_loss_requirement_during_inference")


def overrides(model) -> dict[str, object]:
  """The architecture keys of `config.model` that are set (non-zero / non-empty), parsed."""
  out = {}
  for key in ARCH_KEYS:
    v = model.get(key, 0)
    if key == "scales":
      v = str(v).strip()
      if v:
        try:
          v = tuple(sorted(int(s) for s in v.split("+")))
        except ValueError:
          raise ConfigError(f"config.model.scales = {model.scales!r}: expected sizes joined by '+' "
                            "(e.g. 32+64+112+224 or 224)") from None
        out[key] = v
    elif v:
      if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ConfigError(f"config.model.{key} = {v!r}: expected a positive integer (0 = the size's value)")
      out[key] = v
  return out


def sampling_config(model) -> SamplingConfig:
  """The block's sampling dicts (official keys; dirichlet.alpha "0.5" or "10,3,...") -> SamplingConfig."""
  d = {k: (model[k].to_dict() if hasattr(model[k], "to_dict") else model[k]) for k in SAMPLING_KEYS if k in model}
  alpha = d.get("gazing_ratio_each_frame_config", {}).get("dirichlet", {}).get("alpha")
  if isinstance(alpha, str) and "," not in alpha:
    try:
      d["gazing_ratio_each_frame_config"]["dirichlet"]["alpha"] = float(alpha)  # written as the official float
    except ValueError:
      pass  # SamplingConfig names the key
  try:
    return SamplingConfig.from_official_dict(d)
  except SamplingError as e:
    raise ConfigError(f"config.model.{e}") from None


def _apply(cfg: GazeConfig, values: dict[str, object]) -> GazeConfig:
  """Set the architecture fields (nested vision./decoder. ones through their own dataclasses)."""
  top, vision, decoder = {}, {}, {}
  for key, v in values.items():
    for field in ARCH_KEYS[key]:
      part, _, name = field.rpartition(".")
      {"": top, "vision": vision, "decoder": decoder}[part][name or field] = v
  return dataclasses.replace(cfg, vision=dataclasses.replace(cfg.vision, **vision),
                             decoder=dataclasses.replace(cfg.decoder, **decoder), **top)


def gaze_config(config) -> GazeConfig:
  """The run's GazeConfig (see `_gaze_config`), with the clip length checked against a per-frame alpha."""
  cfg = _gaze_config(config)
  f = cfg.sampling.frame
  if "dirichlet" in (f.during_training, f.during_inference):
    try:
      f.alpha(cfg.max_num_frames)
    except SamplingError as e:
      raise ConfigError(f"config.model.{e} (max_num_frames = {cfg.max_num_frames})") from None
  return cfg


def _gaze_config(config) -> GazeConfig:
  """The run's GazeConfig: the size's (or, with `model.init`, the checkpoint's) architecture with the
  block's overrides, its dtype and its sampling configs. With `model.init` an override must equal the
  checkpoint's value (its weights fix the architecture)."""
  m = config.model
  if m.size not in ("default", "tiny"):
    raise ConfigError(f"config.model.size = {m.size!r}: choose default or tiny")
  values = overrides(m)
  sampling = sampling_config(m)
  if m.get("init"):
    try:
      base = read_config(resolve_checkpoint_dir(m.init, allow_patterns=HUB_FILES, what="config.model.init"))
    except CheckpointError as e:
      raise ConfigError(f"config.model.init = {m.init!r}: {e}") from None
    for key, v in values.items():
      have = _get(base, ARCH_KEYS[key][0])
      if have != v:
        raise ConfigError(f"config.model.{key} = {v!r} differs from the checkpoint config.model.init = {m.init!r} "
                          f"({have!r}); leave it at 0/'' to use the checkpoint's architecture")
    return base.replace(dtype=m.dtype, sampling=sampling)
  base = tiny_config() if m.size == "tiny" else GazeConfig()
  try:
    return _apply(base, values).replace(dtype=m.dtype, sampling=sampling)
  except ValueError as e:
    raise ConfigError(f"config.model.{_key_of(str(e), values)}: {e}") from None


def _get(cfg, field: str):
  for part in field.split("."):
    cfg = getattr(cfg, part)
  return cfg


def _key_of(message: str, values: dict) -> str:
  """The config.model key behind a GazeConfig check (`GazeConfig.<field> = ...`): the set key whose
  field the message names first, else every set key (a combination of them is invalid)."""
  m = re.match(r"\w+\.([\w./]+) = ", message)
  named = m.group(1).split("/") if m else []
  for key in values:
    if any(f in named for f in ARCH_KEYS[key]):
      return key
  return "/".join(values) or "size"
