"""Compiled autoregressive gazing: the official generation schedule as one jitted program.

Official behaviour reproduced (fixtures gaze_tiny/generate_*):
  * per frame: a prefill feeds the previous frame's never-fed final chunk (at cumsum positions, EOS
    masked) plus the frame's vision tokens; each later step feeds the previous chunk of k tokens at the
    *reused* positions of the frame's last k vision tokens, with every new slot visible (EOS too);
  * token selection per step: no-repeat within the frame, no EOS, heads chosen in order with
    within-step exclusion, stop at the budget or when a head has nothing left; greedy (first-index
    argmax) or sampling (temperature, then top-k, then categorical);
  * the stopping rule: head i's predicted loss <= threshold replaces token i by EOS element-wise (holes),
    head 0 exempt on a frame's first step; a sample stops after the first step where any head met it;
  * at a frame boundary the attention mask of the frame's gaze slots is rebuilt (EOS slots invisible).

Fixed shapes: the KV cache is a fixed number of slots filled from slot 0 up, in lockstep for the batch;
a frame writes [k deferred-chunk slots | P vision slots | k per decode step actually taken] at a shared
cursor (at most T * (k + P + k * (max_steps - 1)) slots). Slots a sample does not use are simply
invalid keys (masked keys contribute exactly zero) and attention only visits chunks below the cursor
(`cached_attention`), so the compute follows the tokens written while the cache never changes shape
and budgets/stops are masks. Samples advance in lockstep; two batch modes:
  coupled=True  (official, needed for fixture parity): a finished sample keeps emitting EOS chunks
                that are fed while its batch mates continue, so results depend on the batch;
  coupled=False (default): a finished sample freezes; its last chunk is deferred exactly as if it ran
                alone, so every sample/tile gets the result it gets alone.
`frame_step` is the per-frame program: `rollout` scans it over frames, streaming calls it per frame.
"""
from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, struct

from autogaze_jax.gaze.config import GazeConfig
from autogaze_jax.gaze.decoder import cache_slots

NEG_INF = -jnp.inf


@dataclasses.dataclass(frozen=True)
class RolloutSpec:
  """Static shape/behaviour knobs of a compiled rollout (hashable)."""
  capacity: int                 # max gaze tokens per frame (>= every budget)
  tokens_per_step: int = 10     # k <= num_multi_token_pred
  max_frames: int = GazeConfig.max_num_frames   # cache sized for this many frames
  coupled: bool = False         # official batch coupling (see module doc)
  sample: bool = False          # sampling instead of greedy
  top_k: int = 50               # HF default warper when sampling (0 = off)
  use_threshold: bool = False   # apply the task-loss stopping rule

  @property
  def max_steps(self) -> int:
    return max(1, math.ceil(self.capacity / self.tokens_per_step))

  @property
  def gen_slots(self) -> int:
    return self.max_steps * self.tokens_per_step

  def frame_slots(self, frame_tokens: int) -> int:
    return self.tokens_per_step + frame_tokens + self.tokens_per_step * (self.max_steps - 1)


@struct.dataclass
class RolloutState:
  """What carries from one frame to the next (the streaming state)."""
  cache_k: jax.Array       # (layers, B, H, hd, S) keys transposed
  cache_v: jax.Array       # (layers, B, H, S, hd)
  kv_valid: jax.Array      # (B, S) bool: rebuilt validity of every slot
  nvalid: jax.Array        # (B,) visible tokens already in the cache (next cumsum position)
  defer_tok: jax.Array     # (B, k) the previous frame's final chunk, not yet fed
  defer_n: jax.Array       # (B,) its length
  frame: jax.Array         # () index of the next frame
  cursor: jax.Array        # () next free cache slot (shared by the batch)


def init_state(model, spec: RolloutSpec, batch: int) -> RolloutState:
  cfg = model.cfg
  slots = cache_slots(spec.max_frames * spec.frame_slots(cfg.num_frame_tokens))
  ck, cv = model.gaze_decoder.init_cache(batch, slots)
  k = spec.tokens_per_step
  return RolloutState(cache_k=ck, cache_v=cv, kv_valid=jnp.zeros((batch, slots), bool),
                      nvalid=jnp.zeros((batch,), jnp.int32), defer_tok=jnp.full((batch, k), cfg.eos_token_id, jnp.int32),
                      defer_n=jnp.zeros((batch,), jnp.int32), frame=jnp.zeros((), jnp.int32),
                      cursor=jnp.zeros((), jnp.int32))


def _select(scores, tl, gen, glen, active, first, budget, thr, temperature, spec: RolloutSpec, eos: int, key):
  """One step's token choice for all samples (official `_sample` body). scores (B, k, V) raw logits."""
  b, k, v = scores.shape
  # (a) no repeat of this frame's tokens, (b) no EOS.
  used = jnp.zeros((b, v), bool).at[jnp.arange(b)[:, None], gen].max(jnp.arange(gen.shape[1])[None] < glen[:, None])
  used = used.at[:, eos].set(True)
  scores = jnp.where(used[:, None, :], NEG_INF, scores)
  if spec.sample:
    # temperature then top-k (ties at the threshold kept), as the HF warpers; temperature is traced.
    scores = scores / temperature
    if spec.top_k:
      kth = jax.lax.top_k(scores, min(spec.top_k, v))[0][..., -1:]
      scores = jnp.where(scores < kth, NEG_INF, scores)
  toks, chosen_ok = [], []
  stopped = jnp.zeros((b,), bool)
  for i in range(k):
    s_i = scores[:, i]
    over_budget = glen + i >= budget
    all_inf = jnp.all(s_i == NEG_INF, axis=-1)
    if spec.coupled:  # official: the budget check is batch-shared, the all -inf check batch-global
      all_inf = jnp.broadcast_to(jnp.all(all_inf), all_inf.shape)
    stopped = stopped | over_budget | all_inf
    if spec.sample:
      tok = jax.random.categorical(jax.random.fold_in(key, i), s_i, axis=-1)
    else:
      tok = jnp.argmax(s_i, axis=-1)
    tok = jnp.where(stopped, eos, tok).astype(jnp.int32)
    toks.append(tok)
    chosen_ok.append(~stopped)
    # within-step exclusion uses the token as chosen (before any EOS replacement below)
    scores = scores.at[jnp.arange(b), i + 1:, tok].set(jnp.where(stopped[:, None], scores[jnp.arange(b), i + 1:, tok], NEG_INF))
  raw = jnp.stack(toks, 1)
  ok = jnp.stack(chosen_ok, 1)
  n_chosen = jnp.sum(ok, axis=1).astype(jnp.int32)
  early = n_chosen < k
  tok = jnp.where(active[:, None], raw, eos)
  meet = jnp.zeros((b, k), bool)
  if spec.use_threshold:
    meet = (tl <= thr[:, None]) & ok
    meet = meet.at[:, 0].set(meet[:, 0] & ~first)
    tok = jnp.where(meet, eos, tok)
  meet_max = glen + n_chosen >= budget
  return tok, raw, ok, n_chosen, jnp.any(meet, axis=1) | meet_max | early


def frame_step(model, state: RolloutState, vis: jax.Array, budget: jax.Array, thr: jax.Array,
               temperature: jax.Array, key: jax.Array, spec: RolloutSpec, rope_table=None):
  """Gaze one frame for the whole batch.

  vis (B, P, D) connector output of this frame; budget (B,) int tokens allowed; thr (B,) float32
  task-loss requirement (ignored unless spec.use_threshold); temperature () float (sampling only);
  rope_table: the decoder's `rope_table` over the cache slots (made here when not given; a scan over
  frames passes one made once).
  Returns (new state, out) with out = {tokens (B, gen_slots) local ids (EOS after the frame's
  length), length (B,), trace_tl / trace_chosen (max_steps, B, k), steps ()}.
  """
  cfg, dec = model.cfg, model.gaze_decoder
  k, p, eos = spec.tokens_per_step, cfg.num_frame_tokens, cfg.eos_token_id
  b = vis.shape[0]
  base = state.cursor
  rope = dec.rope_table(state.kv_valid.shape[1]) if rope_table is None else rope_table
  # ---- prefill: [deferred chunk | vision] at cumsum positions ----
  dvalid = (jnp.arange(k)[None] < state.defer_n[:, None]) & (state.defer_tok != eos)
  dpos = state.nvalid[:, None] + jnp.cumsum(dvalid, axis=1) - 1
  ndef = jnp.sum(dvalid, axis=1).astype(jnp.int32)
  vstart = state.nvalid + ndef
  vpos = vstart[:, None] + jnp.arange(p)[None]
  x = jnp.concatenate([dec.embed(state.defer_tok), vis.astype(cfg.jnp_dtype)], axis=1)
  pos = jnp.concatenate([dpos, vpos], axis=1)
  new_valid = jnp.concatenate([dvalid, jnp.ones((b, p), bool)], axis=1)
  kv_valid = jax.lax.dynamic_update_slice(state.kv_valid, new_valid, (0, base))
  h_last, cache = dec.hidden_cached(x, pos, (state.cache_k, state.cache_v), base, kv_valid, rope)
  nvalid = vstart + p
  dec_pos = vstart[:, None] + (p - k) + jnp.arange(k)[None]   # reused decode positions
  dec_base = base + k + p

  gs = spec.gen_slots
  carry = dict(scores=dec.logits(h_last)[:, :k], tl=dec.task_loss(h_last)[:, :k], cache=cache, kv_valid=kv_valid,
               gen=jnp.full((b, gs), eos, jnp.int32), glen=jnp.zeros((b,), jnp.int32),
               active=jnp.ones((b,), bool), last_tok=jnp.full((b, k), eos, jnp.int32),
               last_n=jnp.zeros((b,), jnp.int32), step=jnp.zeros((), jnp.int32),
               trace_tl=jnp.zeros((spec.max_steps, b, k), jnp.float32),
               trace_chosen=jnp.full((spec.max_steps, b, k), -1, jnp.int32))

  def select(c):
    kk = jax.random.fold_in(key, c["step"])
    stepping = c["active"] | spec.coupled
    tok, raw, ok, n_chosen, stop = _select(c["scores"], c["tl"], c["gen"], c["glen"], c["active"],
                                           c["step"] == 0, budget, thr, temperature, spec, eos, kk)
    n_chosen = jnp.where(stepping, n_chosen, 0)
    idx = jnp.where(jnp.arange(k)[None] < n_chosen[:, None], c["glen"][:, None] + jnp.arange(k)[None], gs)
    gen = c["gen"].at[jnp.arange(b)[:, None], idx].set(tok, mode="drop")
    c = dict(c, gen=gen, glen=c["glen"] + n_chosen, active=c["active"] & ~stop,
             last_tok=jnp.where(stepping[:, None], tok, c["last_tok"]),
             last_n=jnp.where(stepping, n_chosen, c["last_n"]),
             trace_tl=c["trace_tl"].at[c["step"]].set(c["tl"]),
             trace_chosen=c["trace_chosen"].at[c["step"]].set(jnp.where(ok, raw, -1)))
    return c

  def decode(c):
    # Feed the chunk just chosen (samples still stepping); its slots are visible, EOS included.
    feed = c["active"] | (spec.coupled & jnp.any(c["active"]))
    start = dec_base + c["step"] * k
    kvv = jax.lax.dynamic_update_slice(c["kv_valid"], jnp.broadcast_to(feed[:, None], (b, k)), (0, start))
    hl, cache = dec.hidden_cached(dec.embed(c["last_tok"]), dec_pos, c["cache"], start, kvv, rope)
    return dict(c, cache=cache, kv_valid=kvv, scores=dec.logits(hl)[:, :k], tl=dec.task_loss(hl)[:, :k],
                step=c["step"] + 1)

  carry = select(carry)
  carry = jax.lax.while_loop(lambda c: jnp.any(c["active"]) & (c["step"] < spec.max_steps - 1),
                             lambda c: select(decode(c)), carry)
  # ---- frame end: rebuild the mask of the fed decode slots (EOS -> invisible) ----
  glen, gen = carry["glen"], carry["gen"]
  nd = k * (spec.max_steps - 1)
  fed = (jnp.ceil(glen / k).astype(jnp.int32) - 1) * k
  dvalid_fed = (jnp.arange(nd)[None] < fed[:, None]) & (gen[:, :nd] != eos)
  kv_valid = jax.lax.dynamic_update_slice(carry["kv_valid"], dvalid_fed, (0, dec_base)) if nd else carry["kv_valid"]
  new_state = RolloutState(cache_k=carry["cache"][0], cache_v=carry["cache"][1], kv_valid=kv_valid,
                           nvalid=nvalid + jnp.sum(dvalid_fed, axis=1).astype(jnp.int32),
                           defer_tok=carry["last_tok"], defer_n=carry["last_n"], frame=state.frame + 1,
                           cursor=dec_base + k * carry["step"])
  out = dict(tokens=gen, length=glen, trace_tl=carry["trace_tl"], trace_chosen=carry["trace_chosen"],
             steps=carry["step"] + 1)
  return new_state, out


def slot_ids(tokens, length, vocab_per_frame: int):
  """Fixed-capacity rollout tokens (R, T, C) + lengths (R, T) -> (global ids, padded), both (R, T, C).

  Slots past a row's length hold EOS; EOS slots are padding; global id = local + V*t, so an EOS pad
  holds V*(t+1) as the official generate writes it. jax arrays in, jax out (GRPO teacher-forces these
  slots in its jitted step); numpy in, numpy out (the host-side `generate.compact`);
  `generate.compact` trims them to the official variable-length layout.
  """
  xp = jnp if isinstance(tokens, jax.Array) else np   # host arrays stay on the host (no device round trip)
  t, c = tokens.shape[1:]
  eos = vocab_per_frame
  local = xp.where(xp.arange(c)[None, None] < length[..., None], tokens, eos)
  return local + vocab_per_frame * xp.arange(t)[None, :, None], local == eos


def budgets_from_ratio(ratio, frames: int,
                       vocab_per_frame: int = GazeConfig.num_vision_tokens_each_frame) -> np.ndarray:
  """Official per-frame budgets: clamp(int(float32(ratio) * 265 in float32), min=1)."""
  r = np.broadcast_to(np.asarray(ratio, np.float32), (frames,))
  return np.maximum(1, (r * np.float32(vocab_per_frame)).astype(np.float32).astype(np.int64))


@functools.partial(jax.jit, static_argnames=("graphdef", "spec"), donate_argnames=("state",))
def frame_step_jit(graphdef, params, state, vis, budget, thr, temperature, key, spec: RolloutSpec):
  """Streaming entry point: one frame, the carried state donated (its cache is updated in place)."""
  return frame_step(nnx.merge(graphdef, params), state, vis, budget, thr, temperature, key, spec)


def rollout_frames(model, vis, budgets, thr, temperature, key, spec: RolloutSpec, state=None):
  """Scan `frame_step` over frames. vis (B, T, P, D); budgets (B, T) int; thr (B, T) float32."""
  b, t = vis.shape[:2]
  if t > spec.max_frames:
    raise ValueError(f"clip has {t} frames but the rollout cache holds {spec.max_frames}")
  state = init_state(model, spec, b) if state is None else state
  rope = model.gaze_decoder.rope_table(state.kv_valid.shape[1])

  def body(st, xs):
    v, bud, th, i = xs
    return frame_step(model, st, v, bud, th, temperature, jax.random.fold_in(key, i), spec, rope)

  xs = (jnp.swapaxes(vis, 0, 1), jnp.swapaxes(budgets, 0, 1), jnp.swapaxes(thr, 0, 1), jnp.arange(t))
  state, outs = jax.lax.scan(body, state, xs)
  outs = dict(outs, tokens=jnp.swapaxes(outs["tokens"], 0, 1), length=jnp.swapaxes(outs["length"], 0, 1))
  return state, outs


@functools.partial(jax.jit, static_argnames=("graphdef", "spec"))
def rollout(graphdef, params, pixel_values, budgets, thr, temperature, key, spec: RolloutSpec):
  """Whole-clip gazing in one program: embed all frames, then scan the frame step.

  pixel_values (B, T, 3, H, W) processor output; budgets (B, T) int32; thr (B, T) float32.
  Returns per-frame fixed-capacity outputs: tokens (B, T, gen_slots), length (B, T),
  trace_tl / trace_chosen (T, max_steps, B, k) (see `frame_step`), steps (T,).
  """
  model = nnx.merge(graphdef, params)
  vis, _ = model.embed_video(pixel_values)
  _, outs = rollout_frames(model, vis, budgets, thr, temperature, key, spec)
  return outs
