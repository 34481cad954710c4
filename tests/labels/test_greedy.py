"""Greedy gaze-label search (autogaze_jax/labels/greedy.py).

Most search tests use a *mini* VideoMAE (64x64 frames, scales 16/32/64 -> 21 ids per frame) on
embedded-dataset clips downsampled to 64x64, so exact greedy over every candidate stays cheap on 2 CPU
cores; the label-file and resume tests (test_loop.py) run the real 265-id layout.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from autogaze_jax.labels import greedy
from autogaze_jax.judge.losses import reconstruction_task
from autogaze_jax.judge.model import init_params
from autogaze_jax.core.sharding import make_mesh
from autogaze_jax.judge.config import tiny_videomae_config
from autogaze_jax.gaze.preprocess import normalize_on_device
from data_pipelines.pipeline import make_source

T, BUDGET = 3, 4
EXACT = greedy.GreedyConfig(budget=BUDGET, tau=-1.0, slot_bucket=16)   # tau unreachable: BUDGET per frame


@pytest.fixture(scope="module")
def source():
  return make_source("synthetic", None, "train", synthetic_num_clips=40)


@pytest.fixture(scope="module")
def mini(source):
  cfg = tiny_videomae_config(image_size=64, scales=(16, 32, 64))
  graphdef, params = init_params(cfg, seed=0)
  frames = np.stack([source.load(i)["frames"][:T] for i in range(2)])
  video = normalize_on_device(jnp.asarray(frames))
  video = jax.image.resize(video, video.shape[:3] + (64, 64), "linear")
  return cfg, graphdef, params, video


@pytest.fixture(scope="module")
def exact(mini):
  _, graphdef, params, video = mini
  return greedy.GreedyLabeler(graphdef, params, EXACT).label(video)


def _natural_losses(graphdef, params, video, earlier, own_prefix, cands, t, v):
  """Reference: frame-t loss of `earlier` frames + own_prefix + [c] for each candidate c, laid out as the
  official collation does (every frame padded to BUDGET slots, frames in order), R = {t}."""
  m = len(cands)
  cands = list(cands) + [cands[0]] * (v - m)         # one batch shape for every step (one compile)
  slots = []
  for c in cands:
    gp, pad = [], []
    for f in range(T):
      ids = earlier[f] if f < t else (own_prefix + [int(c) + v * t] if f == t else [])
      gp += ids + [0] * (BUDGET - len(ids))
      pad += [False] * len(ids) + [True] * (BUDGET - len(ids))
    slots.append((gp, pad))
  gp = jnp.asarray([s[0] for s in slots], jnp.int32)
  pad = jnp.asarray([s[1] for s in slots])
  vid = jnp.broadcast_to(video, (len(cands),) + video.shape)
  out = _natural_jit(graphdef, params, vid, gp, pad, jnp.full((T,), BUDGET, jnp.int32), jnp.asarray([t], jnp.int32))
  return np.asarray(out)[:m]


@functools.partial(jax.jit, static_argnums=0)
def _natural_jit(graphdef, params, vid, gp, pad, counts, r):
  return reconstruction_task(graphdef, params, vid, gp, pad, counts, r)["loss_each_reconstruction_frame"][:, 0]


def test_packed_search_is_exact_greedy_on_the_natural_layout(mini, exact):
  """Every step's choice is the argmin over all unchosen candidates, and its recorded loss equals the
  loss of that set in the official (frame-padded) layout: the packed, vectorised search is exact."""
  cfg, graphdef, params, video = mini
  v = cfg.tokens_per_frame
  lab = exact[0]
  for t in range(T):
    for j in range(BUDGET):
      prefix = lab.gazing_pos[t][:j]
      cands = [c for c in range(v) if c + v * t not in prefix]
      ref = _natural_losses(graphdef, params, video[0], lab.gazing_pos, prefix, cands, t, v)
      best = cands[int(np.argmin(ref))]
      assert lab.gazing_pos[t][j] == best + v * t, (t, j)
      np.testing.assert_allclose(lab.task_losses[t][j], ref.min(), rtol=1e-5, atol=1e-6)


def test_losses_never_increase_and_budget_is_used(exact):
  for lab in exact:
    assert [len(f) for f in lab.gazing_pos] == [BUDGET] * T
    for t, f in enumerate(lab.task_losses):
      assert np.all(np.diff(f) <= 1e-6), (t, f)
      assert f[-1] < f[0]                         # the search makes real progress
    assert not any(lab.reached)                   # tau = -1 is unreachable


def test_greedy_beats_random_and_uniform_grid(mini, exact):
  """At N = BUDGET patches per frame, greedy's loss is below random selections and a fixed uniform grid."""
  cfg, graphdef, params, video = mini
  v, g = cfg.tokens_per_frame, cfg.grid
  off = cfg.scale_offsets[-1]
  grid = [off + r * g + c for r in (1, 3) for c in (1, 3)]                  # 2x2 lattice of finest patches
  rng = np.random.default_rng(0)
  for i, lab in enumerate(exact):
    ours = greedy.loss_of_selection(graphdef, params, video[i], lab.gazing_pos, capacity=BUDGET)
    np.testing.assert_allclose(ours, [f[-1] for f in lab.task_losses], rtol=1e-5)
    grid_loss = greedy.loss_of_selection(graphdef, params, video[i], [[x + v * t for x in grid] for t in range(T)],
                                         capacity=BUDGET)
    rand = np.mean([greedy.loss_of_selection(graphdef, params, video[i],
                                             [list(rng.choice(v, BUDGET, replace=False) + v * t) for t in range(T)],
                                             capacity=BUDGET)
                    for _ in range(4)], axis=0)
    assert np.all(ours < grid_loss), (ours, grid_loss)
    assert np.all(ours < rand), (ours, rand)


def _same(a, b):
  for x, y in zip(a, b):
    assert x.gazing_pos == y.gazing_pos
    np.testing.assert_allclose(np.concatenate(x.task_losses), np.concatenate(y.task_losses), rtol=1e-5, atol=1e-6)


def test_k1_equals_exact_under_other_slot_and_chunk_shapes(mini, exact):
  """k_per_step=1 with a different slot bucketing and candidate chunking gives the exact labels."""
  _, graphdef, params, video = mini
  other = EXACT.replace(k_per_step=1, slot_bucket=8, candidate_chunk=8)
  _same(greedy.GreedyLabeler(graphdef, params, other).label(video), exact)


def test_random_subsampling_with_all_candidates_equals_exact(mini, exact):
  cfg, graphdef, params, video = mini
  sub = EXACT.replace(candidates="random", num_candidates=cfg.tokens_per_frame, seed=7)
  _same(greedy.GreedyLabeler(graphdef, params, sub).label(video), exact)


def test_sharded_over_data_axis_equals_single_device(mini, exact):
  _, graphdef, params, video = mini
  mesh = make_mesh(-1, 1)
  assert mesh.shape["data"] == 8
  _same(greedy.GreedyLabeler(graphdef, params, EXACT, mesh=mesh).label(video), exact)


def test_chunked_additions_record_exact_prefix_losses_and_stop_at_tau(mini, exact):
  """k=3: every recorded loss is the true loss of its prefix; with a finite tau each frame ends at its
  first loss <= tau (or the budget), inside a chunk if need be."""
  cfg, graphdef, params, video = mini
  tau = float(np.median([f[1] for lab in exact for f in lab.task_losses]))
  gc = EXACT.replace(k_per_step=3, tau=tau)
  labs = greedy.GreedyLabeler(graphdef, params, gc).label(video)
  for i, lab in enumerate(labs):
    assert lab.gazing_pos[0][0] == exact[i].gazing_pos[0][0]      # round 1 starts with the exact choice
    for t, f in enumerate(lab.task_losses):
      assert all(x > tau for x in f[:-1]) and (f[-1] <= tau or len(f) == BUDGET), (t, f)
      assert lab.reached[t] == (f[-1] <= tau)
      for j in range(1, len(f) + 1):
        sel = [fr if u < t else fr[:j] for u, fr in enumerate(lab.gazing_pos[:t + 1])] + [[]] * (T - t - 1)
        np.testing.assert_allclose(greedy.loss_of_selection(graphdef, params, video[i], sel, capacity=BUDGET)[t], f[j - 1],
                                   rtol=1e-5, atol=1e-6)


def test_variant_report_and_costs(mini):
  cfg, graphdef, params, video = mini
  variants = {"random8": EXACT.replace(candidates="random", num_candidates=8),
              "c2f2": EXACT.replace(candidates="coarse_to_fine", c2f_top=2),
              "k2": EXACT.replace(k_per_step=2)}
  rep = greedy.variant_report(graphdef, params, video[:1, :1], variants, EXACT)
  assert rep["exact"]["gap_to_exact"] == 0.0 and rep["exact"]["frames_within_1pct"] == 1.0
  v = cfg.tokens_per_frame
  assert rep["exact"]["evals_per_clip"] == BUDGET * v
  assert rep["random8"]["evals_per_clip"] == BUDGET * 8
  assert rep["c2f2"]["evals_per_clip"] == BUDGET * (cfg.scale_offsets[-1] + 2 * 4)
  assert rep["k2"]["evals_per_clip"] == (BUDGET // 2) * (v + 1)
  for name, r in rep.items():
    assert len(r["curve"]) == BUDGET and np.isfinite(r["final_loss"]), name
    assert r["variant"] == {"exact": "exact", "random8": "random8", "c2f2": "c2f2", "k2": "exact+k2"}[name]
    assert r["final_loss"] > 0.5 * rep["exact"]["final_loss"]


def test_config_errors():
  with pytest.raises(ValueError, match="min_tokens"):
    greedy.GreedyConfig(min_tokens=0)
  with pytest.raises(ValueError, match="candidates"):
    greedy.GreedyConfig(candidates="lazy")
  with pytest.raises(ValueError, match="k_per_step"):
    greedy.GreedyConfig(budget=2, k_per_step=3)
