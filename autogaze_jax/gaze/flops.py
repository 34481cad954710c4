"""Useful-FLOP counts of the gaze model (multiply-add = 2 FLOPs), for MFU figures in benchmarks.

"Useful" = what the math needs: convolutions, linears, causal attention over visible keys only (not
the masked half), heads only where read. Elementwise ops, norms and softmax are not counted.
"""
from __future__ import annotations

from autogaze_jax.gaze.config import GazeConfig


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


def cached_feed_flops(cfg: GazeConfig, n: int, cached: int) -> float:
  """Feeding n tokens after `cached` cache slots when only the last token's output is read (the
  rollout's `hidden_cached`): every layer but the last runs all n tokens; the last layer projects
  keys/values of all n and runs query, attention, o_proj and MLP for the last token only."""
  dc = cfg.decoder
  d, f, layers = dc.hidden_size, dc.intermediate_size, dc.num_hidden_layers
  per_layer = decoder_token_flops(cfg) / layers
  pairs = n * cached + n * (n + 1) / 2
  full = (layers - 1) * (n * per_layer) + attention_flops(cfg, pairs) * (layers - 1) / layers
  last = n * 2 * 2 * d * d + 2 * (2 * d * d + 3 * d * f) + attention_flops(cfg, cached + n) / layers
  return float(full + last)


def rollout_flops(cfg: GazeConfig, steps, k: int, read_out_only: bool = True) -> float:
  """One clip's rollout from its per-frame step counts (T,): vision, each frame's prefill
  (deferred chunk + vision tokens) and decode steps of k tokens, heads once per step.
  read_out_only=False counts every fed token through every layer, as the official generate runs
  them (the issue's "~37 GFLOP per clip"); True counts what the result needs (what we run)."""
  p = cfg.num_frame_tokens
  total, cached = vision_flops(cfg, len(steps)), 0
  for t, s in enumerate(steps):
    for n in [p + (k if t else 0)] + [k] * (int(s) - 1):
      if read_out_only:
        total += cached_feed_flops(cfg, n, cached)
      else:
        total += n * decoder_token_flops(cfg) + attention_flops(cfg, n * cached + n * (n + 1) / 2)
      cached += n
  return total + head_flops(cfg, int(sum(int(s) for s in steps)))


def teacher_forced_flops(cfg: GazeConfig, num_gazing_each_frame) -> float:
  """One clip's teacher-forced pass: causal attention over L tokens = L(L+1)/2 pairs."""
  n = [int(x) for x in num_gazing_each_frame]
  length = cfg.num_frame_tokens * len(n) + sum(n)
  sources = len(n) * cfg.decoder.num_multi_token_pred  # upper bound of read-out positions
  return (vision_flops(cfg, len(n)) + length * decoder_token_flops(cfg)
          + attention_flops(cfg, length * (length + 1) / 2) + head_flops(cfg, min(sources + sum(n), length)))
