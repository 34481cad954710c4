"""The one way to get a VideoMAE judge: an official-format checkpoint, or a random init of a named size.

Every consumer (greedy labels, GRPO rewards, judge training, evaluation) calls `load_judge` and gets the
same `Judge`: config, static graphdef, params and the perceptual nets of its loss terms. Perceptual nets
come from tensors bundled in the checkpoint (`dinov2_reg.*`, `siglip2.*`) or from the weight paths in
its config; terms without weights are left out and `losses.frame_losses` skips them.
"""
from __future__ import annotations

import dataclasses
import logging

from autogaze_jax.interop.videomae import bundled_perceptual, load_checkpoint, read_config
from autogaze_jax.judge import perceptual as perc
from autogaze_jax.judge.config import VideoMAEConfig, tiny_videomae_config
from autogaze_jax.judge.model import init_params

SIZES = ("tiny", "small", "default")


def judge_config(size: str, dtype: str = "float32") -> VideoMAEConfig:
  """tiny: test-sized (the `videomae_tiny` fixture's shapes); small: the embedded recipe's judge (trains
  in minutes on a CPU, the shape of `autogaze_jax/assets/judge_small`); default: ViT-MAE-L as released."""
  if size == "tiny":
    return tiny_videomae_config(dtype=dtype)
  if size == "small":
    return tiny_videomae_config(hidden_size=64, num_hidden_layers=3, num_attention_heads=4, intermediate_size=128,
                                decoder_hidden_size=64, decoder_num_hidden_layers=2, decoder_num_attention_heads=4,
                                decoder_intermediate_size=128, initializer_range=0.02, dtype=dtype)
  if size == "default":
    return VideoMAEConfig(dtype=dtype)
  raise ValueError(f"videomae size {size!r}: choose from {', '.join(SIZES)}")


@dataclasses.dataclass(frozen=True)
class Judge:
  cfg: VideoMAEConfig
  graphdef: object
  params: object
  perceptual: dict        # {term: PerceptualNet}

  @property
  def loss_terms(self) -> list[str]:
    """The terms this judge actually scores with (l1 plus the perceptual terms that have weights)."""
    return [t for t in self.cfg.loss_type if t == "l1" or t in self.perceptual]


def load_judge(checkpoint: str = "", size: str = "default", dtype: str = "float32", seed: int = 0) -> Judge:
  """`checkpoint`: an official-format dir (config.json + model.safetensors). Empty: a random init of
  `size` (logged as a warning: rewards and labels from random weights only exercise the plumbing)."""
  if checkpoint:
    cfg, graphdef, params, tensors = load_checkpoint(checkpoint, read_config(checkpoint, dtype=dtype))
    nets = {**bundled_perceptual(checkpoint, cfg, tensors), **perc.load_from_config(cfg)}
    judge = Judge(cfg, graphdef, params, nets)
    missing = [t for t in cfg.loss_type if t not in judge.loss_terms]
    if missing:
      logging.warning("judge %s: loss terms %s have no weights and are skipped", checkpoint, missing)
    return judge
  cfg = judge_config(size, dtype)
  logging.warning("no videomae checkpoint: a RANDOMLY INITIALISED %s VideoMAE judge (l1 only); its rewards and "
                  "labels are NOT meaningful (plumbing only)", size)
  graphdef, params = init_params(cfg, seed)
  return Judge(cfg, graphdef, params, {})
