"""Streaming gaze for live video: one frame per call, state carried between calls.

The carried state is the rollout's `RolloutState` (slot KV cache, rebuilt mask, positions, the
deferred final chunk) plus the conv cache of the causal trunk; each call runs two jitted programs
(embed one frame, one `frame_step`) with the state donated. The result equals whole-clip generation.
Each call returns frame-local ids (padded slots hold EOS = 265), as the official streaming does.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from autogaze_jax.gaze.functional import check_pixel_values
from autogaze_jax.gaze.generate import check_ratio, check_threshold, compact, default_ratio, make_spec
from autogaze_jax.gaze.rollout import budgets_from_ratio, frame_step_jit, init_state


@functools.partial(jax.jit, static_argnames=("graphdef",), donate_argnames=("conv_cache",))
def _embed_frame(graphdef, params, pixel_values, conv_cache):
  return nnx.merge(graphdef, params).embed_video(pixel_values, conv_cache)


class GazeStream:
  """`stream = GazeStream(model, gazing_ratio=0.1); out_t = stream(pixel_values[:, t:t+1])`."""

  def __init__(self, model, gazing_ratio=None, task_loss_requirement=None, *, batch: int = 1,
               max_frames: int | None = None, coupled: bool = False, tokens_per_step: int | None = None,
               sample: bool = False, temperature: float = 1.0, top_k: int = 50, seed: int = 0):
    cfg = model.cfg
    self.model, self.batch = model, batch
    self.q = check_threshold(task_loss_requirement)
    ratio = check_ratio(default_ratio(cfg, gazing_ratio, self.q), 1)
    self.budget = int(budgets_from_ratio(ratio, 1, cfg.num_vision_tokens_each_frame)[0])
    self.spec = make_spec(cfg, np.array([self.budget]), max_frames or cfg.max_num_frames,
                          use_threshold=self.q is not None, coupled=coupled, tokens_per_step=tokens_per_step,
                          sample=sample, top_k=top_k, capacity=None)
    self.temperature, self.key = jnp.float32(temperature), jax.random.key(seed)
    m = nnx.merge(model.graphdef, model.params)
    self.state = init_state(m, self.spec, batch)
    self.conv_cache = m.vision_model.init_conv_cache(batch)
    self.t = 0

  def __call__(self, pixel_values) -> dict:
    """pixel_values (B, 1, 3, H, W) processor output of the next frame -> that frame's gaze."""
    pv = check_pixel_values(pixel_values, self.model.cfg)
    if pv.shape[:2] != (self.batch, 1):
      raise ValueError(f"GazeStream takes one frame per call: (B={self.batch}, 1, 3, H, W), got {pv.shape}")
    if self.t >= self.spec.max_frames:
      raise ValueError(f"GazeStream was sized for {self.spec.max_frames} frames (max_frames=...)")
    vis, self.conv_cache = _embed_frame(self.model.graphdef, self.model.params, pv, self.conv_cache)
    b = self.batch
    self.state, out = frame_step_jit(
        self.model.graphdef, self.model.params, self.state, vis[:, 0], jnp.full((b,), self.budget, jnp.int32),
        jnp.full((b,), np.float32(self.q or 0.0), jnp.float32), self.temperature,
        jax.random.fold_in(self.key, self.t), self.spec)
    self.t += 1
    out = jax.tree.map(np.asarray, out)
    res = compact(out["tokens"][:, None], out["length"][:, None], self.model.cfg.num_vision_tokens_each_frame)
    res["task_loss_requirement"] = np.full((b, 1), np.float32(self.q), np.float32) if self.q is not None else None
    res["trace"] = out
    return res
