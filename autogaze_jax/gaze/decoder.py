"""LLaMA-style gaze decoder with multi-token and task-loss heads.

HF `LlamaModel` + `LlamaForCausalLM_MultiTokenPred`: pre-norm blocks (RMSNorm eps from config),
llama3-scaled RoPE, no biases, SiLU-gated MLP, final RMSNorm; `lm_head` gives K x vocab logits per
position, head-major (`h * vocab + v`), and `task_loss_prediction_head` K raw scalars.

Two ways to run it, both pure functions of arrays:
  `hidden(x, positions, kv_valid)`: a whole sequence, causal by index, invalid keys removed
      (the teacher-forced pass);
  `hidden_cached(x, positions, cache, start, kv_valid, rope_table)`: new tokens written into a fixed-size
      slot-indexed KV cache at `start` and attending to every valid slot up to their own; returns
      the last token's hidden state (rollout).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from autogaze_jax.gaze.config import GazeConfig

from autogaze_jax.core.flash_attention import flash_attention
from autogaze_jax.core.layers import (apply_rope, attend, cached_attention, dense, llama3_inv_freq, rms_norm,
                                        rope_cos_sin)

# Key chunk of the cached attention: a prefill's (B, H, ~206, 256) score tile stays in L2, and a
# decode step's small chunks beat larger ones too (measured on this CPU: 128-256 best, 1024 2x slower).
# Rollout caches are sized in whole chunks (`cache_slots`).
ATTN_CHUNK = 256


def cache_slots(slots: int) -> int:
  """Cache size holding `slots` tokens, rounded up to whole attention chunks."""
  return -(-slots // ATTN_CHUNK) * ATTN_CHUNK


def _normal(rngs: nnx.Rngs, shape, std: float):
  return nnx.Param(std * jax.random.normal(rngs.params(), shape, jnp.float32))


class Linear(nnx.Module):
  def __init__(self, din: int, dout: int, std: float, rngs: nnx.Rngs):
    self.kernel = _normal(rngs, (din, dout), std)


class RMSNormParams(nnx.Module):
  def __init__(self, dim: int):
    self.scale = nnx.Param(jnp.ones((dim,), jnp.float32))


class Attention(nnx.Module):
  def __init__(self, d: int, std: float, rngs: nnx.Rngs):
    self.q_proj, self.k_proj = Linear(d, d, std, rngs), Linear(d, d, std, rngs)
    self.v_proj, self.o_proj = Linear(d, d, std, rngs), Linear(d, d, std, rngs)


class MLP(nnx.Module):
  def __init__(self, d: int, f: int, std: float, rngs: nnx.Rngs):
    self.gate_proj, self.up_proj = Linear(d, f, std, rngs), Linear(d, f, std, rngs)
    self.down_proj = Linear(f, d, std, rngs)

  def __call__(self, x):
    return dense(jax.nn.silu(dense(x, self.gate_proj.kernel[...])) * dense(x, self.up_proj.kernel[...]),
                 self.down_proj.kernel[...])


class DecoderLayer(nnx.Module):
  def __init__(self, cfg: GazeConfig, rngs: nnx.Rngs):
    dc = cfg.decoder
    d, std = dc.hidden_size, dc.initializer_range
    self.self_attn = Attention(d, std, rngs)
    self.mlp = MLP(d, dc.intermediate_size, std, rngs)
    self.input_layernorm = RMSNormParams(d)
    self.post_attention_layernorm = RMSNormParams(d)


class GazeDecoder(nnx.Module):
  def __init__(self, cfg: GazeConfig, rngs: nnx.Rngs):
    dc = cfg.decoder
    self.cfg = cfg
    d, std = dc.hidden_size, dc.initializer_range
    self.embed_tokens = _normal(rngs, (cfg.vocab_size, d), std)
    self.layers = nnx.List([DecoderLayer(cfg, rngs) for _ in range(dc.num_hidden_layers)])
    self.norm = RMSNormParams(d)
    self.lm_head = Linear(d, dc.num_multi_token_pred * cfg.vocab_size, std, rngs)
    self.task_loss_prediction_head = Linear(d, dc.num_multi_token_pred, std, rngs)

  # ---- pieces ----
  def embed(self, ids: jax.Array) -> jax.Array:
    return jnp.take(self.embed_tokens[...], ids, axis=0).astype(self.cfg.jnp_dtype)

  def _qkv(self, layer: DecoderLayer, x, cos, sin, last_query: bool = False, rows=None):
    """Rotated q, k and v (B, n, H, hd); with last_query, q only for the last token (B, 1, H, hd); with
    `rows` (static int array), q only for those tokens (B, len(rows), H, hd)."""
    dc = self.cfg.decoder
    b, n, _ = x.shape
    h = rms_norm(x, layer.input_layernorm.scale[...].astype(x.dtype), dc.rms_norm_eps)
    shape = (b, n, dc.num_attention_heads, dc.head_dim)
    k = dense(h, layer.self_attn.k_proj.kernel[...]).reshape(shape)
    v = dense(h, layer.self_attn.v_proj.kernel[...]).reshape(shape)
    if last_query:
      h, cos_q, sin_q = h[:, -1:], cos[:, -1:], sin[:, -1:]
    elif rows is not None:
      h, cos_q, sin_q = h[:, rows], cos[:, rows], sin[:, rows]
    else:
      cos_q, sin_q = cos, sin
    q = dense(h, layer.self_attn.q_proj.kernel[...]).reshape(b, h.shape[1], *shape[2:])
    return apply_rope(q, cos_q, sin_q), apply_rope(k, cos, sin), v

  def _finish(self, layer: DecoderLayer, x, attn_out):
    dc = self.cfg.decoder
    b, n = x.shape[:2]
    x = x + dense(attn_out.reshape(b, n, -1), layer.self_attn.o_proj.kernel[...])
    h = rms_norm(x, layer.post_attention_layernorm.scale[...].astype(x.dtype), dc.rms_norm_eps)
    return x + layer.mlp(h)

  def _rope(self, positions):
    dc = self.cfg.decoder
    return rope_cos_sin(positions, llama3_inv_freq(dc.head_dim, dc.rope_theta, dc.rope_scaling))

  def rope_table(self, n: int):
    """cos, sin (n, hd) of positions 0..n-1, for `hidden_cached`. Gathering rows of a table made once
    per rollout is what keeps sin/cos out of the decoder: computed from positions inline, XLA fuses
    them into every consumer (each layer's q and k, per head) and recomputes them there."""
    return self._rope(jnp.arange(n))

  def final_norm(self, x):
    return rms_norm(x, self.norm.scale[...].astype(x.dtype), self.cfg.decoder.rms_norm_eps)

  # ---- whole-sequence pass ----
  def hidden(self, x: jax.Array, positions: jax.Array, kv_valid: jax.Array, block: int = 264,
             out_rows=None) -> jax.Array:
    """x (B, L, D), positions (B, L) int, kv_valid (B, L) bool -> final-normed hidden (B, L, D).

    Causal by sequence index through the tiled `flash_attention` (block = its tile size). `out_rows`
    (static int array): return only those rows (B, len(out_rows), D). The last layer then runs its
    queries, output projection and MLP for those rows only (keys/values for all): the teacher-forced
    pass reads ~5 rows per frame of ~230, so this drops most of a layer's work, forward and backward.
    """
    cos, sin = self._rope(positions)
    idx = jnp.arange(x.shape[1])
    last = len(self.layers) - 1
    for i, layer in enumerate(self.layers):
      if out_rows is not None and i == last:
        rows = np.asarray(out_rows, np.int32)
        q, k, v = self._qkv(layer, x, cos, sin, rows=rows)
        mask = (idx[None, :] <= rows[:, None])[None] & kv_valid[:, None, :]
        x = self._finish(layer, x[:, rows], attend(q, k, v, mask))
      else:
        q, k, v = self._qkv(layer, x, cos, sin)
        x = self._finish(layer, x, flash_attention(q, k, v, idx, idx, kv_valid, block))
    if out_rows is not None and not self.layers:
      x = x[:, np.asarray(out_rows, np.int32)]
    return self.final_norm(x)

  # ---- cached pass (rollout) ----
  def hidden_cached(self, x, positions, cache, start, kv_valid, rope_table):
    """Write n new tokens at cache slots [start, start+n), attend causally by slot, return the last.

    x (B, n, D); positions (B, n); cache = (k, v): k (layers, B, H, hd, S) keys transposed and v
    (layers, B, H, S, hd), so both attention matmuls read the cache contiguously along their inner
    loop (QK^T over slots, PV over head dims) without a transpose; start: int scalar; kv_valid (B, S)
    bool validity of every slot *including* the new ones; slots are filled from 0 up, so only keys
    below start + n are read (see `cached_attention`); rope_table = `rope_table(S)` (positions never
    exceed the slots written; a position past the table gives NaN, not a silently wrong angle).
    Returns (final-normed hidden of the last new token (B, D), new cache). The rollout reads only
    that token, so the last layer runs its query, attention, o_proj and MLP for it alone (rows are
    independent there); every token's keys and values are still written for the later steps.
    """
    ck, cv = cache
    slots = cv.shape[3]
    chunk = min(ATTN_CHUNK, slots)
    last = len(self.layers) - 1
    cos, sin = (jnp.take(t, positions, axis=0, mode="fill", fill_value=jnp.nan) for t in rope_table)
    for i, layer in enumerate(self.layers):
      q, k, v = self._qkv(layer, x, cos, sin, last_query=i == last)
      attn, ck, cv = cached_attention(q, k, v, ck, cv, i, start, kv_valid, chunk)
      x = self._finish(layer, x[:, -q.shape[1]:], attn)
    return self.final_norm(x[:, 0]), (ck, cv)

  def init_cache(self, batch: int, slots: int, dtype=None):
    dc = self.cfg.decoder
    shape = (dc.num_hidden_layers, batch, dc.num_attention_heads, slots, dc.head_dim)
    dt = dtype or self.cfg.jnp_dtype
    return jnp.zeros((*shape[:3], dc.head_dim, slots), dt), jnp.zeros(shape, dt)

  # ---- heads (float32 outputs, as the official casts) ----
  def logits(self, h: jax.Array) -> jax.Array:
    """(..., D) -> (..., K, vocab) float32."""
    k, vocab = self.cfg.decoder.num_multi_token_pred, self.cfg.vocab_size
    out = dense(h, self.lm_head.kernel[...]).astype(jnp.float32)
    return out.reshape(*h.shape[:-1], k, vocab)

  def task_loss(self, h: jax.Array) -> jax.Array:
    """(..., D) -> (..., K) float32 raw predicted reconstruction losses."""
    return dense(h, self.task_loss_prediction_head.kernel[...]).astype(jnp.float32)
