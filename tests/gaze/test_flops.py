"""Rollout FLOP counts (autogaze_jax/flops.py), checked against hand counts of the default model."""
from autogaze_jax import GazeConfig
from autogaze_jax.gaze.flops import attention_flops, decoder_token_flops, head_flops, rollout_flops, vision_flops


def test_rollout_flops_by_hand():
  cfg = GazeConfig()
  d, f, h, hd, layers = 192, 384, 6, 32, 4
  p = cfg.num_frame_tokens   # 196 vision tokens: one frame, one step = one prefill of 196 tokens
  per_layer_token = 2 * (4 * d * d + 3 * d * f)
  pairs = p * (p + 1) / 2
  everything = vision_flops(cfg, 1) + p * layers * per_layer_token + layers * 4 * h * hd * pairs + head_flops(cfg, 1)
  assert rollout_flops(cfg, [1], 10, read_out_only=False) == everything
  # the last layer keeps k/v projections of all 196 tokens but runs q, o, MLP and attention for 1
  skipped = (p - 1) * (2 * (2 * d * d + 3 * d * f)) + 4 * h * hd * (pairs - p)
  assert rollout_flops(cfg, [1], 10) == everything - skipped
  assert decoder_token_flops(cfg) == layers * per_layer_token and attention_flops(cfg, 1) == layers * 4 * h * hd

