"""Tiled (flash-style) causal attention with its own backward pass, for training-length sequences.

Query i sees key j iff `k_id[j] <= q_id[i]` and `k_valid[j]`: token-causal with ids = positions (the
gaze decoder's teacher-forced pass), block-causal with ids = frame index (the VideoMAE). A query
tile visits key tiles 0 .. the last one whose smallest id is <= the tile's largest query id (a dynamic
trip count): with ids non-decreasing along the keys that is exactly the tiles holding visible keys,
so the masked upper triangle is never computed, in the forward or the backward; any other layout is
still exact, it just visits some fully masked tiles. Optional `self_edge` (B,L): query i also sees key
i where set (the official VideoMAE encoder's quirk for padded rows).

Why: XLA's plain masked softmax materialises B x H x L x L float32 scores and keeps them for the
backward (gigabytes at L = 3.7K, batch 4), and on CPU its per-element cost is dominated by memory
traffic. Here a tile's scores stay in cache memory, the forward keeps only the output and the row
log-sum-exp, and the backward recomputes each tile's probabilities (FlashAttention-2's schedule).
Scores, softmax statistics and accumulators are float32 whatever the input dtype.

On CPU, float32 inputs run the fused forward and backward kernels instead (autogaze_jax/kernels:
flash_attention.cc; same semantics, ~2-3x faster there); `AUTOGAZE_CPU_KERNELS=0` keeps these tiles.
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from autogaze_jax.core.layers import MASK_VALUE, online_softmax_update
from autogaze_jax.kernels import cpu as cpu_kernels


def flash_attention(q: jax.Array, k: jax.Array, v: jax.Array, q_id: jax.Array, k_id: jax.Array,
                    k_valid: jax.Array, block: int = 264, self_edge: jax.Array | None = None) -> jax.Array:
  """q (B,L,H,d), k/v (B,L,H,d) (self-attention, same length); q_id/k_id (L,) int32 shared by the
  batch; k_valid (B,L) bool; self_edge (B,L) bool or None. Returns (B,L,H,d) in q's dtype. Every query
  must see at least one key. Default tile 264: power-of-two tiles measured ~20% slower on this CPU
  (cache-set aliasing of the (B,H,tile,tile) score buffers)."""
  edge = jnp.zeros_like(k_valid) if self_edge is None else self_edge
  ids = (q_id.astype(jnp.int32), k_id.astype(jnp.int32), k_valid, edge)
  if fused(q, k, v):
    return _fused(q, k, v, *ids, block)
  *args, _ = _padded(block, q, k, v, *ids)
  return _flash_scaled(*args, block).transpose(0, 2, 1, 3)[:, :q.shape[1]]


def fused(q: jax.Array, k: jax.Array, v: jax.Array) -> bool:
  """Whether `flash_attention` runs these operands on the fused CPU kernels (which need no padding to
  whole tiles and skip masked keys per row block at any length)."""
  return jax.default_backend() == "cpu" and cpu_kernels.supports_flash(q) and k.dtype == v.dtype == q.dtype


def _padded(block, q, k, v, qid, kid, valid, edge):
  """Inputs padded to whole tiles, q scaled, q/k/v as (B,H,L,d)."""
  length, d = q.shape[1], q.shape[-1]
  pad = -length % block
  big = jnp.iinfo(jnp.int32).max
  tr = lambda x: jnp.pad(x, ((0, 0), (0, pad), (0, 0), (0, 0))).transpose(0, 2, 1, 3)  # noqa: E731
  qid = jnp.pad(qid, (0, pad), mode="edge")      # pad rows: no extra key tiles
  kid = jnp.pad(kid, (0, pad), constant_values=big)
  valid, edge = (jnp.pad(x, ((0, 0), (0, pad))) for x in (valid, edge))
  scaled = (q * (1.0 / math.sqrt(d))).astype(q.dtype)
  return tr(scaled), tr(k), tr(v), qid, kid, valid, edge, tr


def _xla_forward(q, k, v, qid, kid, valid, edge, *, block):
  """The tiled XLA forward: (out (B,L,H,d) in q's dtype, lse (B,H,L) float32)."""
  length = q.shape[1]
  *args, _ = _padded(block, q, k, v, qid, kid, valid, edge)
  out, lse = _forward(*args, block)
  return out.astype(q.dtype).transpose(0, 2, 1, 3)[:, :length], lse[:, :, :length]


def _xla_backward(q, k, v, qid, kid, valid, edge, out, lse, dout, *, block):
  """The tiled XLA backward from the forward's out and lse: (dq, dk, dv) (B,L,H,d)."""
  length, d = q.shape[1], q.shape[-1]
  *args, tr = _padded(block, q, k, v, qid, kid, valid, edge)
  lse = jnp.pad(lse, ((0, 0), (0, 0), (0, -length % block)), constant_values=jnp.inf)  # pad rows: p = 0
  dq, dk, dv = _flash_bwd(block, (*args, tr(out), lse), tr(dout))[:3]
  back = lambda x: x.transpose(0, 2, 1, 3)[:, :length]  # noqa: E731
  return back(dq * (1.0 / math.sqrt(d))).astype(q.dtype), back(dk), back(dv)


@functools.partial(jax.custom_vjp, nondiff_argnums=(7,))
def _fused(q, k, v, qid, kid, valid, edge, block):
  """float32 attention on the CPU kernels (the tiled XLA path on other platforms), with a backward
  from the forward's out and row log-sum-exp."""
  return _fused_fwd(q, k, v, qid, kid, valid, edge, block)[0]


def _fused_fwd(q, k, v, qid, kid, valid, edge, block):
  args = (q, k, v, qid, kid, valid, edge)
  out, lse = jax.lax.platform_dependent(*args, cpu=cpu_kernels.flash_forward,
                                        default=functools.partial(_xla_forward, block=block))
  return out, (*args, out, lse)


def _fused_bwd(block, res, dout):
  dq, dk, dv = jax.lax.platform_dependent(*res, dout, cpu=cpu_kernels.flash_backward,
                                          default=functools.partial(_xla_backward, block=block))
  return dq, dk, dv, None, None, None, None


_fused.defvjp(_fused_fwd, _fused_bwd)


def _key_tiles(qid, kid, block):
  """(n,) number of leading key tiles each query tile visits: up to the last tile with a key id <= the
  tile's largest query id (later tiles hold no visible key; self edges lie on the diagonal tile,
  which this bound always includes since a query's own id is <= its tile's largest)."""
  n = qid.shape[0] // block
  k_min = jnp.min(kid.reshape(n, block), axis=1)
  q_max = jnp.max(qid.reshape(n, block), axis=1)
  reach = k_min[None, :] <= q_max[:, None]
  return (n - jnp.argmax(reach[:, ::-1], axis=1)).astype(jnp.int32)


def _tile(x, i, block):
  return jax.lax.dynamic_slice_in_dim(x, i * block, block, axis=x.ndim - 2 if x.ndim == 4 else x.ndim - 1)


def _scores(qi, kj, i, j, qid, kid, valid, edge, block):
  """Masked float32 scores of tile (i, j) and its visibility, (B,H,c,c)."""
  s = jnp.einsum("bhqd,bhkd->bhqk", qi, kj, preferred_element_type=jnp.float32)
  qid_i, kid_j = _tile(qid, i, block), _tile(kid, j, block)
  vis = (kid_j[None, :] <= qid_i[:, None])[None, None] & _tile(valid, j, block)[:, None, None, :]
  diag = (i * block + jnp.arange(block))[:, None] == (j * block + jnp.arange(block))[None, :]
  vis = vis | (diag[None, None] & _tile(edge, i, block)[:, None, :, None])
  return jnp.where(vis, s, MASK_VALUE), vis


def _forward(q, k, v, qid, kid, valid, edge, block):
  """q (B,H,L,d) already scaled -> (out (B,H,L,d) float32, lse (B,H,L))."""
  b, h, length, d = q.shape
  n = length // block
  tiles = _key_tiles(qid, kid, block)

  def q_tile(i):
    qi = _tile(q, i, block)

    def body(j, c):
      s, _ = _scores(qi, _tile(k, j, block), i, j, qid, kid, valid, edge, block)
      return online_softmax_update(c, s, _tile(v, j, block))

    init = (jnp.full((b, h, block), MASK_VALUE, jnp.float32), jnp.zeros((b, h, block), jnp.float32),
            jnp.zeros((b, h, block, d), jnp.float32))
    m, l, acc = jax.lax.fori_loop(0, tiles[i], body, init)
    return acc / l[..., None], m + jnp.log(l)

  out, lse = jax.lax.map(q_tile, jnp.arange(n))                    # (n, B, H, c, d), (n, B, H, c)
  out = out.transpose(1, 2, 0, 3, 4).reshape(b, h, length, d)
  return out, lse.transpose(1, 2, 0, 3).reshape(b, h, length)


@functools.partial(jax.custom_vjp, nondiff_argnums=(7,))
def _flash_scaled(q, k, v, qid, kid, valid, edge, block):
  return _forward(q, k, v, qid, kid, valid, edge, block)[0].astype(q.dtype)


def _flash_fwd(q, k, v, qid, kid, valid, edge, block):
  out, lse = _forward(q, k, v, qid, kid, valid, edge, block)
  out = out.astype(q.dtype)
  return out, (q, k, v, qid, kid, valid, edge, out, lse)


def _flash_bwd(block, res, dout):
  q, k, v, qid, kid, valid, edge, out, lse = res
  b, h, length, d = q.shape
  n = length // block
  tiles = _key_tiles(qid, kid, block)
  dout32 = dout.astype(jnp.float32)
  delta = jnp.sum(dout32 * out.astype(jnp.float32), axis=-1)         # (B,H,L) rowsum(dO * O)

  def q_tile(i, c):
    dq, dk, dv = c
    qi, doi = _tile(q, i, block), _tile(dout, i, block)
    lse_i, delta_i = _tile(lse, i, block), _tile(delta, i, block)

    def body(j, cc):
      dq_i, dk, dv = cc
      kj, vj = _tile(k, j, block), _tile(v, j, block)
      s, vis = _scores(qi, kj, i, j, qid, kid, valid, edge, block)
      p = jnp.where(vis, jnp.exp(s - lse_i[..., None]), 0.0)
      dv_j = jnp.einsum("bhqk,bhqd->bhkd", p.astype(doi.dtype), doi, preferred_element_type=jnp.float32)
      dp = jnp.einsum("bhqd,bhkd->bhqk", doi, vj, preferred_element_type=jnp.float32)
      ds = p * (dp - delta_i[..., None])
      dq_i = dq_i + jnp.einsum("bhqk,bhkd->bhqd", ds.astype(kj.dtype), kj, preferred_element_type=jnp.float32)
      dk_j = jnp.einsum("bhqk,bhqd->bhkd", ds.astype(qi.dtype), qi, preferred_element_type=jnp.float32)
      dk = jax.lax.dynamic_update_slice_in_dim(dk, _tile(dk, j, block) + dk_j, j * block, axis=2)
      dv = jax.lax.dynamic_update_slice_in_dim(dv, _tile(dv, j, block) + dv_j, j * block, axis=2)
      return dq_i, dk, dv

    dq_i, dk, dv = jax.lax.fori_loop(0, tiles[i], body, (jnp.zeros((b, h, block, d), jnp.float32), dk, dv))
    return jax.lax.dynamic_update_slice_in_dim(dq, dq_i, i * block, axis=2), dk, dv

  zeros = jnp.zeros((b, h, length, d), jnp.float32)
  dq, dk, dv = jax.lax.fori_loop(0, n, q_tile, (zeros, zeros, zeros))
  return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype), None, None, None, None


_flash_scaled.defvjp(_flash_fwd, _flash_bwd)

