"""Gaze-model configuration, 1:1 with the official `config.json`.

`GazeConfig` is a frozen (hashable) dataclass so it can be a static argument of jitted functions.
The fields that change the computation and the sampling configs (`gaze/sampling.py`: ratio, per-frame
ratio and task-loss requirement strategies) are typed; everything else of an official `config.json`
(generic HF keys) is carried verbatim in `raw_json` so that a load -> save round trip writes the same
file. Derived quantities (vocabulary, EOS id, tokens per scale) are properties,
computed the way the official constructors override them, never stored twice.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any

from autogaze_jax.core.config_base import ConfigBase
from autogaze_jax.gaze.sampling import SamplingConfig


@dataclasses.dataclass(frozen=True)
class VisionConfig:
  """`gaze_model_config.vision_model_config` (official `VisionModelConfig`)."""
  hidden_dim: int = 192
  out_dim: int = 192
  depth: int = 1
  kernel_size: int = 16
  temporal_patch_size: int = 1
  trunk_temporal_kernel_size: int = 3
  trunk_spatial_kernel_size: int = 3


@dataclasses.dataclass(frozen=True)
class DecoderConfig:
  """`gaze_model_config.gaze_decoder_config` (a LlamaConfig plus `num_multi_token_pred`)."""
  hidden_size: int = 192
  num_hidden_layers: int = 4
  num_attention_heads: int = 6
  num_key_value_heads: int = 6
  head_dim: int = 32
  intermediate_size: int = 384
  rms_norm_eps: float = 1e-5
  rope_theta: float = 500000.0
  # llama3 RoPE scaling: (factor, low_freq_factor, high_freq_factor, original_max_position_embeddings)
  rope_scaling: tuple[float, float, float, int] | None = (8.0, 1.0, 4.0, 8192)
  initializer_range: float = 0.02
  num_multi_token_pred: int = 10


@dataclasses.dataclass(frozen=True)
class GazeConfig(ConfigBase):
  """The whole AutoGaze model. Defaults = the released checkpoint (3,258,240 parameters)."""
  vision: VisionConfig = VisionConfig()
  decoder: DecoderConfig = DecoderConfig()
  connector_hidden_dim: int = 192
  scales: tuple[int, ...] = (32, 64, 112, 224)
  num_vision_tokens_each_frame: int = 265
  input_img_size: int = 224
  max_num_frames: int = 16
  # How a call without gazing_ratio / task_loss_requirement (and training) draws them; official defaults.
  # Host-side only: not part of equality/hash, so models that differ only here share compiled programs.
  sampling: SamplingConfig = dataclasses.field(default=SamplingConfig(), compare=False)
  # Compute dtype of the forward passes (params stay float32). Not part of config.json.
  dtype: str = "float32"
  # The official config.json this config was read from (verbatim), for a faithful re-export.
  raw_json: str = dataclasses.field(default="", compare=False, repr=False)

  def __post_init__(self):
    self._check_dtype()
    self._check(len(self.scales) >= 1 and list(self.scales) == sorted(self.scales), "scales", self.scales,
                "ascending sizes")
    self._check(self.vision.out_dim == self.connector_hidden_dim == self.decoder.hidden_size,
                "vision.out_dim/connector_hidden_dim/decoder.hidden_size",
                (self.vision.out_dim, self.connector_hidden_dim, self.decoder.hidden_size),
                "equal widths (the connector adds a position table and has no projection)")
    self._check(self.decoder.num_attention_heads * self.decoder.head_dim > 0, "decoder.head_dim",
                self.decoder.head_dim, "positive")
    self._check(self.decoder.num_key_value_heads == self.decoder.num_attention_heads,
                "decoder.num_key_value_heads", self.decoder.num_key_value_heads,
                "equal to num_attention_heads (the official decoder has no GQA)")
    self._check(self.decoder.head_dim % 2 == 0, "decoder.head_dim", self.decoder.head_dim, "even (RoPE)")
    # HF Llama allows heads * head_dim != hidden_size; our decoder's projections are square, so refuse it
    # here by name rather than fail in a reshape.
    self._check(self.decoder.num_attention_heads * self.decoder.head_dim == self.decoder.hidden_size,
                "decoder.head_dim", self.decoder.head_dim,
                f"hidden_size / num_attention_heads = {self.decoder.hidden_size} / "
                f"{self.decoder.num_attention_heads} (this port's attention projections are square)")
    self._check(1 <= self.decoder.num_multi_token_pred, "decoder.num_multi_token_pred",
                self.decoder.num_multi_token_pred, ">= 1")
    self._check(self.input_img_size % self.vision.kernel_size == 0, "input_img_size",
                self.input_img_size, f"a multiple of kernel_size {self.vision.kernel_size}")
    self._check(self.vision.temporal_patch_size == 1, "vision.temporal_patch_size",
                self.vision.temporal_patch_size, "1 (the only value the official model uses)")
    self._check(self.max_num_frames >= 1, "max_num_frames", self.max_num_frames, ">= 1")
    self._check(all(sc > 0 for sc in self.scales), "scales", self.scales, "positive sizes")
    self._check(all(math.isqrt(n) ** 2 == n and n > 0 for n in self.tokens_per_scale), "scales", self.scales,
                f"scales whose token counts {self.tokens_per_scale} (of num_vision_tokens_each_frame="
                f"{self.num_vision_tokens_each_frame}) are square grids")
    self._check(sum(self.tokens_per_scale) == self.num_vision_tokens_each_frame,
                "num_vision_tokens_each_frame", self.num_vision_tokens_each_frame,
                f"the sum of the per-scale token counts {self.tokens_per_scale}")

  # ---- derived, as the official constructors compute them ----
  @property
  def vocab_size(self) -> int:
    return self.num_vision_tokens_each_frame + 1

  @property
  def eos_token_id(self) -> int:
    return self.num_vision_tokens_each_frame

  @property
  def grid(self) -> int:
    """Vision tokens per side of a frame (224 // 16 = 14)."""
    return self.input_img_size // self.vision.kernel_size

  @property
  def num_frame_tokens(self) -> int:
    """Vision tokens per frame fed to the decoder (`connector.num_tokens`, 196)."""
    return self.grid ** 2

  @property
  def tokens_per_scale(self) -> tuple[int, ...]:
    """`int(s^2 / sum(s^2) * V)` per scale (official `AutoGaze.__init__`)."""
    tot = sum(s * s for s in self.scales)
    return tuple(int(s * s / tot * self.num_vision_tokens_each_frame) for s in self.scales)

  @property
  def grid_per_scale(self) -> tuple[int, ...]:
    return tuple(math.isqrt(n) for n in self.tokens_per_scale)

  @property
  def scale_offsets(self) -> tuple[int, ...]:
    out, acc = [], 0
    for n in self.tokens_per_scale:
      out.append(acc)
      acc += n
    return tuple(out)

  # ---- official config.json <-> GazeConfig ----
  @classmethod
  def from_official_dict(cls, d: dict[str, Any], **overrides) -> "GazeConfig":
    try:
      gm = d["gaze_model_config"]
      vm, cc, dc = gm["vision_model_config"], gm["connector_config"], gm["gaze_decoder_config"]
      rs = dc.get("rope_scaling")
      if rs is not None:
        if rs.get("rope_type", rs.get("type")) != "llama3":
          raise ValueError(f"config.json: gaze_decoder_config.rope_scaling.rope_type must be 'llama3', got {rs}")
        rs = (float(rs["factor"]), float(rs["low_freq_factor"]), float(rs["high_freq_factor"]),
              int(rs["original_max_position_embeddings"]))
      head_dim = dc.get("head_dim") or dc["hidden_size"] // dc["num_attention_heads"]
      cfg = cls(
          vision=VisionConfig(**{f.name: int(vm[f.name]) for f in dataclasses.fields(VisionConfig)}),
          decoder=DecoderConfig(
              hidden_size=int(dc["hidden_size"]), num_hidden_layers=int(dc["num_hidden_layers"]),
              num_attention_heads=int(dc["num_attention_heads"]),
              num_key_value_heads=int(dc.get("num_key_value_heads") or dc["num_attention_heads"]),
              head_dim=int(head_dim), intermediate_size=int(dc["intermediate_size"]),
              rms_norm_eps=float(dc["rms_norm_eps"]), rope_theta=float(dc["rope_theta"]),
              rope_scaling=rs, initializer_range=float(dc.get("initializer_range", 0.02)),
              num_multi_token_pred=int(dc.get("num_multi_token_pred", 1))),
          connector_hidden_dim=int(cc["hidden_dim"]),
          scales=tuple(sorted(int(s) for s in str(d["scales"]).split("+"))),
          num_vision_tokens_each_frame=int(d["num_vision_tokens_each_frame"]),
          input_img_size=int(gm.get("input_img_size", cls.input_img_size)),
          max_num_frames=int(d.get("max_num_frames") or cls.max_num_frames),
          sampling=SamplingConfig.from_official_dict(d),
          raw_json=json.dumps(d, sort_keys=True),
          **overrides)
    except KeyError as e:
      raise ValueError(f"config.json is missing the field {e.args[0]!r}") from None
    if d.get("model_type", "autogaze") != "autogaze":
      raise ValueError(f"config.json: model_type must be 'autogaze', got {d.get('model_type')!r}")
    return cfg

  def to_official_dict(self) -> dict[str, Any]:
    """The official `config.json` content: the loaded file (or the released default) with our fields."""
    d = json.loads(self.raw_json) if self.raw_json else default_official_config()
    d["scales"] = "+".join(str(s) for s in self.scales)
    d["num_vision_tokens_each_frame"] = self.num_vision_tokens_each_frame
    d["max_num_frames"] = self.max_num_frames
    gm = d["gaze_model_config"]
    gm["input_img_size"] = self.input_img_size
    gm["num_vision_tokens_each_frame"] = self.num_vision_tokens_each_frame
    gm["vision_model_config"].update(dataclasses.asdict(self.vision))
    gm["connector_config"].update(hidden_dim=self.connector_hidden_dim, num_tokens=self.num_frame_tokens)
    dec = self.decoder
    dc = gm["gaze_decoder_config"]
    dc.update({k: v for k, v in dataclasses.asdict(dec).items() if k != "rope_scaling"})
    dc["rope_scaling"] = None if dec.rope_scaling is None else {
        "factor": dec.rope_scaling[0], "low_freq_factor": dec.rope_scaling[1],
        "high_freq_factor": dec.rope_scaling[2], "original_max_position_embeddings": dec.rope_scaling[3],
        "rope_type": "llama3"}
    dc["vocab_size"] = self.vocab_size
    dc["eos_token_id"] = self.eos_token_id
    self.sampling.update_official_dict(d)
    return d


def default_official_config() -> dict:
  """config.json of the released model (official defaults + recipe overrides), shipped beside this file."""
  with open(os.path.join(os.path.dirname(__file__), "default_config.json")) as f:
    return json.load(f)


def tiny_config(**overrides) -> GazeConfig:
  """The `gaze_tiny` fixture's architecture (140,672 parameters): for tests and smoke runs."""
  return GazeConfig(
      vision=VisionConfig(hidden_dim=16, out_dim=32),
      decoder=DecoderConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                            num_key_value_heads=2, head_dim=16, intermediate_size=64,
                            initializer_range=0.2),
      connector_hidden_dim=32, **overrides)
