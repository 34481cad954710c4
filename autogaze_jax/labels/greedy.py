"""Greedy gaze-label search against the frozen VideoMAE: the NTP labels.

For each frame t in order, repeatedly add the not-yet-chosen patch (any scale, 265 local ids) whose
addition most lowers frame t's reconstruction loss given everything chosen so far (earlier frames
included), until the loss is <= tau (after at least `min_tokens` patches) or the frame's `budget` is
reached; the chosen ids (in order) and the loss after each addition are the labels.

Compiled and vectorised. One greedy step for B clips in lock-step at the same frame t is one jitted
call: every candidate set of every clip is evaluated by one batched VideoMAE forward (nested `vmap`:
clips x candidate sets; the video is un-batched over the candidate axis, so its patch pyramid and the
reconstruction target are computed once per clip). The candidate axis can be sharded over the mesh's
`data` axis. Shapes are static and masks do the rest; the host only loops over frames and steps.

Layout of one evaluated set (why it equals the official forward): the loss of frame t depends only on
the token *sets* of frames <= t (block-causal mask, order-free inside a frame, absolute time
embeddings), so each clip's gaze is packed as
    [earlier frames' chosen tokens, frame by frame | own frame: S + candidate | padding up to N]
with per-clip slot counts (the padding counted in frame t, later frames 0 slots) and frame t the only
reconstructed frame. N is the batch's longest set rounded up to `slot_bucket`, so the encoder sees at
most `slot_bucket - 1` wasted slots and each distinct N compiles once (about T*k_t/slot_bucket programs
per run). `tests/labels/test_greedy.py` checks the packed layout against the natural one.

Prefix cache (`GreedyConfig.prefix_cache`, on by default for a block-causal judge): while frame t is
searched the earlier frames' rows attend only to cls and frames <= their own, so their keys/values in every
encoder and decoder layer are computed once per frame (`prefix_caches`) and each candidate set runs only
its own slots and frame t's 265 decoder rows (`cached_set_losses`, judge/prefix_cache.py). Same losses up
to float summation order, same labels (tests/labels/test_greedy_cache.py); with the ViT-MAE-L judge a set
costs ~27 GFLOP instead of 60-335 (frame 0-15 of a ratio-0.1 clip): benchmarks/greedy.py.

Variants (`GreedyConfig`; each changes the labels slightly, the variant name goes in the side file):
  candidates="all"             exact greedy: all 265 ids, chosen ones masked.
  candidates="random"          `num_candidates` random unchosen ids per step (stochastic greedy).
  candidates="coarse_to_fine"  evaluate every coarser-scale id (32/64/112: 69), then only the 224-scale
                               children of the `c2f_top` best 112-scale cells by single-add loss (4
                               each; an already chosen cell scores the current loss, so it ranks last).
  k_per_step > 1               chunked additions: add the k best single-add candidates at once (by
                               single-add loss), then evaluate the k-1 longer prefixes so every recorded
                               loss is the exact loss of its prefix; stops inside the chunk as usual.
  patience > 0                 stagnation stop: end a frame after `patience` additions without an
                               improvement of more than `eps`.
`variant_report` compares each variant's labels with exact greedy at equal patch counts.

Labelling a dataset with this search (resumable shards, the threaded loop) is `labels/loop.py`.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import time
from typing import Mapping, Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from autogaze_jax.judge import prefix_cache
from autogaze_jax.judge.losses import perceptual_targets, reconstruction_task

CANDIDATE_MODES = ("all", "random", "coarse_to_fine")
LOSS_DECIMALS = 5          # losses as floats with 4-5 decimals
_OWN_BUCKET = 16           # cached search: own-set slots rounded up to this (few compiles, few wasted rows)
_STEP_STRIDE = 1 << 12     # rng fold-in: t * stride + step (a frame never has 4096 steps)


# ---------------------------------------------------------------- config
@dataclasses.dataclass(frozen=True)
class GreedyConfig:
  """Greedy search settings; frozen so it is a static jit argument."""
  tau: float = 0.5                 # stop a frame once its loss is <= tau ...
  budget: int = 198                # ... or it has this many patches (the recipe's 0.75 of 265 ids)
  min_tokens: int = 1              # never stop before this many patches (>= 1: empty frames break NTP)
  candidates: str = "all"          # see CANDIDATE_MODES
  num_candidates: int = 64         # m of candidates="random"
  c2f_top: int = 8                 # 112-scale cells expanded by candidates="coarse_to_fine"
  k_per_step: int = 1              # patches added per evaluation round
  patience: int = 0                # stagnation stop (0 = off)
  eps: float = 0.0
  slot_bucket: int = 64            # gaze slots per evaluated set rounded up to a multiple of this (compiles)
  candidate_chunk: int = 0         # evaluate at most this many sets per clip at once (0 = all; memory)
  seed: int = 0                    # candidate subsampling randomness (per clip, frame and step)
  prefix_cache: bool = True        # earlier frames' keys/values computed once per frame (block-causal judge;
                                   # same labels, ~5x less work, see judge/prefix_cache.py); False: full forwards

  def __post_init__(self):
    def need(ok, field, want):
      if not ok:
        raise ValueError(f"GreedyConfig.{field} = {getattr(self, field)!r}: expected {want}")
    need(self.candidates in CANDIDATE_MODES, "candidates", f"one of {CANDIDATE_MODES}")
    need(self.budget >= 1, "budget", ">= 1 (at most the judge's ids per frame, checked by GreedyLabeler)")
    need(1 <= self.min_tokens <= self.budget, "min_tokens", f"in [1, budget={self.budget}] (empty frames break NTP)")
    need(math.isfinite(self.tau), "tau", "a finite float")
    need(self.num_candidates >= 1, "num_candidates", ">= 1")
    need(self.c2f_top >= 1, "c2f_top", ">= 1")
    need(1 <= self.k_per_step <= self.budget, "k_per_step", f"in [1, budget={self.budget}]")
    need(self.patience >= 0, "patience", ">= 0")
    need(self.slot_bucket >= 1, "slot_bucket", ">= 1")
    need(self.candidate_chunk >= 0, "candidate_chunk", ">= 0")

  @property
  def variant(self) -> str:
    """Short name of the search variant, e.g. "exact", "random64+k4", "c2f8"."""
    name = {"all": "exact", "random": f"random{self.num_candidates}", "coarse_to_fine": f"c2f{self.c2f_top}"}
    out = name[self.candidates] + (f"+k{self.k_per_step}" if self.k_per_step > 1 else "")
    return out + (f"+patience{self.patience}" if self.patience else "")

  def replace(self, **kw) -> "GreedyConfig":
    return dataclasses.replace(self, **kw)


@dataclasses.dataclass
class ClipLabel:
  """One clip's labels: per frame, global ids in order, the loss after each, and whether tau was reached."""
  gazing_pos: list[list[int]]
  task_losses: list[list[float]]
  reached: list[bool]
  evals: int = 0                   # candidate-set evaluations spent on this clip (its share of the batch)

  def entry(self) -> dict:
    return {"gazing_pos": self.gazing_pos,
            "task_losses": [[round(float(x), LOSS_DECIMALS) for x in f] for f in self.task_losses]}


@flax.struct.dataclass
class FrameState:
  """Per-clip search state of the current frame. own_ids/own_loss (B,budget): chosen local ids and the
  loss after each; n (B,) chosen so far; loss (B,) current loss; done (B,); best/stall for patience."""
  own_ids: jax.Array
  own_loss: jax.Array
  n: jax.Array
  loss: jax.Array
  done: jax.Array
  best: jax.Array
  stall: jax.Array
  step: jax.Array


def init_frame_state(batch: int, budget: int) -> FrameState:
  return FrameState(own_ids=jnp.zeros((batch, budget), jnp.int32), own_loss=jnp.zeros((batch, budget), jnp.float32),
                    n=jnp.zeros((batch,), jnp.int32), loss=jnp.full((batch,), jnp.inf, jnp.float32),
                    done=jnp.zeros((batch,), bool), best=jnp.full((batch,), jnp.inf, jnp.float32),
                    stall=jnp.zeros((batch,), jnp.int32), step=jnp.zeros((), jnp.int32))


# ---------------------------------------------------------------- batched set evaluation
def _round_up(x: int, m: int) -> int:
  return -(-x // m) * m


def pack_candidate_set(prefix_ids, plen, prefix_counts, t, set_ids, set_len, n_slots: int, tokens_per_frame: int):
  """One clip, one own-frame set -> (gazing_pos (N,), if_padded (N,) bool, counts (T,)), N = n_slots.

  prefix_ids (L,): earlier frames' global ids packed frame by frame (first `plen` real);
  prefix_counts (T,): real prefix tokens per frame (0 for frames >= t); t scalar; set_ids (C,) local ids
  of frame t, the first `set_len` real. Layout: [prefix (plen) | own set (set_len) | padding]; the
  padding is counted in frame t's segment (padded keys are masked, so this changes nothing), hence
  every slot belongs to a frame <= t and the counts sum to N. Needs plen + set_len <= N.
  """
  pos = jnp.arange(n_slots)
  own_pos = pos - plen
  in_prefix = pos < plen
  in_own = (own_pos >= 0) & (own_pos < set_len)
  own = jnp.take(set_ids, jnp.clip(own_pos, 0, set_ids.shape[0] - 1)) + tokens_per_frame * t
  gp = jnp.where(in_prefix, jnp.take(prefix_ids, jnp.clip(pos, 0, prefix_ids.shape[0] - 1)), jnp.where(in_own, own, 0))
  counts = prefix_counts.astype(jnp.int32).at[t].set(n_slots - plen)
  return gp.astype(jnp.int32), ~(in_prefix | in_own), counts


def set_losses(graphdef, params, perceptual, video, prefix, t, set_ids, set_len, *, n_slots: int, chunk: int = 0,
               mesh=None) -> jax.Array:
  """Frame-t loss of every candidate set: (B,M) float32.

  video (B,T,3,224,224) task space; prefix = (ids (B,L) int32 packed earlier-frame global ids,
  plen (B,) int32, counts (B,T) int32); t scalar int32; set_ids (B,M,C) int32 local ids of frame t;
  set_len (B,M) int32; n_slots (static) gaze slots per set (>= plen + set_len). The candidate axis M is
  sharded over `mesh`'s data axis when it divides; `chunk` bounds how many sets of a clip run at once.
  """
  v = nnx.merge(graphdef, params).cfg.tokens_per_frame
  r = jnp.reshape(t, (1,)).astype(jnp.int32)

  def per_clip(vid, pids, plen, pcnt, sids, slen):
    def per_set(ids, n):
      gp, pad, counts = pack_candidate_set(pids, plen, pcnt, t, ids, n, n_slots, v)
      out = reconstruction_task(graphdef, params, vid[None], gp[None], pad[None], counts, r, perceptual)
      return out["loss_each_reconstruction_frame"][0, 0]
    return _over_sets(per_set, sids, slen, chunk)

  return jax.vmap(per_clip)(video, *prefix, _shard_sets(set_ids, mesh), _shard_sets(set_len, mesh))


def prefix_caches(graphdef, params, video, prefix, *, n_prefix: int) -> prefix_cache.PrefixKV:
  """Every clip's cached earlier frames (batched `judge.prefix_cache.PrefixKV`): computed once per frame.
  prefix: see `set_losses`; n_prefix (static) >= every clip's plen."""
  pids = jnp.pad(prefix[0], ((0, 0), (0, max(0, n_prefix - prefix[0].shape[1]))))[:, :n_prefix]
  return jax.vmap(lambda vid, ids, n: prefix_cache.prefix_kv(graphdef, params, vid[None], ids, n))(
      video, pids, prefix[1])


def cached_set_losses(graphdef, params, perceptual, video, caches, t, set_ids, set_len, *, n_own: int,
                      chunk: int = 0, mesh=None) -> jax.Array:
  """`set_losses` against `prefix_caches`: each candidate set runs only its own slots and frame t's rows
  (`judge.prefix_cache`). Same (B,M) losses up to float summation order. n_own (static) >= every set_len.
  Needs a block-causal judge."""
  set_ids = jnp.pad(set_ids, ((0, 0), (0, 0), (0, max(0, n_own - set_ids.shape[2]))))[:, :, :n_own]

  cfg = nnx.merge(graphdef, params).cfg

  def per_clip(vid, cache, sids, slen):
    # frame t's perceptual target features: once per clip, not once per candidate set
    tf = perceptual_targets(cfg, prefix_cache.frame_target(vid[None], t), perceptual) if perceptual else None
    per_set = lambda s, n: prefix_cache.frame_loss(graphdef, params, perceptual, vid[None], cache, t, s, n, tf)  # noqa: E731
    return _over_sets(per_set, sids, slen, chunk)

  return jax.vmap(per_clip)(video, caches, _shard_sets(set_ids, mesh), _shard_sets(set_len, mesh))


def _shard_sets(x, mesh):
  """Shard the candidate axis (axis 1) over the mesh's data axis when it divides."""
  if mesh is None or x.shape[1] % mesh.shape["data"]:
    return x
  return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, P(None, "data", *([None] * (x.ndim - 2)))))


def _over_sets(per_set, sids, slen, chunk: int):
  """per_set over a clip's M candidate sets (M,C)/(M,): one vmap, or `chunk` sets at a time (memory)."""
  m, c = sids.shape
  if chunk and m > chunk:
    nc = -(-m // chunk)
    mp = nc * chunk
    ids = jnp.pad(sids, ((0, mp - m), (0, 0))).reshape(nc, chunk, c)
    lens = jnp.pad(slen, (0, mp - m), constant_values=1).reshape(nc, chunk)
    return jax.lax.map(lambda a: jax.vmap(per_set)(*a), (ids, lens)).reshape(mp)[:m]
  return jax.vmap(per_set)(sids, slen)


# ---------------------------------------------------------------- one greedy step
def _chosen_mask(own_ids, n, v):
  """(B,V) bool: local ids already chosen in the current frame (scatter-add: masked rows hold id 0)."""
  b, cap = own_ids.shape
  live = (jnp.arange(cap)[None] < n[:, None]).astype(jnp.int32)
  return jnp.zeros((b, v), jnp.int32).at[jnp.arange(b)[:, None], own_ids].add(live) > 0


def _with_candidate(own, n, cand):
  """own (B,C), n (B,), cand (B,M) -> (B,M,C): own set with the candidate written at slot n."""
  c = own.shape[1]
  at_n = jnp.arange(c)[None, None] == n[:, None, None]
  return jnp.where(at_n, cand[..., None], own[:, None, :])


def _pad_to(x, m, value):
  return jnp.pad(x, ((0, 0), (0, m - x.shape[1])), constant_values=value)


def greedy_step(graphdef, params, perceptual, video, prefix, t, clip_ids, st: FrameState, *, gcfg: GreedyConfig,
                n_slots: int, n_own: int = 0, mesh=None) -> tuple[FrameState, jax.Array]:
  """One evaluation round for B clips at frame t: returns (new state, evaluations per clip (scalar)).

  clip_ids (B,) int32 seeds the per-clip candidate subsampling. Static shapes:
  n_own = 0: full forwards (`set_losses`), prefix as there, `n_slots` >= plen + n + k_per_step for every
  active clip; n_own > 0: prefix is the frame's `prefix_caches` (the earlier frames depend on t only, so the
  labeler computes them once per frame), `n_own` >= n + k_per_step (`n_slots` unused).
  Done clips are left unchanged.
  """
  cfg = nnx.merge(graphdef, params).cfg
  v = cfg.tokens_per_frame
  b = video.shape[0]
  k = gcfg.k_per_step
  ndata = 1 if mesh is None else mesh.shape["data"]
  own = st.own_ids
  cap = own.shape[1]
  chosen = _chosen_mask(st.own_ids, st.n, v)
  if n_own:
    evaluate = functools.partial(cached_set_losses, graphdef, params, perceptual, video, prefix, t, n_own=n_own,
                                 chunk=gcfg.candidate_chunk, mesh=mesh)
  else:
    evaluate = functools.partial(set_losses, graphdef, params, perceptual, video, prefix, t,
                                 n_slots=n_slots, chunk=gcfg.candidate_chunk, mesh=mesh)

  def score(cand, valid):
    """Single-add losses of candidates (B,M) (invalid -> +inf), padded so M divides the data axis."""
    m = _round_up(cand.shape[1], ndata)
    cand, valid = _pad_to(cand, m, 0), _pad_to(valid, m, False)
    loss = evaluate(_with_candidate(own, st.n, cand), jnp.broadcast_to(st.n[:, None] + 1, cand.shape))
    return cand, jnp.where(valid, loss, jnp.inf)

  take = lambda a, i: jnp.take_along_axis(a, i, axis=1)  # noqa: E731
  if gcfg.candidates == "all":
    cand = jnp.broadcast_to(jnp.arange(v, dtype=jnp.int32), (b, v))
    cand, loss = score(cand, ~chosen)
  elif gcfg.candidates == "random":
    def pick(cid, ch):
      key = jax.random.fold_in(jax.random.fold_in(jax.random.key(gcfg.seed), cid), t * _STEP_STRIDE + st.step)
      u = jnp.where(ch, 2.0, jax.random.uniform(key, (v,)))     # chosen ids sort last
      return jnp.sort(jnp.argsort(u)[:gcfg.num_candidates]).astype(jnp.int32)  # id order, as "all"
    cand = jax.vmap(pick)(clip_ids, chosen)
    cand, loss = score(cand, ~take(chosen, cand))
  else:  # coarse_to_fine
    off_last, off_par = cfg.scale_offsets[-1], cfg.scale_offsets[-2]
    g_last, g_par = cfg.image_size // cfg.patch_size, cfg.scales[-2] // cfg.patch_size
    ratio = g_last // g_par
    coarse = jnp.broadcast_to(jnp.arange(off_last, dtype=jnp.int32), (b, off_last))
    c1, l1 = score(coarse, ~chosen[:, :off_last])
    # a chosen parent cell scores the current loss (adding it again changes nothing), so the children
    # of already-gazed cells stay reachable, ranked behind every parent that still improves the loss
    par_loss = jnp.where(chosen[:, off_par:off_par + g_par * g_par], st.loss[:, None],
                         l1[:, off_par:off_par + g_par * g_par])
    top_val, cells = jax.lax.top_k(-par_loss, gcfg.c2f_top)                  # best parent cells
    pr, pc = cells // g_par, cells % g_par
    dr, dc = jnp.meshgrid(jnp.arange(ratio), jnp.arange(ratio), indexing="ij")
    child = off_last + (pr[..., None] * ratio + dr.reshape(-1)) * g_last + pc[..., None] * ratio + dc.reshape(-1)
    child = child.reshape(b, -1).astype(jnp.int32)
    ok = jnp.repeat(jnp.isfinite(top_val), ratio * ratio, axis=1) & ~take(chosen, child)
    c2, l2 = score(child, ok)
    cand, loss = jnp.concatenate([c1, c2], axis=1), jnp.concatenate([l1, l2], axis=1)
  n_evals = cand.shape[1]

  neg, idx = jax.lax.top_k(-loss, k)                    # k best single additions, best first
  best_ids, best_loss = take(cand, idx), -neg
  n_valid = jnp.sum(jnp.isfinite(best_loss), axis=1)
  a_max = jnp.minimum(jnp.minimum(n_valid, gcfg.budget - st.n), k)  # additions this round may make
  if k > 1:  # exact losses of the longer prefixes own + best[:j], j = 2..k (the j = 1 loss is known)
    j = jnp.arange(2, k + 1)
    pos = jnp.arange(cap)[None, None] - st.n[:, None, None]             # (B,1,C) offset from slot n
    pick = jnp.take_along_axis(best_ids, jnp.clip(pos, 0, k - 1)[:, 0], axis=1)[:, None]   # (B,1,C)
    sets = jnp.where((pos >= 0) & (pos < j[None, :, None]), pick, own[:, None])
    lens = st.n[:, None] + j[None]
    m = _round_up(k - 1, ndata)
    sets = jnp.pad(sets, ((0, 0), (0, m - (k - 1)), (0, 0)))
    lens = _pad_to(lens, m, 1)
    more = evaluate(sets, lens)[:, :k - 1]
    prefix_loss = jnp.concatenate([best_loss[:, :1], more], axis=1)
    n_evals += m
  else:
    prefix_loss = best_loss

  n_after = st.n[:, None] + jnp.arange(1, k + 1)[None]                   # (B,k) patches after j additions
  stop = ((n_after >= gcfg.min_tokens) & (prefix_loss <= gcfg.tau)) | (n_after >= gcfg.budget)
  first = jnp.where(jnp.any(stop, axis=1), jnp.argmax(stop, axis=1) + 1, k)
  a = jnp.where(st.done, 0, jnp.minimum(first, a_max))                   # additions made (0: done clips)

  slot = jnp.arange(st.own_ids.shape[1])[None] - st.n[:, None]
  write = (slot >= 0) & (slot < a[:, None])
  src = jnp.clip(slot, 0, k - 1)
  own_ids = jnp.where(write, take(best_ids, src), st.own_ids)
  own_loss = jnp.where(write, take(prefix_loss, src), st.own_loss)
  n = st.n + a
  new_loss = jnp.where(a > 0, take(prefix_loss, jnp.maximum(a - 1, 0)[:, None])[:, 0], st.loss)
  done = st.done | (a_max <= 0) | (n >= gcfg.budget) | ((n >= gcfg.min_tokens) & (new_loss <= gcfg.tau))
  best, stall = st.best, st.stall
  if gcfg.patience:
    improved = new_loss < st.best - gcfg.eps
    stall = jnp.where(a > 0, jnp.where(improved, 0, st.stall + a), st.stall)
    best = jnp.where(a > 0, jnp.minimum(st.best, new_loss), st.best)
    done = done | ((n >= gcfg.min_tokens) & (stall >= gcfg.patience))
  return FrameState(own_ids, own_loss, n, new_loss, done, best, stall, st.step + 1), jnp.int32(n_evals)


# static: the model structure, the search settings, the slot count and the mesh; jax's own compile cache
# then shares programs between labelers built with equal settings
_greedy_step_jit = jax.jit(greedy_step, static_argnames=("graphdef", "gcfg", "n_slots", "n_own", "mesh"))


# ---------------------------------------------------------------- search over clips
def _prefix_arrays(labels: Sequence[list[list[int]]], t: int, num_frames: int, width: int):
  """Host: packed earlier-frame global ids of each clip -> (ids (B,width) int32, plen (B,), counts (B,T))."""
  ids = np.zeros((len(labels), width), np.int32)
  plen = np.zeros((len(labels),), np.int32)
  counts = np.zeros((len(labels), num_frames), np.int32)
  for i, lab in enumerate(labels):
    flat = [x for f in lab[:t] for x in f]
    ids[i, :len(flat)] = flat
    plen[i] = len(flat)
    counts[i, :t] = [len(f) for f in lab[:t]]
  return ids, plen, counts


class GreedyLabeler:
  """Greedy search over batches of clips with one frozen VideoMAE.

    labeler = GreedyLabeler(graphdef, params, GreedyConfig(budget=26), perceptual=None, mesh=None)
    labels = labeler.label(video, clip_ids)   # video (B,T,3,224,224) task space -> [ClipLabel] * B

  `step` is the jitted `greedy_step` (one compile per (B, T, N) shape); `evals` counts the
  candidate-set evaluations run so far (all clips, masked ones included: that is the compute spent).
  """

  def __init__(self, graphdef, params, gcfg: GreedyConfig, perceptual: Mapping | None = None, mesh=None):
    self.graphdef, self.params, self.gcfg, self.mesh = graphdef, params, gcfg, mesh
    self.perceptual = dict(perceptual or {})
    self.cfg = nnx.merge(graphdef, params).cfg
    self.step = functools.partial(_greedy_step_jit, graphdef=graphdef, gcfg=gcfg, mesh=mesh)
    self.evals = 0
    self.steps = 0
    self.cached = gcfg.prefix_cache and self.cfg.causal   # a non-causal judge has no fixed prefix
    self.prefix_caches = jax.jit(functools.partial(prefix_caches, graphdef), static_argnames=("n_prefix",))
    v = self.cfg.tokens_per_frame
    if gcfg.budget > v:
      raise ValueError(f"GreedyConfig.budget = {gcfg.budget} > {v} tokens per frame")
    if gcfg.candidates == "random" and gcfg.num_candidates > v:
      raise ValueError(f"GreedyConfig.num_candidates = {gcfg.num_candidates} > {v} tokens per frame")
    if gcfg.candidates == "coarse_to_fine":
      cells = (self.cfg.scales[-2] // self.cfg.patch_size) ** 2
      if len(self.cfg.scales) < 2 or gcfg.c2f_top > cells or self.cfg.scales[-1] % self.cfg.scales[-2]:
        raise ValueError(f"coarse_to_fine needs >= 2 scales, the last a multiple of the one before, and c2f_top <= "
                         f"{cells} parent cells (scales {self.cfg.scales}, c2f_top {gcfg.c2f_top})")

  def label(self, video, clip_ids: Sequence[int] | None = None) -> list[ClipLabel]:
    """video (B,T,3,224,224) float32 task space (jax or numpy); clip_ids (B,) ints seeding the per-clip
    randomness (default 0..B-1; use dataset indices so labels do not depend on batching)."""
    g, v = self.gcfg, self.cfg.tokens_per_frame
    video = jnp.asarray(video, jnp.float32)
    b, num_frames = video.shape[:2]
    clip_ids = jnp.asarray(np.arange(b) if clip_ids is None else np.asarray(clip_ids), jnp.int32)
    labels: list[list[list[int]]] = [[] for _ in range(b)]
    losses: list[list[list[float]]] = [[] for _ in range(b)]
    evals = np.zeros((b,), np.int64)
    for t in range(num_frames):
      host_prefix = _prefix_arrays(labels, t, num_frames, max(1, (num_frames - 1) * g.budget))
      plen = host_prefix[1]
      prefix = tuple(jnp.asarray(x) for x in host_prefix)
      if self.cached:   # the earlier frames' keys/values: once per frame, shared by all its rounds
        prefix = self.prefix_caches(self.params, video, prefix, n_prefix=_round_up(int(plen.max()), g.slot_bucket))
      st = init_frame_state(b, g.budget)
      n_host, done_host = np.zeros((b,), np.int64), np.zeros((b,), bool)
      while not done_host.all():
        if self.cached:   # own set rounded up to _OWN_BUCKET
          n_slots, n_own = 0, _round_up(int(n_host[~done_host].max()) + g.k_per_step, _OWN_BUCKET)
        else:
          n_slots, n_own = _round_up(int((plen + n_host)[~done_host].max()) + g.k_per_step, g.slot_bucket), 0
        st, ne = self.step(params=self.params, perceptual=self.perceptual, video=video, prefix=prefix,
                           t=jnp.int32(t), clip_ids=clip_ids, st=st, n_slots=n_slots, n_own=n_own)
        ne = int(ne)
        evals += ne
        self.evals += ne * b
        self.steps += 1
        n_host, done_host = np.asarray(st.n), np.asarray(st.done)
      ids, ls = np.asarray(st.own_ids), np.asarray(st.own_loss)
      for i in range(b):
        labels[i].append([int(x) + v * t for x in ids[i, :n_host[i]]])
        losses[i].append([float(x) for x in ls[i, :n_host[i]]])
    return [ClipLabel(labels[i], losses[i], [bool(f[-1] <= g.tau) for f in losses[i]], int(evals[i]))
            for i in range(b)]


# ---------------------------------------------------------------- evaluation helpers
def loss_of_selection(graphdef, params, video, gazing_pos: Sequence[Sequence[int]], perceptual=None,
                      capacity: int | None = None) -> np.ndarray:
  """Per-frame losses (T,) of one clip's fixed selection (global ids per frame): frame t reconstructed
  alone (R = {t}, the greedy objective) from the official collation layout (frames in order, each
  padded to `capacity` slots, default its longest frame), independent of the search's packing.
  video (T,3,224,224) task space; gazing_pos: T lists of global ids (frame t's in [265t, 265t+265))."""
  video = jnp.asarray(video, jnp.float32)[None]
  cap = capacity or max(1, max(len(f) for f in gazing_pos))
  gp = np.zeros((1, len(gazing_pos) * cap), np.int32)
  pad = np.ones(gp.shape, bool)
  for t, f in enumerate(gazing_pos):
    if len(f) > cap:
      raise ValueError(f"frame {t} has {len(f)} ids > capacity {cap}")
    gp[0, t * cap:t * cap + len(f)] = f
    pad[0, t * cap:t * cap + len(f)] = False
  counts = jnp.full((len(gazing_pos),), cap, jnp.int32)
  return np.asarray(_selection_losses(graphdef, params, perceptual or {}, video, jnp.asarray(gp), jnp.asarray(pad),
                                      counts))


@functools.partial(jax.jit, static_argnums=0)
def _selection_losses(graphdef, params, perceptual, video, gp, pad, counts):
  def one(r):
    out = reconstruction_task(graphdef, params, video, gp, pad, counts, r[None], perceptual)
    return out["loss_each_reconstruction_frame"][0, 0]
  return jax.lax.map(one, jnp.arange(video.shape[1], dtype=jnp.int32))


def variant_report(graphdef, params, video, variants: Mapping[str, GreedyConfig], reference: GreedyConfig,
                   perceptual=None, mesh=None) -> dict:
  """Label quality of each variant vs `reference` (exact greedy) on a few clips.

  Every config should use tau below any reachable loss (e.g. -1) and the same budget, so every frame
  gets exactly `budget` patches and "final loss" compares equal patch counts. Returns, per variant:
  mean final loss over clips x frames, the gap to the reference (absolute and relative), the mean
  loss curve after j = 1..budget patches (frame-averaged), the fraction of frames whose final loss is
  within 1% of the reference's, evaluations per clip and seconds.
  """
  out = {}
  for name, gcfg in {"exact": reference, **variants}.items():
    t0 = time.perf_counter()
    labs = GreedyLabeler(graphdef, params, gcfg, perceptual, mesh).label(video, np.arange(video.shape[0]))
    dt = time.perf_counter() - t0
    final = np.asarray([[f[-1] for f in lab.task_losses] for lab in labs])             # (B,T)
    depth = min(len(f) for lab in labs for f in lab.task_losses)
    curve = np.asarray([[f[:depth] for f in lab.task_losses] for lab in labs]).mean((0, 1))
    out[name] = {"variant": gcfg.variant, "final_loss": float(final.mean()), "final": final,
                 "curve": [round(float(x), 6) for x in curve], "evals_per_clip": float(np.mean([l.evals for l in labs])),
                 "seconds": dt}
  ref = out["exact"]["final"]
  for name, r in out.items():
    r["gap_to_exact"] = float((r["final"] - ref).mean())
    r["relative_gap"] = float(((r["final"] - ref) / np.maximum(ref, 1e-12)).mean())
    r["frames_within_1pct"] = float(np.mean(r["final"] <= ref * 1.01))
    r["final"] = r["final"].round(6).tolist()
  return out


def greedy_config_from(c) -> GreedyConfig:
  """ml_collections block `config.greedy` -> GreedyConfig (validated)."""
  fields = {f.name for f in dataclasses.fields(GreedyConfig)}
  unknown = sorted(set(c.keys()) - fields)
  if unknown:
    raise ValueError(f"unknown config.greedy keys {unknown}; known: {sorted(fields)}")
  return GreedyConfig(**{k: c[k] for k in c.keys()})
