"""The prefix-cached greedy search (judge/prefix_cache.py) equals the full-forward search: same set losses
(float noise), same labels."""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from autogaze_jax.judge import perceptual as pc
from autogaze_jax.judge import prefix_cache
from autogaze_jax.labels import greedy
from autogaze_jax.judge.config import tiny_videomae_config
from autogaze_jax.judge.model import init_params

T, BUDGET = 3, 4


@pytest.fixture(scope="module")
def mini():
  cfg = tiny_videomae_config(image_size=64, scales=(16, 32, 64))
  graphdef, params = init_params(cfg, seed=1)
  video = jax.random.normal(jax.random.key(3), (2, T, 3, 64, 64), jnp.float32)
  return cfg, graphdef, params, video


def _random_case(cfg, t, rng, m=6):
  """Two clips' packed prefixes of frames < t (different lengths, padded width) and m own sets each."""
  v = cfg.tokens_per_frame
  width = 2 * T * BUDGET
  ids = np.zeros((2, width), np.int32)
  plen = np.zeros((2,), np.int32)
  counts = np.zeros((2, T), np.int32)
  for b in range(2):
    flat = []
    for f in range(t):
      k = int(rng.integers(1, BUDGET + 1))
      counts[b, f] = k
      flat += list(rng.choice(v, k, replace=False) + v * f)
    ids[b, :len(flat)], plen[b] = flat, len(flat)
  sets = np.stack([np.stack([rng.choice(v, BUDGET, replace=False) for _ in range(m)]) for _ in range(2)])
  lens = rng.integers(1, BUDGET + 1, (2, m))
  return (jnp.asarray(ids), jnp.asarray(plen), jnp.asarray(counts)), jnp.asarray(sets, jnp.int32), jnp.asarray(lens, jnp.int32)


TINY_NETS = {  # random tiny perceptual nets (the released ones are DINOv2-reg-B / SigLIP2-B)
    "dinov2_reg": pc.ExtractorConfig("dinov2_reg", hidden_size=16, num_layers=2, num_heads=2, intermediate_size=32,
                                     patch_size=14, num_registers=2, pos_grid=5),
    "siglip2": pc.ExtractorConfig("siglip2", hidden_size=16, num_layers=2, num_heads=2, intermediate_size=32,
                                  patch_size=16, num_registers=0, pos_grid=14)}


@pytest.mark.parametrize("t,terms", [(0, "l1"), (1, "l1"), (2, "l1"), (2, "perceptual")])
def test_cached_set_losses_equal_full_forward(mini, t, terms):
  """Frame 0 (cls-only prefix), a short and a longer prefix; clips with different prefix lengths and set
  sizes in one call; prefix and own slots padded past what is real. Perceptual: the cached search scores
  against frame t's target features computed once, the full one recomputes them per set."""
  cfg, graphdef, params, video = mini
  perceptual = {}
  if terms == "perceptual":   # the feature nets take 224-pixel frames
    cfg = tiny_videomae_config(loss_type=("l1", "dinov2_reg", "siglip2"), loss_weights=(1.0, 0.3, 0.3))
    graphdef, params = init_params(cfg, seed=1)
    video = jax.image.resize(video, video.shape[:3] + (224, 224), "linear")
    perceptual = {k: pc.from_tensors(e, pc.random_tensors(e, seed=2)) for k, e in TINY_NETS.items()}
  prefix, sets, lens = _random_case(cfg, t, np.random.default_rng(t))
  n_full = greedy._round_up(int(prefix[1].max()) + BUDGET, 8)
  full = jax.jit(functools.partial(greedy.set_losses, graphdef, n_slots=n_full))(
      params, perceptual, video, prefix, jnp.int32(t), sets, lens)
  caches = jax.jit(functools.partial(greedy.prefix_caches, graphdef, n_prefix=int(prefix[1].max()) + 3))(
      params, video, prefix)
  cached = jax.jit(functools.partial(greedy.cached_set_losses, graphdef, n_own=BUDGET + 2))(
      params, perceptual, video, caches, jnp.int32(t), sets, lens)
  assert np.all(np.isfinite(np.asarray(cached)))
  np.testing.assert_allclose(np.asarray(cached), np.asarray(full), rtol=2e-5, atol=1e-6)
  assert np.ptp(np.asarray(full)) > 1e-3      # the sets really differ, so equality is not trivial


def test_cached_search_labels_equal_uncached(mini):
  """Exact greedy (all candidates) and chunked k=2: the same ids and the same losses with and without the cache."""
  _, graphdef, params, video = mini
  for g in (greedy.GreedyConfig(budget=BUDGET, tau=-1.0, slot_bucket=8),
            greedy.GreedyConfig(budget=BUDGET, tau=-1.0, slot_bucket=8, k_per_step=2, candidate_chunk=64)):
    cached = greedy.GreedyLabeler(graphdef, params, g).label(video)
    full = greedy.GreedyLabeler(graphdef, params, g.replace(prefix_cache=False)).label(video)
    for a, b in zip(cached, full):
      assert a.gazing_pos == b.gazing_pos
      np.testing.assert_allclose(np.concatenate(a.task_losses), np.concatenate(b.task_losses), rtol=2e-5, atol=1e-6)
      assert [len(f) for f in a.gazing_pos] == [BUDGET] * T


def test_non_causal_judge_falls_back_to_full_forwards():
  """Without the block-causal mask nothing is fixed across candidates: the labeler runs full forwards and
  the cache itself refuses by name."""
  cfg = dataclasses.replace(tiny_videomae_config(image_size=64, scales=(16, 32, 64)), causal=False)
  graphdef, params = init_params(cfg, seed=1)
  assert not greedy.GreedyLabeler(graphdef, params, greedy.GreedyConfig(budget=BUDGET)).cached
  with pytest.raises(ValueError, match="block-causal"):
    prefix_cache.prefix_kv(graphdef, params, jnp.zeros((1, T, 3, 64, 64)), jnp.zeros((4,), jnp.int32), 0)
