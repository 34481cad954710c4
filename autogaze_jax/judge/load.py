"""The one way to get a VideoMAE judge: an official-format checkpoint, or a random init of a named size.

Every consumer (greedy labels, GRPO rewards, judge training, evaluation) calls `load_judge` and gets the
same `Judge`: config, static graphdef, params and the perceptual nets of its loss terms. Perceptual nets
come from tensors bundled in the checkpoint (`dinov2_reg.*`, `siglip2.*`) or from the weight paths in
its config (random ones for a random judge); a term without weights is a `JudgeTermsError` (choose fewer
terms with `loss_type`, e.g. `--config.videomae.loss_type=l1`), so a total never silently loses a term.
"""
from __future__ import annotations

import dataclasses
import logging
import os

from safetensors import safe_open

from autogaze_jax.interop.common import WEIGHTS_NAME
from autogaze_jax.interop.videomae import bundled_perceptual, load_checkpoint, read_config
from autogaze_jax.interop.common import resolve_checkpoint_dir
from autogaze_jax.judge import perceptual as perc
from autogaze_jax.judge.config import JudgeTermsError, VideoMAEConfig, tiny_videomae_config
from autogaze_jax.judge.model import abstract_params, init_params

SIZES = ("tiny", "small", "default")
# What a judge dir needs from a hub repo: config.json, the bundled nets' <term>_config.json, the weights.
JUDGE_HUB_FILES = ("*.json", "model.safetensors")


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


def select_terms(cfg: VideoMAEConfig, loss_type: str = "") -> VideoMAEConfig:
  """The judge's config scoring with `loss_type` ("l1", "l1+siglip2", ...; "" = the config's own terms),
  each term keeping the weight the config gives it."""
  if not loss_type:
    return cfg
  want = tuple(t.strip() for t in loss_type.split("+"))
  unknown = [t for t in want if t not in cfg.loss_type]
  if unknown or len(set(want)) != len(want):
    raise JudgeTermsError(f"loss_type {loss_type!r}: choose distinct terms of the judge's {'+'.join(cfg.loss_type)}")
  weights = dict(zip(cfg.loss_type, cfg.loss_weights))
  return cfg.replace(loss_type=want, loss_weights=tuple(weights[t] for t in want))


def require_weights(cfg: VideoMAEConfig, bundled: set[str], origin: str) -> None:
  """Raise naming every perceptual term of `cfg` that has no weights: a total with a term silently
  missing changes what the task-loss threshold (0.7) means."""
  missing = [t for t in cfg.loss_type if t != "l1" and t not in bundled and not getattr(cfg, f"{t}_weights")]
  if missing:
    raise JudgeTermsError(
        f"{origin}: loss term(s) {missing} of loss_type {'+'.join(cfg.loss_type)} have no weights (no bundled "
        f"'<term>.*' tensors, no '<term>_weights' path in the judge config). Convert the official judge with its "
        f"perceptual nets (python -m launch.convert --videomae_pt=... --dinov2=... --siglip2=...), or score "
        f"without them: --config.videomae.loss_type=l1")


def _bundled_terms(checkpoint: str) -> set[str]:
  """Perceptual terms whose tensors the checkpoint bundles (reads only the safetensors header)."""
  with safe_open(os.path.join(checkpoint, WEIGHTS_NAME), "np") as f:
    return {k.split(".", 1)[0] for k in f.keys()} & {"dinov2_reg", "siglip2"}


def check_loss_terms(checkpoint: str = "", size: str = "default", loss_type: str = "") -> tuple[str, ...]:
  """The terms `load_judge` would score with, checked without loading weights (for config validation)."""
  if checkpoint:
    checkpoint = resolve_checkpoint_dir(checkpoint, allow_patterns=JUDGE_HUB_FILES, what="judge checkpoint")
    cfg = select_terms(read_config(checkpoint), loss_type)
    require_weights(cfg, _bundled_terms(checkpoint), checkpoint)
  else:
    cfg = select_terms(judge_config(size), loss_type)
  return cfg.loss_type


def _random_perceptual(cfg: VideoMAEConfig, seed: int) -> dict:
  """Released-size perceptual nets at random init, for the terms of a random judge (plumbing, benchmarks)."""
  nets = {}
  for i, (term, ecfg) in enumerate((("dinov2_reg", perc.DINOV2_REG_BASE), ("siglip2", perc.SIGLIP2_BASE))):
    if term in cfg.loss_type:
      nets[term] = perc.from_tensors(ecfg, perc.random_tensors(ecfg, seed + i, std=0.02))
  return nets


def load_judge(checkpoint: str = "", size: str = "default", dtype: str = "float32", seed: int = 0,
               loss_type: str = "") -> Judge:
  """`checkpoint`: an official-format dir (config.json + model.safetensors). Empty: a random init of
  `size` (logged as a warning: rewards and labels from random weights only exercise the plumbing), its
  perceptual terms at random init too. `loss_type`: score with these of the judge's terms ("" = all);
  a term without weights is a `JudgeTermsError`, never a silently smaller total."""
  if checkpoint:   # a local dir, or a hub id ('org/name[@revision]') through the huggingface_hub cache
    checkpoint = resolve_checkpoint_dir(checkpoint, allow_patterns=JUDGE_HUB_FILES, what="judge checkpoint")
    cfg, graphdef, params, tensors = load_checkpoint(checkpoint, read_config(checkpoint, dtype=dtype))
    cfg = select_terms(cfg, loss_type)
    nets = {**bundled_perceptual(checkpoint, cfg, tensors), **perc.load_from_config(cfg)}
    require_weights(cfg, set(nets), checkpoint)
    if loss_type:   # the loss reads its terms from the module's static cfg
      graphdef = abstract_params(cfg)[0]
    return Judge(cfg, graphdef, params, nets)
  cfg = select_terms(judge_config(size, dtype), loss_type)
  logging.warning("no videomae checkpoint: a RANDOMLY INITIALISED %s VideoMAE judge (%s); its rewards and "
                  "labels are NOT meaningful (plumbing only)", size, "+".join(cfg.loss_type))
  graphdef, params = init_params(cfg, seed)
  return Judge(cfg, graphdef, params, _random_perceptual(cfg, seed))
