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

Dataset labelling (`label_dataset`, `run`, used by `launch/label.py`): per-host strided shard of the
clips, per-host JSONL shard file appended one committed batch at a time (a kill loses at most the
batch in flight, never writes a partial record, never labels a clip twice), merged into the official
`gazing_labels.json` plus `greedy_meta.json` (tau, budget, variant, dtype, tau reached per frame).
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import glob
import json
import logging
import math
import os
import time
from typing import Callable, Mapping, Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from autogaze_jax.gaze.preprocess import normalize_on_device
from autogaze_jax.judge.losses import reconstruction_task
from autogaze_jax.core.sharding import make_mesh
from autogaze_jax.evaluation.writers import Progress
from autogaze_jax.interop.videomae import load_checkpoint, read_config
from autogaze_jax.judge import perceptual as perc
from autogaze_jax.judge.config import VideoMAEConfig
from autogaze_jax.judge.model import init_params

log = logging.getLogger(__name__)

CANDIDATE_MODES = ("all", "random", "coarse_to_fine")
LABELS_NAME, META_NAME, SHARD_DIR = "gazing_labels.json", "greedy_meta.json", "shards"
LOSS_DECIMALS = 5          # losses as floats with 4-5 decimals
_STEP_STRIDE = 1 << 12     # rng fold-in: t * stride + step (a frame never has 4096 steps)


# ---------------------------------------------------------------- config
@dataclasses.dataclass(frozen=True)
class GreedyConfig:
  """Greedy search settings; frozen so it is a static jit argument."""
  tau: float = 0.5                 # stop a frame once its loss is <= tau ...
  budget: int = 198                # ... or it has this many patches (0.75 of 265)
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

  def __post_init__(self):
    def need(ok, field, want):
      if not ok:
        raise ValueError(f"GreedyConfig.{field} = {getattr(self, field)!r}: expected {want}")
    need(self.candidates in CANDIDATE_MODES, "candidates", f"one of {CANDIDATE_MODES}")
    need(1 <= self.budget <= 265, "budget", "in [1, 265]")
    need(1 <= self.min_tokens <= self.budget, "min_tokens", f"in [1, budget={self.budget}] (empty frames break NTP)")
    need(math.isfinite(self.tau), "tau", "a finite float")
    need(1 <= self.num_candidates <= 265, "num_candidates", "in [1, 265]")
    need(1 <= self.c2f_top <= 49, "c2f_top", "in [1, 49]")
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


def pack_gaze(prefix_ids, plen, prefix_counts, t, set_ids, set_len, n_slots: int, tokens_per_frame: int = 265):
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
  b, m, c = set_ids.shape
  v = nnx.merge(graphdef, params).cfg.tokens_per_frame
  r = jnp.reshape(t, (1,)).astype(jnp.int32)
  if mesh is not None and m % mesh.shape["data"] == 0:
    set_ids = jax.lax.with_sharding_constraint(set_ids, NamedSharding(mesh, P(None, "data", None)))
    set_len = jax.lax.with_sharding_constraint(set_len, NamedSharding(mesh, P(None, "data")))

  def per_clip(vid, pids, plen, pcnt, sids, slen):
    def per_set(ids, n):
      gp, pad, counts = pack_gaze(pids, plen, pcnt, t, ids, n, n_slots, v)
      out = reconstruction_task(graphdef, params, vid[None], gp[None], pad[None], counts, r, perceptual)
      return out["loss_each_reconstruction_frame"][0, 0]
    if chunk and m > chunk:
      nc = -(-m // chunk)
      mp = nc * chunk
      ids = jnp.pad(sids, ((0, mp - m), (0, 0))).reshape(nc, chunk, c)
      lens = jnp.pad(slen, (0, mp - m), constant_values=1).reshape(nc, chunk)
      return jax.lax.map(lambda a: jax.vmap(per_set)(*a), (ids, lens)).reshape(mp)[:m]
    return jax.vmap(per_set)(sids, slen)

  return jax.vmap(per_clip)(video, *prefix, set_ids, set_len)


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
                n_slots: int, mesh=None) -> tuple[FrameState, jax.Array]:
  """One evaluation round for B clips at frame t: returns (new state, evaluations per clip (scalar)).

  prefix: see `set_losses`; clip_ids (B,) int32 seeds the per-clip candidate subsampling; `n_slots`
  (static) >= plen + n + k_per_step for every active clip. Done clips are left unchanged.
  """
  cfg = nnx.merge(graphdef, params).cfg
  v = cfg.tokens_per_frame
  b = video.shape[0]
  k = gcfg.k_per_step
  ndata = 1 if mesh is None else mesh.shape["data"]
  own = st.own_ids
  cap = own.shape[1]
  chosen = _chosen_mask(st.own_ids, st.n, v)
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
_greedy_step_jit = jax.jit(greedy_step, static_argnames=("graphdef", "gcfg", "n_slots", "mesh"))


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
    v = self.cfg.tokens_per_frame
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
      st = init_frame_state(b, g.budget)
      n_host, done_host = np.zeros((b,), np.int64), np.zeros((b,), bool)
      while not done_host.all():
        need = int((plen + n_host)[~done_host].max()) + g.k_per_step
        n_slots = _round_up(need, g.slot_bucket)
        st, ne = self.step(params=self.params, perceptual=self.perceptual, video=video, prefix=prefix,
                           t=jnp.int32(t), clip_ids=clip_ids, st=st, n_slots=n_slots)
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


# ---------------------------------------------------------------- dataset labelling (resumable)
def shard_path(workdir: str, process_index: int, process_count: int) -> str:
  return os.path.join(workdir, SHARD_DIR, f"labels-{process_index:05d}-of-{process_count:05d}.jsonl")


def read_shard(path: str, truncate: bool = False) -> list[dict]:
  """Committed records of a shard file. A batch counts only once its commit line is complete; with
  `truncate`, anything after the last commit (a batch cut off by a kill) is removed from the file."""
  if not os.path.exists(path):
    return []
  done, pending, good_end = [], [], 0
  with open(path, "rb") as f:
    data = f.read()
  pos = 0
  while pos < len(data):
    end = data.find(b"\n", pos)
    if end < 0:
      break                                    # torn last line: never committed
    try:
      rec = json.loads(data[pos:end])
    except ValueError:
      break
    pos = end + 1
    if "commit" in rec:
      if rec.get("n") != len(pending):
        break
      done += pending
      pending = []
      good_end = pos
    else:
      pending.append(rec)
  if truncate and good_end < len(data):
    log.warning("%s: dropping %d bytes of an uncommitted batch (interrupted run)", path, len(data) - good_end)
    with open(path, "r+b") as f:
      f.truncate(good_end)
  return done


def _append_batch(path: str, records: Sequence[dict], batch_no: int):
  """Append a batch and its commit line in one write, then fsync (the commit makes the batch count)."""
  blob = "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in records)
  blob += json.dumps({"commit": batch_no, "n": len(records)}) + "\n"
  with open(path, "a") as f:
    f.write(blob)
    f.flush()
    os.fsync(f.fileno())


def summarize(records: Sequence[dict], tau: float) -> dict:
  """Loss reached and patches per frame over labelled records."""
  lab = [r for r in records if "gazing_pos" in r]
  if not lab:
    return {"clips": 0, "skipped": len(records)}
  n = np.asarray([[len(f) for f in r["gazing_pos"]] for r in lab])                 # (clips, T)
  final = np.asarray([[f[-1] for f in r["task_losses"]] for r in lab])
  first = np.asarray([[f[0] for f in r["task_losses"]] for r in lab])
  reached = np.asarray([r["reached"] for r in lab])
  return {"clips": len(lab), "skipped": len(records) - len(lab), "tau": tau,
          "frames_reaching_tau": float(reached.mean()),
          "final_loss_mean": float(final.mean()), "final_loss_max": float(final.max()),
          "loss_after_first_patch_mean": float(first.mean()),
          "patches_per_frame_mean": float(n.mean()), "patches_per_frame_min": int(n.min()),
          "patches_per_frame_max": int(n.max()),
          "patches_by_frame_mean": [round(float(x), 3) for x in n.mean(0)],
          "gaze_ratio": float(n.mean() / 265.0)}


def merge_shards(workdir: str, process_count: int, meta: Mapping, num_frames: int) -> dict:
  """All shards committed -> `gazing_labels.json` (official format, dataset order) + `greedy_meta.json`."""
  from data_pipelines import labels as labels_lib
  records = []
  for i in range(process_count):
    records += read_shard(shard_path(workdir, i, process_count))
  records.sort(key=lambda r: r["i"])
  keys = [r["key"] for r in records]
  if len(set(keys)) != len(keys):
    raise RuntimeError("a clip was labelled twice across shards; the shard files are inconsistent")
  entries = {r["key"]: {"gazing_pos": r["gazing_pos"], "task_losses": r["task_losses"]}
             for r in records if "gazing_pos" in r}
  for k, e in entries.items():
    labels_lib.validate_entry(k, e, num_frames=num_frames)
  labels_lib.write_labels(entries, os.path.join(workdir, LABELS_NAME))
  summary = summarize(records, meta["tau"])
  side = {**meta, "summary": summary,
          "reached_tau": {r["key"]: r["reached"] for r in records if "gazing_pos" in r},
          "skipped": {r["key"]: r["skip"] for r in records if "skip" in r}}
  tmp = os.path.join(workdir, META_NAME + f".tmp{os.getpid()}")
  with open(tmp, "w") as f:
    json.dump(side, f, indent=1)
  os.replace(tmp, os.path.join(workdir, META_NAME))
  return summary


def label_dataset(labeler: GreedyLabeler, load: Callable[[int], dict], keys: Sequence[str], workdir: str, *,
                  meta: Mapping, num_frames: int = 16, clips_per_batch: int = 1,
                  process_index: int | None = None, process_count: int | None = None, log_every: int = 1,
                  stop_after_batches: int | None = None) -> dict | None:
  """Label this host's clips into its shard file (resuming), then merge once every shard is finished.

  load(i) -> {"frames": uint8 (>=num_frames,224,224,3)} or raises (the clip is then recorded as skipped
  with the error); keys[i]: the clip's label key (relative video path), unique. Host h of n labels
  indices h, h+n, ... in batches of `clips_per_batch`; randomness is seeded by the dataset index, so
  labels do not depend on the host count or batching. Returns the summary after merging (None when
  other hosts are still running or `stop_after_batches`, a test hook simulating a kill, stopped early).
  """
  if len(set(keys)) != len(keys):
    raise ValueError("clip keys (last three path components) are not unique; labels would collide")
  pi = jax.process_index() if process_index is None else process_index
  pc = jax.process_count() if process_count is None else process_count
  path = shard_path(workdir, pi, pc)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  done = {r["i"] for r in read_shard(path, truncate=True)}
  mine = list(range(pi, len(keys), pc))
  todo = [i for i in mine if i not in done]
  log.info("host %d/%d: %d clips, %d already labelled, %d to go (variant %s)", pi, pc, len(mine),
           len(mine) - len(todo), len(todo), labeler.gcfg.variant)
  batches = [todo[s:s + clips_per_batch] for s in range(0, len(todo), clips_per_batch)]
  progress = Progress(len(mine), every=log_every, name="label", start_step=len(mine) - len(todo))
  norm = jax.jit(normalize_on_device)

  def fetch(idx):
    out = []
    for i in idx:
      try:
        fr = np.asarray(load(i)["frames"])[:num_frames]
        if fr.shape[0] < num_frames:
          raise ValueError(f"clip has {fr.shape[0]} frames < num_frames={num_frames}")
        out.append((i, fr, None))
      except Exception as e:  # noqa: BLE001 (any unreadable clip is recorded as skipped, never fatal)
        log.warning("skipping %s: %s", keys[i], e)
        out.append((i, None, f"{type(e).__name__}: {e}"))
    return out

  n_done = len(mine) - len(todo)
  batch_no = len(done)
  with concurrent.futures.ThreadPoolExecutor(1) as pool:  # decode the next batch while searching this one
    nxt = pool.submit(fetch, batches[0]) if batches else None
    for bi in range(len(batches)):
      items = nxt.result()
      nxt = pool.submit(fetch, batches[bi + 1]) if bi + 1 < len(batches) else None
      good = [(i, fr) for i, fr, err in items if err is None]
      res = {}
      if good:
        video = norm(jnp.asarray(np.stack([fr for _, fr in good])))
        for (i, _), lab in zip(good, labeler.label(video, [i for i, _ in good])):
          res[i] = lab
      recs = []
      for i, _, err in items:
        if err is not None:
          recs.append({"i": i, "key": keys[i], "skip": err})
        else:
          e = res[i].entry()
          recs.append({"i": i, "key": keys[i], **e, "reached": res[i].reached, "evals": res[i].evals})
      _append_batch(path, recs, batch_no)
      batch_no += 1
      n_done += len(items)
      last = [r for r in recs if "task_losses" in r]
      shown = {"final_loss": np.mean([f[-1] for r in last for f in r["task_losses"]]),
               "patches/frame": np.mean([len(f) for r in last for f in r["gazing_pos"]])} if last else None
      progress(n_done, shown, force=bi % log_every == 0 or bi + 1 == len(batches))
      if stop_after_batches is not None and bi + 1 >= stop_after_batches:
        return None
  with open(path + ".done", "w") as f:
    json.dump({"clips": len(mine)}, f)
  if all(os.path.exists(shard_path(workdir, i, pc) + ".done") for i in range(pc)):
    return merge_shards(workdir, pc, meta, num_frames)
  log.info("host %d finished; the last host to finish merges the shards", pi)
  return None


# ---------------------------------------------------------------- VideoMAE loading and entry points
def load_videomae(checkpoint: str = "", size: str = "tiny", dtype: str = "float32", seed: int = 0):
  """(cfg, graphdef, params, perceptual {term: PerceptualNet}).

  checkpoint: an official-format dir (config.json + model.safetensors; bundled DINOv2/SigLIP2 tensors
  are used when present). Empty: size "tiny" = the random-weight test fixture, "default" = a random
  init; both log a warning because labels from random weights only exercise the plumbing.
  """
  fixture = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "tests", "fixtures",
                         "videomae_tiny")
  if not checkpoint and size == "tiny":
    log.warning("no --config.videomae.checkpoint: using the random-weight tiny test fixture %s; these labels "
                "are NOT meaningful (plumbing only)", fixture)
    checkpoint = fixture
  if checkpoint:
    cfg, graphdef, params, tensors = load_checkpoint(checkpoint, read_config(checkpoint, dtype=dtype))
    nets = {}
    for term, ecfg in (("dinov2_reg", perc.DINOV2_REG_BASE), ("siglip2", perc.SIGLIP2_BASE)):
      sub = {k: a for k, a in tensors.items() if k.startswith(term + ".")}
      if term in cfg.loss_type and sub:
        nets[term] = perc.from_tensors(ecfg, sub)
    nets.update(perc.load_from_config(cfg))
    return cfg, graphdef, params, nets
  if size != "default":
    raise ValueError(f"videomae.size {size!r}: expected 'tiny' or 'default'")
  log.warning("no --config.videomae.checkpoint: RANDOM-INIT default VideoMAE (ViT-MAE-L sizes), without the "
              "perceptual loss terms; these labels are NOT meaningful (plumbing/benchmark only)")
  cfg = VideoMAEConfig(dtype=dtype)
  graphdef, params = init_params(cfg, seed)
  return cfg, graphdef, params, {}


def greedy_config_from(c) -> GreedyConfig:
  """ml_collections block `config.greedy` -> GreedyConfig (validated)."""
  fields = {f.name for f in dataclasses.fields(GreedyConfig)}
  unknown = sorted(set(c.keys()) - fields)
  if unknown:
    raise ValueError(f"unknown config.greedy keys {unknown}; known: {sorted(fields)}")
  return GreedyConfig(**{k: c[k] for k in c.keys()})


def _make_source(data):
  """(load(i), keys) for config.data: src '' = the embedded synthetic dataset; else a video folder, or an
  ArrayRecord build dir (`source=arrayrecord`, or auto-detected from its dataset_info.json)."""
  from data_pipelines import ops
  from data_pipelines.pipeline import make_source
  kind = data.source
  if kind == "auto":
    if not data.src:
      kind = "synthetic"
    elif glob.glob(os.path.join(data.src, "**", "dataset_info.json"), recursive=True):
      kind = "arrayrecord"
    else:
      kind = "folder"
  src = make_source(kind, data.src or None, data.split, synthetic_num_clips=data.synthetic_num_clips,
                    seed=data.seed, cache_dir=data.cache_dir or None)
  if hasattr(src, "load"):          # video folder: exact decode, no substitution of unreadable videos
    keys = [ops.relative_video_path(p) for p in src.paths]
    load = src.load
  else:                             # ArrayRecord: records are already decoded clips
    keys = list(src.paths())
    load = src.__getitem__
  if data.max_clips:
    keys = keys[:data.max_clips]
  return load, keys, kind


def run(config, workdir: str) -> dict | None:
  """`launch/label.py`: config (configs/greedy_labels.py) -> labels in `workdir` (resumable)."""
  gcfg = greedy_config_from(config.greedy)
  if config.data.num_frames < 1 or config.data.clips_per_batch < 1:
    raise ValueError(f"data.num_frames={config.data.num_frames} and data.clips_per_batch="
                     f"{config.data.clips_per_batch} must be >= 1")
  os.makedirs(workdir, exist_ok=True)
  vm = config.videomae
  cfg, graphdef, params, perceptual = load_videomae(vm.checkpoint, vm.size, vm.dtype, vm.seed)
  missing = [t for t in cfg.loss_type if t != "l1" and t not in perceptual]
  if missing:
    log.warning("loss terms %s have no weights: labels optimise the remaining terms only", missing)
  devices = jax.local_devices() if not config.mesh.num_devices else jax.local_devices()[:config.mesh.num_devices]
  mesh = make_mesh(config.mesh.data, config.mesh.fsdp, devices)
  load, keys, kind = _make_source(config.data)
  meta = {"tau": gcfg.tau, "budget": gcfg.budget, "min_tokens": gcfg.min_tokens, "variant": gcfg.variant,
          "greedy": dataclasses.asdict(gcfg), "dtype": cfg.dtype, "loss_terms": [t for t in cfg.loss_type
                                                                                 if t == "l1" or t in perceptual],
          "videomae_checkpoint": vm.checkpoint or f"(none: {vm.size})", "num_frames": config.data.num_frames,
          "data": {"source": kind, "src": config.data.src, "split": config.data.split},
          "arrayrecord": "NTP reads these labels from an ArrayRecord build by joining at read time "
                         "(--config.data.source=arrayrecord --config.data.labels=<this dir>/gazing_labels.json), "
                         "or store them in the records: python -m launch.build_dataset --labels=<file>"}
  labeler = GreedyLabeler(graphdef, params, gcfg, perceptual, mesh if mesh.shape["data"] > 1 else None)
  t0 = time.perf_counter()
  summary = label_dataset(labeler, load, keys, workdir, meta=meta, num_frames=config.data.num_frames,
                          clips_per_batch=config.data.clips_per_batch, log_every=config.log_every)
  if summary is not None:
    summary = {**summary, "seconds": round(time.perf_counter() - t0, 2), "labels": os.path.join(workdir, LABELS_NAME)}
    log.info("summary: %s", json.dumps(summary))
  return summary


def label_embedded(num_clips: int, workdir: str, gcfg: GreedyConfig = GreedyConfig(budget=8, tau=0.0), *,
                   videomae_checkpoint: str = "", num_frames: int = 16, clips_per_batch: int = 2,
                   synthetic_num_clips: int = 40, split: str = "train", mesh=None,
                   stop_after_batches: int | None = None) -> str:
  """Label the first `num_clips` clips of the embedded synthetic dataset into `workdir/gazing_labels.json`
  (resumable: call again after a kill); returns its path. Without a checkpoint the tiny random-weight
  fixture is used (warned). `stop_after_batches` stops early without merging (a kill, for tests)."""
  from data_pipelines import ops
  from data_pipelines.pipeline import make_source
  cfg, graphdef, params, perceptual = load_videomae(videomae_checkpoint, "tiny")
  src = make_source("synthetic", None, split, synthetic_num_clips=synthetic_num_clips)
  keys = [ops.relative_video_path(p) for p in src.paths][:num_clips]
  meta = {"tau": gcfg.tau, "budget": gcfg.budget, "min_tokens": gcfg.min_tokens, "variant": gcfg.variant,
          "greedy": dataclasses.asdict(gcfg), "dtype": cfg.dtype, "num_frames": num_frames,
          "videomae_checkpoint": videomae_checkpoint or "(tiny fixture)"}
  label_dataset(GreedyLabeler(graphdef, params, gcfg, perceptual, mesh), src.load, keys, workdir, meta=meta,
                num_frames=num_frames, clips_per_batch=clips_per_batch, process_index=0, process_count=1,
                stop_after_batches=stop_after_batches)
  return os.path.join(workdir, LABELS_NAME)
