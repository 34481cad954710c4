"""The judge's forward for one reconstructed frame with the earlier frames cached (greedy label search).

Under the block-causal mask, the rows of frames < t (encoder: cls + their gaze slots; decoder: cls + their
slots) attend only to cls and frames <= their own, so while frame t is searched (labels/greedy.py) their
hidden states, and hence every layer's keys and values, are the same for every candidate set. `prefix_kv`
computes those keys/values once; `frame_loss` then runs only what a candidate changes:

  encoder  the own set of frame t (n_own slots), queries against [cached prefix | own set]
  decoder  the V rows of frame t (mask tokens with the own set's encoder outputs scattered in),
           queries against [cached prefix | frame t's rows]

which is exactly what the full forward (`model.forward` with R = {t}) computes for frame t: the frame-t
slots are masked as decoder keys there (frame t is reconstructed), later frames have no slots, cls sees
only itself. The results equal the full forward up to float summation order
(tests/labels/test_greedy_cache.py). Needs a block-causal judge (`cfg.causal`).

Shapes (one clip, batch axis 1 kept for the model's helpers): video (1,T,C,224,224) task space,
prefix ids (n_prefix,) global ids of frames < t packed (first `plen` real), own set (n_own,) local ids of
frame t (first `set_len` real).
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from autogaze_jax.core.layers import attend, dense, layer_norm, transformer_block
from autogaze_jax.judge.losses import frame_losses
from autogaze_jax.judge.model import (_block_arrays, _decoder_add_table, decoder_rows, embed_slots, encoder_cls,
                                      pixel_patches, unpatchify)
from autogaze_jax.judge.segment_attention import segment_mask


def _kv(cfg, w, x, heads):
  """Keys and values a block computes from its input x (B,L,D): (B,L,heads,D/heads) each."""
  b, length, d = x.shape
  h = layer_norm(x, *w["ln1"], cfg.layer_norm_eps).astype(cfg.jnp_dtype)
  return tuple(dense(h, *w[p]).reshape(b, length, heads, d // heads) for p in ("k", "v"))


def _blocks(cfg, layers, x, mask, heads, cache=None):
  """Rows x (B,L,D) through the blocks. cache None: self-attention under `mask` (B,L,L), returns (x, the
  per-layer (k, v) of the inputs). cache [(k, v)] * layers: queries attend to [cached keys | own keys]
  under `mask` (B,L,Lc+L), returns (x, None)."""
  kvs = []
  for i, layer in enumerate(layers):
    w = _block_arrays(layer)
    if cache is None:
      kvs.append(_kv(cfg, w, x, heads))
      attention = lambda q, k, v: attend(q, k, v, mask)  # noqa: E731
    else:
      ck, cv = cache[i]
      attention = lambda q, k, v, ck=ck, cv=cv: attend(  # noqa: E731
          q, jnp.concatenate([ck, k], axis=1), jnp.concatenate([cv, v], axis=1), mask)
    x = transformer_block(w, x, attention, heads=heads, eps=cfg.layer_norm_eps, dtype=cfg.jnp_dtype, tanh_gelu=False)
  return x, (kvs if cache is None else None)


class PrefixKV(NamedTuple):
  """Per-layer (keys, values) of [cls, prefix slots] in the encoder and the decoder, the rows' validity
  as keys (1,1+n_prefix), and the clip's pixel patches (every candidate gathers its own set from them)."""
  enc: list
  dec: list
  valid: jax.Array
  patches: jax.Array


def prefix_kv(graphdef, params, video, prefix_ids, plen) -> PrefixKV:
  """Encoder and decoder keys/values of cls + the first `plen` slots of `prefix_ids` (frames < t)."""
  model = nnx.merge(graphdef, params)
  cfg, emb, dec = model.cfg, model.vit.embeddings, model.decoder
  if not cfg.causal:
    raise ValueError("prefix caching needs a block-causal judge (VideoMAEConfig.causal = True)")
  v, n = cfg.tokens_per_frame, prefix_ids.shape[0]
  real = jnp.arange(n) < plen
  ids = jnp.where(real, prefix_ids, 0).astype(jnp.int32)[None]
  patches = pixel_patches(cfg, video)
  x = jnp.concatenate([encoder_cls(cfg, emb, 1), embed_slots(cfg, emb, patches, ids)], axis=1)
  seg = jnp.concatenate([jnp.full((1, 1), -1, jnp.int32), ids // v], axis=1)
  valid = jnp.concatenate([jnp.ones((1, 1), bool), real[None]], axis=1)
  mask = segment_mask(seg, seg, valid, None, None, n + 1)
  x, enc_kv = _blocks(cfg, model.vit.layer, x, mask, cfg.num_attention_heads)
  x = layer_norm(x, model.vit.layernorm.scale[...], model.vit.layernorm.bias[...], cfg.layer_norm_eps)
  y = dense(x.astype(cfg.jnp_dtype), dec.decoder_embed.kernel[...], dec.decoder_embed.bias[...]).astype(jnp.float32)
  cls = y[:, :1] + dec.decoder_pos_embed[...][:, :1]
  x = jnp.concatenate([cls, decoder_rows(cfg, dec, y[:, 1:], ids, _decoder_add_table(cfg, dec))], axis=1)
  _, dec_kv = _blocks(cfg, dec.decoder_layers, x, mask, cfg.decoder_num_attention_heads)
  return PrefixKV(enc_kv, dec_kv, valid, patches)


def frame_prediction(graphdef, params, cache: PrefixKV, t, set_ids, set_len) -> jax.Array:
  """Frame t's reconstruction (1,1,C,224,224) from the cached prefix + the own set (local ids (n_own,),
  first `set_len` real)."""
  model = nnx.merge(graphdef, params)
  cfg, emb, dec = model.cfg, model.vit.embeddings, model.decoder
  v, n_own = cfg.tokens_per_frame, set_ids.shape[0]
  real = jnp.arange(n_own) < set_len
  local = jnp.where(real, set_ids, 0).astype(jnp.int32)
  # encoder: the own set sees every valid prefix key and its own real slots (all rows are frame t)
  x = embed_slots(cfg, emb, cache.patches, (local + v * t)[None])
  keys = jnp.concatenate([cache.valid, real[None]], axis=1)
  mask = jnp.broadcast_to(keys[:, None], (1, n_own, keys.shape[1]))
  x, _ = _blocks(cfg, model.vit.layer, x, mask, cfg.num_attention_heads, cache.enc)
  x = layer_norm(x, model.vit.layernorm.scale[...], model.vit.layernorm.bias[...], cfg.layer_norm_eps)
  y = dense(x.astype(cfg.jnp_dtype), dec.decoder_embed.kernel[...], dec.decoder_embed.bias[...]).astype(jnp.float32)
  # decoder: frame t's V rows (mask token, the own set's outputs at their ids), keys [prefix | frame t]
  dd = cfg.decoder_hidden_size
  canvas = jnp.broadcast_to(dec.mask_token[...].reshape(1, 1, dd), (1, v + 1, dd))
  canvas = canvas.at[0, jnp.where(real, local, v)].set(y[0])[:, :v]
  x = decoder_rows(cfg, dec, canvas, v * t + jnp.arange(v), _decoder_add_table(cfg, dec))
  keys = jnp.concatenate([cache.valid, jnp.ones((1, v), bool)], axis=1)
  mask = jnp.broadcast_to(keys[:, None], (1, v, keys.shape[1]))
  x, _ = _blocks(cfg, dec.decoder_layers, x, mask, cfg.decoder_num_attention_heads, cache.dec)
  x = layer_norm(x[:, cfg.scale_offsets[-1]:], dec.decoder_norm.scale[...], dec.decoder_norm.bias[...],
                 cfg.layer_norm_eps)
  pred = dense(x.astype(cfg.jnp_dtype), dec.decoder_pred.kernel[...], dec.decoder_pred.bias[...]).astype(jnp.float32)
  return unpatchify(cfg, pred[:, None])


def frame_loss(graphdef, params, perceptual, video, cache: PrefixKV, t, set_ids, set_len,
               target_features=None) -> jax.Array:
  """Frame t's reconstruction loss () float32 (the judge's configured terms) for one candidate set;
  `target_features`: `losses.perceptual_targets` of frame t, computed once for all candidate sets."""
  cfg = nnx.merge(graphdef, params).cfg
  pred = frame_prediction(graphdef, params, cache, t, set_ids, set_len)
  return frame_losses(cfg, pred, frame_target(video, t), perceptual, target_features)[0][0, 0]


def frame_target(video, t) -> jax.Array:
  """(1,1,C,H,W): frame t of video (1,T,C,H,W), the reconstruction target."""
  return jax.lax.dynamic_slice_in_dim(video, t, 1, axis=1)
