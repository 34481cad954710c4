"""Block-causal attention by segment (frame) id, chunked over queries (VideoMAE encoder/decoder).

Kept in its own module (not models/layers.py) so the VideoMAE does not depend on edits to the gaze
model's attention helpers.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from autogaze_jax.core.layers import attend


def segment_attention(q: jax.Array, k: jax.Array, v: jax.Array, q_seg: jax.Array, k_seg: jax.Array,
                      k_valid: jax.Array, self_edge: jax.Array | None = None, block: int = 512,
                      impl: str = "chunked", q_offset: int = 0) -> jax.Array:
  """Block-causal attention by segment (frame) id: query i sees key j iff `k_seg[j] <= q_seg[i]` and
  `k_valid[j]`, or (with `self_edge`, self-attention only) `j == i` and `self_edge[i]`.

  q (B,Lq,H,d), k/v (B,Lk,H,d); q_seg (B,Lq), k_seg (B,Lk) int32; k_valid (B,Lk) bool;
  self_edge (B,Lq) bool or None; q_offset: index of query 0 among the keys (for `self_edge` when q is
  a slice of the sequence). Returns (B,Lq,H,d). Every query must see at least one key.

  Segment ids, not positions, define the mask, so tokens may be laid out in any order.
  impl="chunked": queries in chunks of at most `block` under `lax.map`, each chunk rematerialised, so
  the float32 score tensor is at most B x H x block x Lk in the forward and the backward pass. Small
  chunks also run faster on CPU (2.2x at 128 vs 1024 rows: the score buffer stays cache/allocator
  resident instead of page-faulting a fresh 100+ MB tensor).
  impl="dot_product": one `jax.nn.dot_product_attention` call with a boolean mask (B,1,Lq,Lk), for
  accelerators whose fused kernels take a mask (cuDNN); scores in the input dtype there.
  """
  b, lq, h, d = q.shape
  if impl == "dot_product":
    mask = _segment_mask(q_seg, k_seg, k_valid, self_edge, q_offset + jnp.arange(lq), k.shape[1])
    return jax.nn.dot_product_attention(q, k, v, mask=mask[:, None])
  if lq <= block:
    mask = _segment_mask(q_seg, k_seg, k_valid, self_edge, q_offset + jnp.arange(lq), k.shape[1])
    return attend(q, k, v, mask)
  nc = -(-lq // block)
  block = -(-lq // nc)               # balanced chunks: 265 rows -> 3 x 89, not 3 x 128 with padding
  pad = nc * block - lq
  qp = jnp.pad(q, ((0, 0), (0, pad), (0, 0), (0, 0)))
  segp = jnp.pad(q_seg, ((0, 0), (0, pad)), constant_values=jnp.iinfo(jnp.int32).max)  # pad rows see all
  se = None if self_edge is None else jnp.pad(self_edge, ((0, 0), (0, pad)))

  @jax.checkpoint
  def chunk(args):
    i, qc, sc, ec = args
    pos = q_offset + i * block + jnp.arange(block)
    return attend(qc, k, v, _segment_mask(sc, k_seg, k_valid, ec, pos, k.shape[1]))

  qs = qp.reshape(b, nc, block, h, d).swapaxes(0, 1)
  ss = segp.reshape(b, nc, block).swapaxes(0, 1)
  es = None if se is None else se.reshape(b, nc, block).swapaxes(0, 1)
  out = jax.lax.map(chunk, (jnp.arange(nc), qs, ss, es))
  return out.swapaxes(0, 1).reshape(b, nc * block, h, d)[:, :lq]


def _segment_mask(q_seg, k_seg, k_valid, self_edge, q_pos, lk):
  """(B,Lq,Lk) bool visibility; see `segment_attention`."""
  m = (k_seg[:, None, :] <= q_seg[:, :, None]) & k_valid[:, None, :]
  if self_edge is not None:
    m = m | ((q_pos[:, None] == jnp.arange(lk)[None, :])[None] & self_edge[:, :, None])
  return m
