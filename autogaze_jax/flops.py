"""Useful-FLOP counts of the gaze model (multiply-add = 2 FLOPs), for MFU figures in benchmarks.

"Useful" = what the math needs: convolutions, linears, causal attention over visible keys only (not
the masked half), heads only where read. Elementwise ops, norms and softmax are not counted.
"""
from __future__ import annotations

from autogaze_jax.config import GazeConfig


def vision_flops(cfg: GazeConfig, frames: int) -> float:
  v, p = cfg.vision, cfg.num_frame_tokens
  stem = 2 * p * 3 * v.kernel_size ** 2 * v.hidden_dim
  trunk = v.depth * 2 * p * v.trunk_temporal_kernel_size * v.trunk_spatial_kernel_size ** 2 * v.hidden_dim ** 2
  proj = 2 * p * v.hidden_dim * v.out_dim
  return float(frames * (stem + trunk + proj))


def decoder_token_flops(cfg: GazeConfig) -> float:
  """Linears of all layers for one token."""
  dc = cfg.decoder
  d, f = dc.hidden_size, dc.intermediate_size
  return float(dc.num_hidden_layers * 2 * (4 * d * d + 3 * d * f))


def attention_flops(cfg: GazeConfig, attended_keys: float) -> float:
  """QK^T and PV for `attended_keys` (query, visible key) pairs, all layers."""
  dc = cfg.decoder
  return float(dc.num_hidden_layers * 4 * dc.num_attention_heads * dc.head_dim * attended_keys)


def head_flops(cfg: GazeConfig, positions: int) -> float:
  dc = cfg.decoder
  return float(positions * 2 * dc.hidden_size * dc.num_multi_token_pred * (cfg.vocab_size + 1))


def teacher_forced_flops(cfg: GazeConfig, num_gazing_each_frame) -> float:
  """One clip's teacher-forced pass: causal attention over L tokens = L(L+1)/2 pairs."""
  n = [int(x) for x in num_gazing_each_frame]
  length = cfg.num_frame_tokens * len(n) + sum(n)
  sources = len(n) * cfg.decoder.num_multi_token_pred  # upper bound of read-out positions
  return (vision_flops(cfg, len(n)) + length * decoder_token_flops(cfg)
          + attention_flops(cfg, length * (length + 1) / 2) + head_flops(cfg, min(sources + sum(n), length)))
