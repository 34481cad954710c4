"""A deliberately plain reference of the official generation schedule (batch of one, greedy).

Python lists for the KV cache and the attention mask, one eager forward per step, the official
`_sample` control flow transcribed line by line. Slow and shape-dynamic on
purpose: it shares no scheduling code with autogaze_jax.gaze.rollout, only the layer math.
"""
import jax.numpy as jnp
import numpy as np

from autogaze_jax.core.layers import attend


def _feed(dec, cache, x, pos, mask_all):
  """Append len(x) tokens to the list cache; mask_all covers every slot incl. the new ones."""
  n = x.shape[0]
  cos, sin = dec._rope(jnp.asarray(pos)[None])
  h = x[None]
  for li, layer in enumerate(dec.layers):
    q, k, v = dec._qkv(layer, h, cos, sin)
    cache[li][0].extend(list(k[0]))
    cache[li][1].extend(list(v[0]))
    kk, vv = jnp.stack(cache[li][0])[None], jnp.stack(cache[li][1])[None]
    total = kk.shape[1]
    q_slot = np.arange(total - n, total)[:, None]
    mask = (np.arange(total)[None] <= q_slot) & np.asarray(mask_all, bool)[None]
    h = dec._finish(layer, h, attend(q, kk, vv, jnp.asarray(mask)[None]))
  last = dec.final_norm(h)[0, -1]
  return np.asarray(dec.logits(last)), np.asarray(dec.task_loss(last))


def reference_generate(model, pixel_values, budget: int, threshold, k: int):
  """-> list over frames of the frame's token list (local ids, EOS=V)."""
  cfg, dec = model.cfg, model.gaze_decoder
  eos = cfg.eos_token_id
  vis = np.asarray(model.embed_video(jnp.asarray(pixel_values))[0])[0]
  cache = [([], []) for _ in dec.layers]
  hist_emb, hist_mask = [], []     # the official Python lists (whole history)
  frames = []
  for t in range(vis.shape[0]):
    hist_emb += list(vis[t])
    hist_mask += [1] * vis.shape[1]
    positions = np.cumsum(hist_mask) - 1
    n_cached = len(cache[0][0])
    mask_now = list(hist_mask)
    scores, tl = _feed(dec, cache, jnp.asarray(np.stack(hist_emb[n_cached:])), positions[n_cached:], mask_now)
    dec_pos = positions[-k:]
    gen, unfinished, first = [], True, True
    while True:
      s = scores[:k].copy()
      s[:, gen] = -np.inf
      s[:, eos] = -np.inf
      chunk, early = [], False
      for i in range(k):
        if len(chunk) + len(gen) >= budget or np.all(s[i] == -np.inf):
          early = True
          break
        tok = int(np.argmax(s[i]))
        chunk.append(tok)
        s[i + 1:, tok] = -np.inf
      if not unfinished:
        chunk = [eos] * len(chunk)
      meet = [False] * len(chunk)
      if threshold is not None:
        meet = [bool(tl[i] <= np.float32(threshold)) for i in range(len(chunk))]
        if first:
          meet[0] = False
        chunk = [eos if m else c for c, m in zip(chunk, meet)]
      hit_max = len(chunk) + len(gen) >= budget
      gen += chunk
      unfinished = unfinished and not any(meet) and not hit_max and not early
      first = False
      if not unfinished:
        break
      mask_now += [1] * len(chunk)
      emb = np.asarray(dec.embed(jnp.asarray(chunk)))
      scores, tl = _feed(dec, cache, jnp.asarray(emb), dec_pos[-len(chunk):], mask_now)
    frames.append(gen)
    hist_emb += list(np.asarray(dec.embed(jnp.asarray(gen))))
    hist_mask += [int(g != eos) for g in gen]
  return frames
