"""Multi-scale patch math: official masks, official mask->ids recovery, gather/scatter round trips."""
import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from autogaze_jax.core import patches as P
from autogaze_jax.gaze.config import GazeConfig, tiny_config
from autogaze_jax.core.resize import resize_bicubic, resize_bicubic_np
from tests.conftest import FIXTURES

L265 = P.RELEASED_LAYOUT
L1060 = P.ScaleLayout((56, 112, 196, 392), 14)


def _load(sub, name):
  return dict(np.load(os.path.join(FIXTURES, sub, name + ".npz")))


def _masks(d, prefix=""):
  return [d[f"{prefix}gazing_mask_{i}"] for i in range(4)]


# ---------------------------------------------------------------- layout and id math

def test_layout_numbers():
  assert L265 == P.ScaleLayout.from_gaze_config(GazeConfig()) == P.ScaleLayout.from_gaze_config(tiny_config())
  assert L265.grids == (2, 4, 7, 14) and L265.offsets == (0, 4, 20, 69) and L265.tokens_per_frame == 265
  assert L1060.grids == (4, 8, 14, 28) and L1060.offsets == (0, 16, 80, 276) and L1060.tokens_per_frame == 1060
  assert L265.patch_dim(3) == 768 and L1060.patch_dim(3) == 588
  hash(L1060)  # static argument of jit
  with pytest.raises(ValueError, match="multiple of patch_size"):
    P.ScaleLayout((32, 60), 16)
  with pytest.raises(ValueError, match="ascending"):
    P.ScaleLayout((64, 32), 16)


def test_split_ids_hand_computed():
  # frame 0 has 9 slots, frame 1 has 3; the last slot is a generate-style pad holding 265*(1+1).
  ids = np.array([[0, 3, 4, 19, 20, 68, 69, 264, 100, 265 + 70, 265 + 5, 530]])
  pad = np.zeros_like(ids, bool)
  pad[0, 8] = pad[0, 11] = True
  frame, scale, row, col, valid = jax.device_get(P.split_ids(ids, pad, np.array([9, 3]), L265))
  np.testing.assert_array_equal(valid[0], [1, 1, 1, 1, 1, 1, 1, 1, 0, 1, 1, 0])
  np.testing.assert_array_equal(frame[0], [0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1])
  np.testing.assert_array_equal(scale[0], [0, 0, 1, 1, 2, 2, 3, 3, 0, 3, 1, 0])
  np.testing.assert_array_equal(row[0], [0, 1, 0, 3, 0, 6, 0, 13, 0, 0, 0, 0])
  np.testing.assert_array_equal(col[0], [0, 1, 0, 3, 0, 6, 0, 13, 0, 1, 1, 0])
  # 1060 space: id 80 is the first 196-scale (14x14) patch, 1059 the last 392-scale one.
  _, scale, row, col, _ = P.split_ids(np.array([[15, 80, 1059]]), np.zeros((1, 3), bool), np.array([3]), L1060)
  np.testing.assert_array_equal(np.stack([scale, row, col])[:, 0], [[0, 2, 3], [3, 0, 27], [3, 0, 27]])


# ---------------------------------------------------------------- masks (official fixtures)

@pytest.mark.parametrize("name", ["generate_ratio0.1", "generate_ratio0.75_thr-2.5",
                                  "generate_batch2_ratio0.75_thr-2.5"])
def test_masks_equal_official(name):
  d = _load("gaze_tiny", name)
  masks = P.gazing_masks(d["gazing_pos"], d["if_padded_gazing"], 16, L265)
  for got, want in zip(masks, _masks(d)):
    assert got.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(got), want)
  # Real gazes land one per slot: the fixture has no duplicates.
  assert sum(float(m.sum()) for m in masks) == d["num_real_gazing_each_frame"].sum()


@pytest.mark.parametrize("name", ["resadapt392_ratio0.1", "resadapt392_ratio0.75_thr-2.5"])
def test_recovery_equals_official_1060(name):
  """The official res-adapt recovery rebuilds gazing_pos from stitched masks."""
  d = _load("gaze_tiny_extra", name)
  ids, pad, n = P.gazing_pos_from_masks(_masks(d), L1060)
  np.testing.assert_array_equal(ids, d["gazing_pos"])
  np.testing.assert_array_equal(pad, d["if_padded_gazing"])
  np.testing.assert_array_equal(n, d["num_gazing_each_frame"])
  # ...and the forward direction maps those ids back to the same 1060-space masks.
  for got, want in zip(P.gazing_masks(ids, pad, 16, L1060), _masks(d)):
    np.testing.assert_array_equal(np.asarray(got), want)


def test_recovery_pads_across_batch():
  """Batch of 2: per-frame count = max over the batch, pads hold 265*t - 1, real ids ascending."""
  d = _load("gaze_tiny", "generate_batch2_ratio0.75_thr-2.5")
  ids, pad, n = P.gazing_pos_from_masks(_masks(d), L265)
  real = d["num_real_gazing_each_frame"]  # (2, 16)
  np.testing.assert_array_equal(n, real.max(0))
  assert n[:5].tolist() == [198, 19, 79, 49, 79] and ids.shape == (2, 1621) and pad.sum() == 2 * 1621 - 2704
  starts = np.concatenate([[0], np.cumsum(n)])
  g_starts = np.concatenate([[0], np.cumsum(d["num_gazing_each_frame"])])
  for b in range(2):
    for t in range(16):
      sl = slice(starts[t], starts[t + 1])
      k = real[b, t]
      gen = d["gazing_pos"][b, g_starts[t]:g_starts[t + 1]][~d["if_padded_gazing"][b, g_starts[t]:g_starts[t + 1]]]
      np.testing.assert_array_equal(ids[b, sl][:k], np.sort(gen))
      assert (ids[b, sl][k:] == 265 * t - 1).all() and pad[b, sl][k:].all() and not pad[b, sl][:k].any()


def test_recovery_fixed_capacity_truncates():
  d = _load("gaze_tiny", "generate_ratio0.75_thr-2.5")
  cap = 30
  ids, valid, counts = jax.device_get(P.gazing_pos_from_masks_fixed(tuple(_masks(d)), L265, cap))
  assert ids.shape == valid.shape == (1, 16 * cap)
  np.testing.assert_array_equal(counts, d["num_real_gazing_each_frame"])
  np.testing.assert_array_equal(valid.reshape(16, cap).sum(1), np.minimum(counts[0], cap))
  full_ids, _, _ = P.gazing_pos_from_masks(_masks(d), L265)
  # frame 1 has 19 gazes (11 pad slots), frame 0 has 198 (the 30 lowest ids kept)
  np.testing.assert_array_equal(ids[0, :cap], full_ids[0, :cap])
  np.testing.assert_array_equal(ids[0, cap:cap + 19], full_ids[0, 198:198 + 19])
  assert (ids[0, cap + 19:2 * cap] == 264).all()


# ---------------------------------------------------------------- gather

def _np_patch_canvas(frames, layout):
  """Plain-numpy F.unfold: per scale, resize, cut p x p blocks row-major, flatten (c, ky, kx)."""
  b, t, c = frames.shape[:3]
  p = layout.patch_size
  out = np.zeros((b, t, layout.tokens_per_frame, c * p * p), np.float32)
  for s, g, off in zip(layout.scales, layout.grids, layout.offsets):
    img = resize_bicubic_np(frames, s, s)
    for r in range(g):
      for q in range(g):
        out[:, :, off + r * g + q] = img[:, :, :, r * p:(r + 1) * p, q * p:(q + 1) * p].reshape(b, t, -1)
  return out.reshape(b, t * layout.tokens_per_frame, -1)


@pytest.mark.parametrize("layout,hw", [(L265, (224, 224)), (P.ScaleLayout((8, 12, 20), 4), (20, 14))])
def test_gather_matches_numpy_unfold(layout, hw):
  rng = np.random.default_rng(0)
  b, t = 2, 2
  frames = rng.normal(size=(b, t, 3) + hw).astype(np.float32)
  v = layout.tokens_per_frame
  ids = rng.integers(0, t * v, size=(b, 40))
  ids[0, :len(layout.offsets)] = layout.offsets  # the first patch of every scale
  ids[1, -1] = t * v - 1                          # the very last id
  pad = np.zeros_like(ids, bool)
  pad[:, 30:35] = True
  ids[:, 33] = t * v  # a generate-style out-of-range pad value must not be read
  ids[1, 20] = -1     # an unflagged out-of-range id is invalid too
  want_canvas = _np_patch_canvas(frames, layout)
  got_canvas = P.multiscale_patches(jnp.asarray(frames), layout)
  np.testing.assert_allclose(np.asarray(got_canvas), want_canvas, atol=2e-5, rtol=0)
  patches, valid = jax.device_get(P.gather_patches(jnp.asarray(frames), ids, pad, layout))
  want_valid = ~pad & (ids >= 0) & (ids < t * v)
  np.testing.assert_array_equal(valid, want_valid)
  assert want_valid.sum() == 2 * 40 - 10 - 1
  want = np.where(want_valid[..., None], want_canvas[np.arange(b)[:, None], np.clip(ids, 0, t * v - 1)], 0)
  np.testing.assert_allclose(patches, want, atol=2e-5, rtol=0)
  assert not patches[~want_valid].any()


# ---------------------------------------------------------------- scatter / coverage

def _all_ids_of_scale(layout, i, t):
  off, n = layout.offsets[i], layout.tokens_per_scale[i]
  return np.concatenate([np.arange(off, off + n) + tt * layout.tokens_per_frame for tt in range(t)])[None]


@pytest.mark.parametrize("mode", ["nearest", "bicubic"])
def test_finest_round_trip_is_exact(mode):
  frames = jax.random.normal(jax.random.key(0), (1, 2, 3, 224, 224))
  ids = _all_ids_of_scale(L265, 3, 2)[:, ::-1].copy()  # slot order must not matter
  pad = np.zeros_like(ids, bool)
  patches, _ = P.gather_patches(frames, ids, pad, L265)
  back = P.scatter_patches(patches, ids, pad, L265, 2, 224, 224, mode=mode)
  np.testing.assert_array_equal(np.asarray(back), np.asarray(frames))
  assert bool(P.coverage(ids, pad, L265, 2, 224, 224).all())


def test_coarse_round_trip_is_resized_frame_upsampled():
  frames = jax.random.normal(jax.random.key(1), (1, 1, 3, 224, 224))
  ids = _all_ids_of_scale(L265, 2, 1)  # all 49 patches of the 112 scale
  pad = np.zeros_like(ids, bool)
  patches, _ = P.gather_patches(frames, ids, pad, L265)
  small = resize_bicubic(frames, 112, 112)
  near = P.scatter_patches(patches, ids, pad, L265, 1, 224, 224, mode="nearest")
  np.testing.assert_array_equal(np.asarray(near), np.repeat(np.repeat(np.asarray(small), 2, -1), 2, -2))
  cubic = P.scatter_patches(patches, ids, pad, L265, 1, 224, 224, mode="bicubic")
  np.testing.assert_allclose(np.asarray(cubic), np.asarray(resize_bicubic(small, 224, 224)), atol=1e-6, rtol=0)
  assert not np.allclose(np.asarray(cubic), np.asarray(frames), atol=1e-2)  # really a lossy path


def test_finer_patch_drawn_over_coarser_and_pads_skipped():
  p2 = 3 * 16 * 16
  # slots: id 69 (224-scale (0,0), 16x16 px) before id 0 (32-scale (0,0), 112x112 px); a pad slot.
  ids = np.array([[69, 0, 5]])
  pad = np.array([[False, False, True]])
  vals = jnp.stack([jnp.full((p2,), 2.0), jnp.full((p2,), 1.0), jnp.full((p2,), 9.0)])[None]
  bg = jnp.full((1, 1, 3, 224, 224), -1.0)
  out = np.asarray(P.scatter_patches(vals, ids, pad, L265, 1, 224, 224, background=bg))
  assert out[0, 0, :, 0, 0].tolist() == [2.0] * 3 and out[0, 0, 0, 15, 15] == 2.0 and out[0, 0, 0, 16, 15] == 1.0
  assert out[0, 0, 0, 111, 111] == 1.0 and out[0, 0, 0, 112, 0] == -1.0 and out[0, 0, 0, 0, 112] == -1.0
  assert (out == 9.0).sum() == 0 and (out == 1.0).sum() == 3 * (112 * 112 - 16 * 16)
  cov = np.asarray(P.coverage(ids, pad, L265, 1, 224, 224))
  assert cov.sum() == 112 * 112 and cov[0, 0, :112, :112].all()


def test_coverage_any_frame_size():
  # 112-scale cell (0,0) of a 100x60 frame: rows y with 7y//100 == 0 (15), cols x with 7x//60 == 0 (9).
  ids = np.array([[20, 265 + 68]])  # frame 1: 112-scale cell (6, 6), bottom-right
  pad = np.zeros_like(ids, bool)
  cov = np.asarray(P.coverage(ids, pad, L265, 2, 100, 60))
  assert cov.shape == (1, 2, 100, 60)
  assert cov[0, 0].sum() == 15 * 9 and cov[0, 0, :15, :9].all()
  assert cov[0, 1].sum() == (100 - 86) * (60 - 52) and cov[0, 1, 86:, 52:].all()  # ceil(600/7)=86, ceil(360/7)=52


# ---------------------------------------------------------------- compiled, fixed shapes

def test_no_retrace_for_same_shapes():
  chex.clear_trace_counter()
  gather = jax.jit(chex.assert_max_traces(P.gather_patches.__wrapped__, n=1), static_argnames=("layout",))
  scatter = jax.jit(chex.assert_max_traces(P.scatter_patches.__wrapped__, n=1),
                    static_argnames=("layout", "num_frames", "height", "width", "mode"))
  layout = P.ScaleLayout((8, 16), 8)
  outs = []
  for seed in range(2):
    frames = jax.random.normal(jax.random.key(seed), (2, 2, 3, 16, 16))
    ids = jax.random.randint(jax.random.key(seed + 10), (2, 6), 0, 10)
    pad = jnp.arange(6)[None, :] >= jnp.array([[6], [3 + seed]])
    patches, valid = gather(frames, ids, pad, layout=layout)
    outs.append(scatter(patches, ids, pad, layout=layout, num_frames=2, height=16, width=16))
    assert int(valid.sum()) == 9 + seed
  assert not np.array_equal(np.asarray(outs[0]), np.asarray(outs[1]))
