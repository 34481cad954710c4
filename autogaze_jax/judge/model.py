"""Block-causal multi-scale VideoMAE: the frozen reconstruction judge.

Params live in NNX modules (names mirror the official HF ViTMAE ones, see interop/videomae.py); all
math is in pure functions of arrays, used as `forward(graphdef, params, ...)` under `jax.jit`.

Shapes: B videos, T frames, V = 265 tokens per frame (scales 32/64/112/224 -> 4+16+49+196 ids,
row-major per scale), N gaze slots (static), R frames to reconstruct (static length).
Layout (differs from the official positional layout, same outputs, because the mask is defined by
frame ids and every output is invariant to token order inside a frame):
  encoder: [cls, slot_0 .. slot_{N-1}]                       (as official)
  decoder: [cls, slot_0 .. slot_{N-1}, frame R[0] ids 0..V-1, ..., frame R[-1] ids 0..V-1]
           slots of frames in R are masked out as keys (the official code replaces them by the full
           frame, whose canvas already holds their encoder outputs), so the length 1+N+R*V is static
           while the per-frame counts stay traced.
Invalid input (documented behaviour, tested): a non-padded slot whose id is outside [0, T*V) is
treated as padding (masked everywhere, gathers the dummy token); use `check_gaze_inputs` on the host
to get a ValueError naming the slot instead. A frame with no real slot still gets a reconstruction (its
mask tokens see cls and the earlier frames), never NaN.
"""
from __future__ import annotations

from math import comb

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from autogaze_jax.core.layers import (Dense, LayerNorm, attend, block_weights, dense, layer_norm, slot_frames,
                                      transformer_block)
from autogaze_jax.core.flash_attention import flash_attention, fused as flash_fused
from autogaze_jax.judge.segment_attention import segment_mask, segment_attention
from autogaze_jax.core.resize import bicubic_matrix, resize_bicubic
from autogaze_jax.judge.config import VideoMAEConfig

_REMAT_POLICIES = {"block": None, "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable}


# ---------------------------------------------------------------- params (NNX modules)
def _normal(rngs, shape, std):
  return nnx.Param(std * jax.random.normal(rngs.params(), shape, jnp.float32))


def _dense(din, dout, std, rngs) -> Dense:
  """N(0, std^2) kernel, zero bias (the official init)."""
  return Dense(std * jax.random.normal(rngs.params(), (din, dout), jnp.float32))


class Block(nnx.Module):
  """HF ViTMAELayer: pre-LN attention + pre-LN exact-GELU MLP."""

  def __init__(self, d, f, std, rngs):
    self.layernorm_before = LayerNorm(d)
    self.query, self.key, self.value = _dense(d, d, std, rngs), _dense(d, d, std, rngs), _dense(d, d, std, rngs)
    self.attention_output = _dense(d, d, std, rngs)
    self.layernorm_after = LayerNorm(d)
    self.intermediate = _dense(d, f, std, rngs)
    self.output = _dense(f, d, std, rngs)


def sincos_2d(dim: int, grid: int) -> np.ndarray:
  """(1 + grid^2, dim) MAE table (`get_2d_sincos_pos_embed`, cls row zeros): token (r,c) = [e(c), e(r)]."""
  omega = 1.0 / 10000 ** (np.arange(dim // 4, dtype=np.float64) / (dim / 4.0))

  def e(pos):
    out = np.einsum("m,d->md", pos.reshape(-1).astype(np.float64), omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)

  r, c = np.meshgrid(np.arange(grid), np.arange(grid), indexing="ij")
  table = np.concatenate([e(c), e(r)], axis=1)
  return np.concatenate([np.zeros((1, dim)), table], axis=0).astype(np.float32)


class Embeddings(nnx.Module):
  def __init__(self, cfg: VideoMAEConfig, rngs):
    d, p = cfg.hidden_size, cfg.patch_size
    self.cls_token = _normal(rngs, (1, 1, d), cfg.initializer_range)
    self.position_embeddings = nnx.Param(jnp.asarray(sincos_2d(d, cfg.grid))[None])
    lim = float(np.sqrt(6.0 / (cfg.patch_dim + d)))  # xavier-uniform on the flattened conv, as official
    self.patch_kernel = nnx.Param(jax.random.uniform(rngs.params(), (p, p, cfg.num_channels, d), jnp.float32,
                                                     -lim, lim))
    self.patch_bias = nnx.Param(jnp.zeros((d,), jnp.float32))
    if cfg.scale_embed:
      self.scale_embed = _normal(rngs, (len(cfg.scales), d), cfg.initializer_range)
    if cfg.time_embed:
      self.time_embed = _normal(rngs, (cfg.max_num_frames, d), cfg.initializer_range)


class Encoder(nnx.Module):
  def __init__(self, cfg, rngs):
    std = cfg.initializer_range
    self.embeddings = Embeddings(cfg, rngs)
    self.layer = nnx.List([Block(cfg.hidden_size, cfg.intermediate_size, std, rngs)
                           for _ in range(cfg.num_hidden_layers)])
    self.layernorm = LayerNorm(cfg.hidden_size)


class Decoder(nnx.Module):
  def __init__(self, cfg, rngs):
    dd, std = cfg.decoder_hidden_size, cfg.initializer_range
    self.decoder_embed = _dense(cfg.hidden_size, dd, std, rngs)
    self.mask_token = _normal(rngs, (1, 1, dd), std)
    self.decoder_pos_embed = nnx.Param(jnp.asarray(sincos_2d(dd, cfg.grid))[None])
    self.decoder_layers = nnx.List([Block(dd, cfg.decoder_intermediate_size, std, rngs)
                                    for _ in range(cfg.decoder_num_hidden_layers)])
    self.decoder_norm = LayerNorm(dd)
    self.decoder_pred = _dense(dd, cfg.patch_dim, std, rngs)
    if cfg.scale_embed:
      self.decoder_scale_embed = _normal(rngs, (len(cfg.scales), dd), std)
    if cfg.time_embed:
      self.time_embed = _normal(rngs, (cfg.max_num_frames, dd), std)


class VideoMAE(nnx.Module):
  def __init__(self, cfg: VideoMAEConfig, rngs: nnx.Rngs):
    self.cfg = cfg
    self.vit = Encoder(cfg, rngs)
    self.decoder = Decoder(cfg, rngs)


def init_params(cfg: VideoMAEConfig, seed: int = 0):
  """(graphdef, params) of a randomly initialised model (official init scheme)."""
  return nnx.split(VideoMAE(cfg, nnx.Rngs(seed)), nnx.Param)


def abstract_params(cfg: VideoMAEConfig):
  """(graphdef, params as ShapeDtypeStructs), no allocation."""
  return nnx.split(nnx.eval_shape(lambda: VideoMAE(cfg, nnx.Rngs(0))), nnx.Param)


# ---------------------------------------------------------------- pure math
def _block_arrays(b: Block) -> dict:
  return block_weights(b.layernorm_before, b.query, b.key, b.value, b.attention_output, b.layernorm_after,
                       b.intermediate, b.output)


def _block(w, x, q_seg, k_valid, self_edge, *, heads, eps, dtype, attn_impl, attn_block, groups=None):
  """One ViTMAE layer (`core.layers.transformer_block`, exact GELU) with frame-segment attention; x
  (B,L,D) float32 residual stream, matmuls in `dtype`.

  groups: None, or static (q_start, q_end, k_end) row ranges covering [0, L) whose queries only need
  keys [0, k_end) (the block-causal structure of the decoder's reconstructed frames, see `decode`).
  """
  length = x.shape[1]

  def attention(q, k, v):
    if attn_impl == "flash" and length <= 2 * attn_block and not flash_fused(q, k, v):
      # short (the encoder's cls + gazed slots): one masked softmax. The tiled XLA path would pad to
      # whole tiles and visit all of them anyway (417 rows -> 528^2 scores instead of 417^2) inside a
      # loop; the fused CPU kernels have neither cost (and beat XLA's batched softmax ~5x here).
      mask = segment_mask(q_seg, q_seg, k_valid, self_edge, jnp.arange(length), length)
      return attend(q, k, v, mask)
    if attn_impl == "flash":   # tiles skip the block-causal upper triangle by themselves: no groups needed
      return flash_attention(q, k, v, q_seg[0], q_seg[0], k_valid, block=attn_block, self_edge=self_edge)
    att = lambda s, e, ke: segment_attention(  # noqa: E731
        q[:, s:e], k[:, :ke], v[:, :ke], q_seg[:, s:e], q_seg[:, :ke], k_valid[:, :ke],
        None if self_edge is None else self_edge[:, s:e], q_offset=s)
    if groups is None:
      return att(0, length, length)
    return jnp.concatenate([att(s, e, ke) for s, e, ke in groups], axis=1)

  return transformer_block(w, x, attention, heads=heads, eps=eps, dtype=dtype, tanh_gelu=False)


def _run_blocks(cfg: VideoMAEConfig, layers, x, q_seg, k_valid, self_edge, heads, groups=None):
  """The transformer blocks. With remat, a `lax.scan` over stacked block weights: in an unrolled loop
  XLA (CPU) schedules every layer's recomputation early and remat saves nothing (measured at L=4241:
  0.6 GB kept per layer, vs 0.08 GB with the scan)."""
  fn = lambda w, x: _block(w, x, q_seg, k_valid, self_edge, heads=heads, eps=cfg.layer_norm_eps,  # noqa: E731
                           dtype=cfg.jnp_dtype, attn_impl=cfg.resolved_attn_impl, attn_block=cfg.attn_block,
                           groups=groups)
  ws = [_block_arrays(layer) for layer in layers]
  if cfg.remat == "none" or not ws:
    for w in ws:
      x = fn(w, x)
    return x
  fn = jax.checkpoint(fn, policy=_REMAT_POLICIES[cfg.remat])
  stacked = jax.tree.map(lambda *a: jnp.stack(a), *ws)
  x, _ = jax.lax.scan(lambda h, w: (fn(w, h), None), x, stacked)
  return x


def pixel_patches(cfg: VideoMAEConfig, video: jax.Array) -> jax.Array:
  """video (B,T,C,224,224) -> (B,T*V,p*p*C) pixel patches of every scale, torch-exact bicubic per scale.

  Patch vectors are in (p, q, c) order, matching `patch_kernel` (p,p,C,D) and `decoder_pred`'s output.
  """
  b, t, c = video.shape[:3]
  p = cfg.patch_size
  out = []
  for s in cfg.scales:
    img = resize_bicubic(video, s, s)
    g = s // p
    img = img.reshape(b, t, c, g, p, g, p).transpose(0, 1, 3, 5, 4, 6, 2)
    out.append(img.reshape(b, t, g * g, p * p * c))
  return jnp.concatenate(out, axis=2).reshape(b, t * cfg.tokens_per_frame, p * p * c)


def unpatchify(cfg: VideoMAEConfig, x: jax.Array) -> jax.Array:
  """(..., grid^2, p*p*C) -> (..., C, 224, 224) (official `unpatchify`)."""
  g, p, c = cfg.grid, cfg.patch_size, cfg.num_channels
  lead = x.shape[:-2]
  x = x.reshape(*lead, g, g, p, p, c)
  n = len(lead)
  x = jnp.moveaxis(x, n + 4, n)                      # (..., C, g, g, p, p)
  x = jnp.swapaxes(x, n + 2, n + 3)                  # (..., C, g, p, g, p)
  return x.reshape(*lead, c, g * p, g * p)


def _encoder_add_table(cfg: VideoMAEConfig, emb: Embeddings) -> jax.Array:
  """(V, D): per local id, the resized 2-D position table (+ scale embedding)."""
  d, g = cfg.hidden_size, cfg.grid
  table = emb.position_embeddings[...][0, 1:].reshape(g, g, d).transpose(2, 0, 1)
  rows = []
  for i, s in enumerate(cfg.scales):
    gi = s // cfg.patch_size
    r = resize_bicubic(table, gi, gi).transpose(1, 2, 0).reshape(gi * gi, d)
    if cfg.scale_embed:
      r = r + emb.scale_embed[...][i]
    rows.append(r)
  return jnp.concatenate(rows, axis=0)


def _decoder_add_table(cfg: VideoMAEConfig, dec: Decoder) -> jax.Array:
  """(V, Dd): decoder table resampled along its flattened 196 length per scale (1-D bicubic)."""
  table = dec.decoder_pos_embed[...][0, 1:]
  rows = []
  for i, n in enumerate(cfg.tokens_per_scale):
    r = jnp.einsum("on,nd->od", jnp.asarray(bicubic_matrix(table.shape[0], n)), table,
                   precision=jax.lax.Precision.HIGHEST)
    if cfg.scale_embed:
      r = r + dec.decoder_scale_embed[...][i]
    rows.append(r)
  return jnp.concatenate(rows, axis=0)


def _time(module, frames):
  """Time-embedding rows for `frames`, or 0 when the config has no time embedding."""
  table = getattr(module, "time_embed", None)
  return 0.0 if table is None else table[...][frames]


def frame_groups(counts: tuple[int, ...], start: int, min_rows: int) -> tuple[tuple[int, int, int], ...]:
  """Static (q_start, q_end, k_end) groups of whole frames (>= min_rows rows each when possible) for
  rows laid out in frame order from `start`, rows [0, start) joining the first group: each group's
  queries only need the keys up to its own end (block-causal skipping)."""
  groups, s, e = [], 0, start
  for c in counts:
    e += c
    if e - s >= min_rows:
      groups.append((s, e, e))
      s = e
  if e > s or not groups:
    groups.append((s, e, e))
  return tuple(groups)


def embed_slots(cfg: VideoMAEConfig, emb: Embeddings, patches: jax.Array, ids: jax.Array) -> jax.Array:
  """Encoder input (B,N,D) float32 of the global ids (B,N), gathered from `pixel_patches` (B,T*V,P)."""
  v = cfg.tokens_per_frame
  pix = jnp.take_along_axis(patches, ids[..., None], axis=1)
  kernel = emb.patch_kernel[...].reshape(cfg.patch_dim, cfg.hidden_size)
  tok = dense(pix.astype(cfg.jnp_dtype), kernel, emb.patch_bias[...]).astype(jnp.float32)
  return tok + _encoder_add_table(cfg, emb)[ids % v] + _time(emb, ids // v)


def encoder_cls(cfg: VideoMAEConfig, emb: Embeddings, b: int) -> jax.Array:
  """(B,1,D) the encoder's cls row (cls token + its position row)."""
  cls = emb.cls_token[...] + emb.position_embeddings[...][:, :1]
  return jnp.broadcast_to(cls, (b, 1, cfg.hidden_size))


def decoder_rows(cfg: VideoMAEConfig, dec: Decoder, y: jax.Array, ids: jax.Array, table: jax.Array) -> jax.Array:
  """Decoder input rows: embedded tokens y (B,L,Dd) at global ids (L,) or (B,L), plus the resampled position
  table (`_decoder_add_table`, passed in so callers build it once) and the time row."""
  v = cfg.tokens_per_frame
  return y + table[ids % v] + _time(dec, ids // v)


def encode(model: VideoMAE, video, gazing_pos, if_padded_gazing, num_gazing_each_frame, static_counts=None):
  """Encoder over the gazed tokens. Returns (hidden (B,1+N,D) after the final LayerNorm, ids (B,N),
  real (B,N) bool, seg (N,) frame of each slot). `static_counts`: see `forward`."""
  cfg = model.cfg
  b, t = video.shape[:2]
  n = gazing_pos.shape[1]
  v = cfg.tokens_per_frame
  emb = model.vit.embeddings
  gazing_pos, if_padded_gazing = jnp.asarray(gazing_pos), jnp.asarray(if_padded_gazing)
  real = ~if_padded_gazing & (gazing_pos >= 0) & (gazing_pos < t * v)
  ids = jnp.where(real, gazing_pos, 0).astype(jnp.int32)  # padded -> canvas token 0 (official dummy)
  seg = slot_frames(num_gazing_each_frame, n)

  tok = embed_slots(cfg, emb, pixel_patches(cfg, video), ids)
  x = jnp.concatenate([encoder_cls(cfg, emb, b), tok], axis=1)

  q_seg = _seg_rows(cfg, b, jnp.concatenate([jnp.full((1,), -1, jnp.int32), seg]))
  k_valid = jnp.concatenate([jnp.ones((b, 1), bool), real], axis=1)
  # official quirk: every row but the last may see itself, even when padded; only the
  # padded rows' own outputs depend on it (real outputs never do).
  self_edge = jnp.broadcast_to(jnp.arange(n + 1) < n, (b, n + 1))
  groups = frame_groups(static_counts, 1, cfg.attn_block) if static_counts is not None and cfg.causal else None
  x = _run_blocks(cfg, model.vit.layer, x, q_seg, k_valid, self_edge, cfg.num_attention_heads, groups)
  x = layer_norm(x, model.vit.layernorm.scale[...], model.vit.layernorm.bias[...], cfg.layer_norm_eps)
  return x, ids, real, seg


def _seg_rows(cfg, b, seg):
  """Frame ids per row (B,L); without `causal` every token is in one block."""
  seg = seg if cfg.causal else jnp.where(seg < 0, -1, 0).astype(jnp.int32)
  return jnp.broadcast_to(seg, (b, seg.shape[0]))


def _live_slots(static_counts, num_recon: int) -> int | None:
  """How many gaze slots lie outside the R (distinct) reconstructed frames, when the static counts fix
  it whatever the frames are: every frame reconstructed, or the same slot count in every frame."""
  if static_counts is None:
    return None
  if num_recon >= len(static_counts):
    return 0
  if len(set(static_counts)) == 1:
    return sum(static_counts) - num_recon * static_counts[0]
  return None


def decode(model: VideoMAE, enc, ids, real, seg, frame_idx_to_reconstruct, num_frames, static_counts=None):
  """Decoder; returns the 224-scale predictions of the R frames, (B,R,grid^2,p*p*C) float32.

  The slots of reconstructed frames are dead rows here (masked as keys, outputs unused: the frame's
  full rows replace them). With `static_counts` that fix their number (`_live_slots`) they are dropped
  instead of masked: 416 of 4,657 rows when all 16 frames of a ratio-0.1 clip are reconstructed."""
  cfg = model.cfg
  dec = model.decoder
  b = ids.shape[0]
  v, dd = cfg.tokens_per_frame, cfg.decoder_hidden_size
  # Reconstructed frames are laid out in ascending frame order (static V-row blocks), so the
  # queries of the j-th one only need keys up to the end of its own block: causal skipping halves the
  # attention work of the R block. `rank` restores the caller's order of R at the end.
  r_in = frame_idx_to_reconstruct.astype(jnp.int32)
  r_idx, rank = jnp.sort(r_in), jnp.argsort(jnp.argsort(r_in))
  nr = r_idx.shape[0]
  y = dense(enc.astype(cfg.jnp_dtype), dec.decoder_embed.kernel[...], dec.decoder_embed.bias[...]).astype(jnp.float32)
  table = _decoder_add_table(cfg, dec)
  slots = decoder_rows(cfg, dec, y[:, 1:], ids, table)
  in_r = jnp.any(seg[:, None] == r_idx[None, :], axis=1)
  slot_seg, slot_valid = seg, real & ~in_r[None]
  live = _live_slots(static_counts, nr)
  if live is not None:
    keep = jnp.nonzero(~in_r, size=live)[0]
    slots, slot_seg, slot_valid = slots[:, keep], seg[keep], real[:, keep]
  ns = slots.shape[1]

  # canvas of the R frames: mask tokens, encoder outputs scattered back at their ids
  canvas = jnp.broadcast_to(dec.mask_token[...].reshape(1, 1, dd), (b, num_frames * v + 1, dd))
  canvas = canvas.at[jnp.arange(b)[:, None], jnp.where(real, ids, num_frames * v)].set(y[:, 1:])
  full_ids = (r_idx[:, None] * v + jnp.arange(v)[None]).reshape(-1)
  frames = jnp.repeat(r_idx, v)
  full = decoder_rows(cfg, dec, canvas[:, full_ids], full_ids, table)
  cls = y[:, :1] + dec.decoder_pos_embed[...][:, :1]
  x = jnp.concatenate([cls, slots, full], axis=1)

  row_seg = jnp.concatenate([jnp.full((1,), -1, jnp.int32), slot_seg, frames])
  k_valid = jnp.concatenate([jnp.ones((b, 1), bool), slot_valid, jnp.ones((b, nr * v), bool)], axis=1)
  groups, order = None, None
  if cfg.causal and cfg.resolved_attn_impl == "flash":
    # Flash skips the key tiles of later frames when frame ids are non-decreasing along the rows: put
    # the rows in frame order (cls, then per frame its slots and its reconstructed rows). Without it
    # the slot rows (all frames) sit in the first query tiles, which then visit every key tile.
    order = jnp.argsort(row_seg, stable=True)
    x, row_seg, k_valid = x[:, order], row_seg[order], k_valid[:, order]
  elif cfg.causal:
    s0 = 1 + ns
    groups = ((0, s0, s0 + nr * v),) + tuple((s0 + j * v, s0 + (j + 1) * v, s0 + (j + 1) * v) for j in range(nr))
  x = _run_blocks(cfg, dec.decoder_layers, x, _seg_rows(cfg, b, row_seg), k_valid, None,
                  cfg.decoder_num_attention_heads, groups)
  if order is not None:
    x = x[:, jnp.argsort(order)]

  x = x[:, 1 + ns:].reshape(b, nr, v, dd)[:, rank, cfg.scale_offsets[-1]:]   # only 224-scale rows are kept
  x = layer_norm(x, dec.decoder_norm.scale[...], dec.decoder_norm.bias[...], cfg.layer_norm_eps)
  return dense(x.astype(cfg.jnp_dtype), dec.decoder_pred.kernel[...], dec.decoder_pred.bias[...]).astype(jnp.float32)


def prefix_buckets(num_frames: int, num_recon: int, n: int) -> tuple[int, ...]:
  """At most n frame counts (ascending, the last = num_frames) minimising the expected frames a
  block-causal forward keeps when `num_recon` distinct frames are drawn uniformly: it needs the frames up
  to the latest reconstructed one, so k frames suffice with probability C(k,R) / C(T,R)."""
  t, r = num_frames, num_recon
  cdf = [comb(k, r) / comb(t, r) for k in range(t + 1)]
  # cost[j][k]: expected kept frames of the draws that need <= k frames, j buckets, the last one at k
  inf = float("inf")
  cost = [[inf] * (t + 1) for _ in range(n + 1)]
  back = [[0] * (t + 1) for _ in range(n + 1)]
  cost[0][0] = 0.0
  for j in range(1, n + 1):
    for k in range(1, t + 1):
      for a in range(k):
        c = cost[j - 1][a] + k * (cdf[k] - cdf[a])
        if c < cost[j][k] - 1e-12:
          cost[j][k], back[j][k] = c, a
  j = min(range(1, n + 1), key=lambda i: cost[i][t])
  out, k = [], t
  while k > 0:
    out.append(k)
    k, j = back[j][k], j - 1
  return tuple(sorted(out))


def prefix_lengths(static_counts: tuple[int, ...], num_recon: int, n: int) -> tuple[int, ...]:
  """The frame counts `forward(prefix_buckets_n=n)` compiles a branch for: `prefix_buckets`, less those
  whose frames hold no slot. A call runs the smallest one above its latest reconstructed frame."""
  t = len(static_counts)
  return tuple(k for k in prefix_buckets(t, num_recon, n) if sum(static_counts[:k]) > 0 or k == t)


def _prefix_forward(model, video, gazing_pos, if_padded_gazing, frames, static_counts, n_buckets):
  """The 224-scale predictions computed on the first k frames only, k the smallest of `prefix_lengths`
  that holds every reconstructed frame (one compiled branch each, picked at run time). Exact: under
  the block-causal mask no reconstructed frame sees a later frame's tokens, so dropping them changes
  nothing (the gaze slots are laid out in frame order)."""
  kept = prefix_lengths(static_counts, frames.shape[0], n_buckets)

  def branch(k):
    n = sum(static_counts[:k])
    def run(video, gazing_pos, if_padded_gazing, frames):
      counts = jnp.asarray(static_counts[:k], jnp.int32)
      enc, ids, real, seg = encode(model, video[:, :k], gazing_pos[:, :n], if_padded_gazing[:, :n], counts,
                                   static_counts[:k])
      return decode(model, enc, ids, real, seg, frames, k, static_counts[:k])
    return run

  need = jnp.max(frames.astype(jnp.int32)) + 1
  i = jnp.minimum(jnp.searchsorted(jnp.asarray(kept, jnp.int32), need), len(kept) - 1)
  return jax.lax.switch(i, [branch(k) for k in kept], video, gazing_pos, if_padded_gazing, frames)


def forward(graphdef, params, video, gazing_pos, if_padded_gazing, num_gazing_each_frame,
            frame_idx_to_reconstruct, static_counts: tuple[int, ...] | None = None,
            prefix_buckets_n: int = 1) -> dict:
  """The task model's forward (official `ViTMAEForPreTraining.forward` minus the loss).

  video (B,T,C,224,224) float32 in task space; gazing_pos (B,N) int global ids; if_padded_gazing
  (B,N) bool; num_gazing_each_frame (T,) int (slot counts incl. padding, sum = N);
  frame_idx_to_reconstruct (R,) int, distinct (as `randperm` yields). Returns {"pred_patches": (B,R,grid^2,p*p*C),
  "reconstruction": (B,R,C,224,224), "encoder_last_hidden_state": (B,1+N,D)}, float32.
  static_counts: optional Python tuple equal to `num_gazing_each_frame` (e.g. the fixed slot counts of
  `videomae_train.random_gaze`); it replaces the traced counts and lets the encoder skip the keys of
  later frames (about half its attention work). Outputs are identical either way.
  prefix_buckets_n > 1 (needs `static_counts`, R < T): the forward runs only on the frames up to the
  latest reconstructed one, rounded up to one of `prefix_buckets(T, R, n)` frame counts (for 2 random
  frames of 16 and n=4, 77% of the rows on average). The reconstructions are identical; the result
  then has no "encoder_last_hidden_state" (the skipped frames' rows were never computed).
  """
  model = nnx.merge(graphdef, params)
  cfg = model.cfg
  b, t = video.shape[:2]
  n = gazing_pos.shape[1]
  if t > cfg.max_num_frames:
    raise ValueError(f"video has {t} frames, the model embeds at most max_num_frames={cfg.max_num_frames}")
  if video.shape[2:] != (cfg.num_channels, cfg.image_size, cfg.image_size):
    raise ValueError(f"video shape {video.shape}: expected (B, T, {cfg.num_channels}, {cfg.image_size}, "
                     f"{cfg.image_size})")
  if gazing_pos.shape != (b, n) or if_padded_gazing.shape != (b, n) or num_gazing_each_frame.shape != (t,):
    raise ValueError(f"gaze shapes: gazing_pos {gazing_pos.shape}, if_padded_gazing {if_padded_gazing.shape}, "
                     f"num_gazing_each_frame {num_gazing_each_frame.shape}; expected (B,N), (B,N), (T,) with "
                     f"B={b}, T={t}")
  if frame_idx_to_reconstruct.ndim != 1:
    raise ValueError(f"frame_idx_to_reconstruct must be 1-D, got shape {frame_idx_to_reconstruct.shape}")
  if static_counts is not None:
    if len(static_counts) != t or sum(static_counts) != n:
      raise ValueError(f"static_counts {static_counts} must have T={t} entries summing to N={n}")
    num_gazing_each_frame = jnp.asarray(static_counts, jnp.int32)
  r = frame_idx_to_reconstruct.shape[0]
  if prefix_buckets_n > 1 and static_counts is not None and r < t:
    pred = _prefix_forward(model, video, gazing_pos, if_padded_gazing, frame_idx_to_reconstruct, static_counts,
                           prefix_buckets_n)
    return {"pred_patches": pred, "reconstruction": unpatchify(cfg, pred)}
  enc, ids, real, seg = encode(model, video, gazing_pos, if_padded_gazing, num_gazing_each_frame, static_counts)
  pred = decode(model, enc, ids, real, seg, frame_idx_to_reconstruct, t, static_counts)
  return {"pred_patches": pred, "reconstruction": unpatchify(cfg, pred), "encoder_last_hidden_state": enc}


def check_gaze_inputs(gazing_pos, if_padded_gazing, num_gazing_each_frame, num_frames: int,
                      tokens_per_frame: int, frame_idx_to_reconstruct=None):
  """Host-side validation (numpy); raises ValueError naming the first bad slot / frame.

  Checks: counts sum to N and are >= 0; every non-padded id lies in [0, T*V); reconstruct indices in
  [0, T). Padded slots may hold anything. Frames without a real slot are allowed.
  """
  pos, pad, cnt = np.asarray(gazing_pos), np.asarray(if_padded_gazing, bool), np.asarray(num_gazing_each_frame)
  if cnt.shape != (num_frames,) or (cnt < 0).any() or int(cnt.sum()) != pos.shape[1]:
    raise ValueError(f"num_gazing_each_frame {cnt.tolist()} must have {num_frames} non-negative entries summing to "
                     f"N={pos.shape[1]}")
  bad = ~pad & ((pos < 0) | (pos >= num_frames * tokens_per_frame))
  if bad.any():
    b, j = map(int, np.argwhere(bad)[0])
    raise ValueError(f"gazing_pos[{b}, {j}] = {int(pos[b, j])} is outside [0, {num_frames * tokens_per_frame}) "
                     f"in a non-padded slot")
  if frame_idx_to_reconstruct is not None:
    fr = np.asarray(frame_idx_to_reconstruct)
    if ((fr < 0) | (fr >= num_frames)).any():
      raise ValueError(f"frame_idx_to_reconstruct {fr.tolist()} has entries outside [0, {num_frames})")


def forward_flops(cfg: VideoMAEConfig, num_gazing_each_frame, frame_idx_to_reconstruct, real_slots=None) -> dict:
  """Matmul FLOPs of one clip's forward (host-side, for benchmarks): the work the official forward
  needs for this result. Encoder over cls + the N slots, decoder over cls + the slots of the other
  frames + V rows per reconstructed frame (the official decoder's rows), attention over the visible
  (block-causal, valid) key of every query only, patch embedding and read-out head included.

  num_gazing_each_frame (T,) slot counts; frame_idx_to_reconstruct (R,); real_slots (T,) real (not
  padded) slots per frame, default all. Returns {"encoder", "decoder", "total"} in FLOPs (float).
  """
  cnt = np.asarray(num_gazing_each_frame, np.int64)
  real = cnt if real_slots is None else np.asarray(real_slots, np.int64)
  r = np.zeros(cnt.shape, bool)
  r[np.asarray(frame_idx_to_reconstruct, np.int64)] = True
  v, d, dd = cfg.tokens_per_frame, cfg.hidden_size, cfg.decoder_hidden_size

  def stack(rows, keys, width, ffn, layers):
    # rows[f] queries of frame f each see cls + the valid keys of frames <= f; cls sees itself
    pairs = 1 + float(np.sum(rows * (1 + np.cumsum(keys))))
    n = 1 + float(np.sum(rows))
    return layers * (2 * n * (4 * width * width + 2 * width * ffn) + 4 * pairs * width)

  enc = 2 * float(cnt.sum()) * cfg.patch_dim * d + stack(cnt, real, d, cfg.intermediate_size, cfg.num_hidden_layers)
  rows = np.where(r, v, cnt)
  dec = (2 * (1 + float(cnt.sum())) * d * dd
         + stack(rows, np.where(r, v, real), dd, cfg.decoder_intermediate_size, cfg.decoder_num_hidden_layers)
         + 2 * float(r.sum()) * cfg.grid ** 2 * dd * cfg.patch_dim)
  return {"encoder": enc, "decoder": dec, "total": enc + dec}
