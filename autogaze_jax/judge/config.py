"""VideoMAE task-model configuration, 1:1 with the official `config.json`.

`VideoMAEConfig` is a frozen (hashable) dataclass, usable as a static argument of jitted functions.
Typed fields are the ones that change the computation; the rest of an official `config.json` is kept
verbatim in `raw_json` so load -> save writes the same file. Fields below the `# ours` line are not in
`config.json` (compute dtype, remat, attention chunking, local perceptual-net weights).

`VideoMAEConfig()` is the official task model: HF `facebook/vit-mae-large` plus the task yaml
overrides (scales 32+64+112+224, scale/time embeddings, 256 frames, causal, l1+dinov2_reg+siglip2 with
weights 1+0.3+0.3). `tiny_videomae_config()` is the `tests/fixtures/videomae_tiny` architecture.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Any

from autogaze_jax.core.config_base import ConfigBase

REMAT = ("none", "block", "dots")          # jax.checkpoint per transformer block: off / full / save matmuls
ATTN_IMPLS = ("auto", "flash", "dot_product")    # see core/flash_attention.py, judge/segment_attention.py
LOSS_TERMS = ("l1", "dinov2_reg", "siglip2")



class JudgeTermsError(ValueError):
  """A loss term of the judge's config has no weights (neither bundled nor a configured path)."""

@dataclasses.dataclass(frozen=True)
class VideoMAEConfig(ConfigBase):
  hidden_size: int = 1024
  num_hidden_layers: int = 24
  num_attention_heads: int = 16
  intermediate_size: int = 4096
  decoder_hidden_size: int = 512
  decoder_num_hidden_layers: int = 8
  decoder_num_attention_heads: int = 16
  decoder_intermediate_size: int = 2048
  patch_size: int = 16
  image_size: int = 224
  num_channels: int = 3
  qkv_bias: bool = True
  layer_norm_eps: float = 1e-12
  hidden_act: str = "gelu"
  initializer_range: float = 0.02
  scales: tuple[int, ...] = (32, 64, 112, 224)
  scale_embed: bool = True
  time_embed: bool = True
  max_num_frames: int = 256
  causal: bool = True
  loss_type: tuple[str, ...] = ("l1", "dinov2_reg", "siglip2")
  loss_weights: tuple[float, ...] = (1.0, 0.3, 0.3)
  # ours (not in config.json)
  dtype: str = "float32"          # compute dtype; params, LayerNorm, softmax and losses stay float32
  remat: str = "none"             # per transformer block, see REMAT
  attn_impl: str = "auto"         # auto = "flash" (tiled, causal tiles skipped) on CPU, "dot_product" (fused
                                  # cuDNN/TPU kernels) on accelerators; see `resolved_attn_impl`
  attn_block: int = 264           # flash tile (264 beats 128/256 on CPU)
  dinov2_reg_weights: str = ""    # local HF safetensors of dinov2-with-registers-base ("" = skip the term)
  siglip2_weights: str = ""       # local HF safetensors of siglip2-base-patch16-224 vision ("" = skip)
  raw_json: str = dataclasses.field(default="", compare=False, repr=False)

  @property
  def resolved_attn_impl(self) -> str:
    if self.attn_impl != "auto":
      return self.attn_impl
    import jax
    return "flash" if jax.default_backend() == "cpu" else "dot_product"

  def __post_init__(self):
    self._check_dtype()
    self._check(self.remat in REMAT, "remat", self.remat, f"one of {REMAT}")
    self._check(self.attn_impl in ATTN_IMPLS, "attn_impl", self.attn_impl, f"one of {ATTN_IMPLS}")
    self._check(self.attn_block >= 1, "attn_block", self.attn_block, ">= 1")
    self._check(self.hidden_act == "gelu", "hidden_act", self.hidden_act, "'gelu' (exact erf GELU)")
    self._check(self.hidden_size % self.num_attention_heads == 0, "num_attention_heads",
                self.num_attention_heads, f"a divisor of hidden_size {self.hidden_size}")
    self._check(self.decoder_hidden_size % self.decoder_num_attention_heads == 0, "decoder_num_attention_heads",
                self.decoder_num_attention_heads, f"a divisor of decoder_hidden_size {self.decoder_hidden_size}")
    self._check(list(self.scales) == sorted(self.scales) and all(s % self.patch_size == 0 for s in self.scales),
                "scales", self.scales, f"ascending multiples of patch_size {self.patch_size}")
    self._check(self.scales[-1] == self.image_size, "scales", self.scales,
                f"largest scale == image_size {self.image_size} (only it is reconstructed)")
    self._check(len(self.loss_type) == len(self.loss_weights), "loss_weights", self.loss_weights,
                f"one weight per loss term {self.loss_type}")
    self._check(all(t in LOSS_TERMS for t in self.loss_type), "loss_type", self.loss_type, f"terms of {LOSS_TERMS}")

  # ---- derived ----
  @property
  def grid(self) -> int:
    return self.image_size // self.patch_size

  @property
  def tokens_per_scale(self) -> tuple[int, ...]:
    return tuple((s // self.patch_size) ** 2 for s in self.scales)

  @property
  def tokens_per_frame(self) -> int:
    """V = 265 for the official scales."""
    return sum(self.tokens_per_scale)

  @property
  def scale_offsets(self) -> tuple[int, ...]:
    return tuple(sum(self.tokens_per_scale[:i]) for i in range(len(self.scales)))

  @property
  def patch_dim(self) -> int:
    return self.patch_size ** 2 * self.num_channels

  # ---- official config.json <-> VideoMAEConfig ----
  _INT = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "decoder_hidden_size",
          "decoder_num_hidden_layers", "decoder_num_attention_heads", "decoder_intermediate_size", "patch_size",
          "image_size", "num_channels", "max_num_frames")

  @classmethod
  def from_official_dict(cls, d: dict[str, Any], **overrides) -> "VideoMAEConfig":
    if d.get("model_type", "vit_mae") != "vit_mae":
      raise ValueError(f"config.json: model_type must be 'vit_mae', got {d.get('model_type')!r}")
    try:
      kw = {k: int(d[k]) for k in cls._INT}
      kw.update(qkv_bias=bool(d.get("qkv_bias", True)), layer_norm_eps=float(d["layer_norm_eps"]),
                hidden_act=str(d.get("hidden_act", "gelu")),
                initializer_range=float(d.get("initializer_range", 0.02)),
                scales=tuple(sorted(int(s) for s in str(d["scales"]).split("+"))),
                scale_embed=bool(d.get("scale_embed", False)), time_embed=bool(d.get("time_embed", False)),
                causal=bool(d.get("causal", False)),
                loss_type=tuple(str(d.get("loss_type", "l1")).split("+")),
                loss_weights=tuple(float(w) for w in str(d.get("loss_weights", "1")).split("+")))
    except KeyError as e:
      raise ValueError(f"config.json is missing the field {e.args[0]!r}") from None
    kw.update(overrides)
    return cls(raw_json=json.dumps(d, sort_keys=True), **kw)

  def to_official_dict(self) -> dict[str, Any]:
    d = json.loads(self.raw_json) if self.raw_json else {
        "architectures": ["ViTMAEForPreTraining"], "model_type": "vit_mae", "attention_probs_dropout_prob": 0.0,
        "hidden_dropout_prob": 0.0, "mask_ratio": 0.75, "norm_pix_loss": False, "torch_dtype": "float32",
        "dinov2_reg_loss_config": {"model": "facebook/dinov2-with-registers-base"},
        "siglip2_loss_config": {"model": "google/siglip2-base-patch16-224"}, "l1_loss_config": None}
    for k in self._INT:
      d[k] = getattr(self, k)
    d.update(qkv_bias=self.qkv_bias, layer_norm_eps=self.layer_norm_eps, hidden_act=self.hidden_act,
             initializer_range=self.initializer_range, scales="+".join(str(s) for s in self.scales),
             scale_embed=self.scale_embed, time_embed=self.time_embed, causal=self.causal,
             loss_type="+".join(self.loss_type), loss_weights="+".join(_fmt(w) for w in self.loss_weights))
    return d


def _fmt(w: float) -> str:
  return str(int(w)) if float(w).is_integer() else repr(float(w))


def tiny_videomae_config(**overrides) -> VideoMAEConfig:
  """`tests/fixtures/videomae_tiny` (114,624 parameters, l1 only)."""
  kw = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
            decoder_hidden_size=32, decoder_num_hidden_layers=2, decoder_num_attention_heads=2,
            decoder_intermediate_size=64, initializer_range=0.2, loss_type=("l1",), loss_weights=(1.0,))
  kw.update(overrides)
  return VideoMAEConfig(**kw)

