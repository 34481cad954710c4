"""Compiled rollout vs the official generate (fixtures), vs a plain reference, modes, tiling, errors."""
import os

import numpy as np
import pytest
from flax import nnx

from autogaze_jax import AutoGaze
from autogaze_jax.api import _take_sample
from autogaze_jax.gaze.preprocess import Processor
from autogaze_jax.gaze.tiling import recover_res_adapt, res_adapt_tiles
from tests.conftest import FIXTURES
from tests.gaze.rollout_reference import reference_generate

TINY = os.path.join(FIXTURES, "gaze_tiny")
EXTRA = os.path.join(FIXTURES, "gaze_tiny_extra")
EXACT = ("gazing_pos", "if_padded_gazing", "num_gazing_each_frame", "num_real_gazing_each_frame")


@pytest.fixture(scope="module")
def model():
  return AutoGaze.from_pretrained(TINY)


@pytest.fixture(scope="module")
def pv():
  return np.load(os.path.join(TINY, "input_clip.npz"))["pixel_values"]


def _check_exact(out, ref, keys=EXACT):
  for k in keys:
    assert out[k].shape == ref[k].shape, k
    np.testing.assert_array_equal(out[k], ref[k], err_msg=k)


def _flat_traces(out):
  """Per-frame (steps, B, k) traces -> the fixture's (S, B, k) order (frame-major, used steps only)."""
  tr = out["trace"]
  tl, ch = [], []
  for f, n in enumerate(tr["steps"]):
    tl.append(tr["trace_tl"][f, :n])
    ch.append(tr["trace_chosen"][f, :n])
  return np.concatenate(tl), np.concatenate(ch)


@pytest.mark.parametrize("name,batch2,ratio,thr", [
    ("generate_ratio0.1", False, 0.1, None),
    ("generate_ratio0.75_thr0.7", False, 0.75, 0.7),
    ("generate_ratio0.75_thr-2.5", False, 0.75, -2.5),
    ("generate_batch2_ratio0.1", True, 0.1, None),
    ("generate_batch2_ratio0.75_thr-2.5", True, 0.75, -2.5),
])
def test_official_generate_parity(model, pv, name, batch2, ratio, thr):
  ref = np.load(os.path.join(TINY, name + ".npz"))
  x = np.concatenate([pv, pv[..., ::-1]]) if batch2 else pv
  out = model.generate(x, ratio, thr, coupled=True, return_trace=True)
  _check_exact(out, ref)
  for i in range(4):
    np.testing.assert_array_equal(out["gazing_mask"][i], ref[f"gazing_mask_{i}"])
  np.testing.assert_allclose(out["log_action_probs"], ref["log_action_probs"], rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(out["task_loss_prediction"], ref["task_loss_prediction"], rtol=1e-4, atol=1e-4)
  tl, chosen = _flat_traces(out)
  np.testing.assert_array_equal(chosen, ref["trace_chosen"])
  used = ref["trace_chosen"] >= 0
  np.testing.assert_allclose(tl[used], ref["trace_task_loss_head"][used], rtol=1e-4, atol=1e-4)
  if thr is not None:
    np.testing.assert_array_equal(out["task_loss_requirement"], ref["task_loss_requirement"])


def test_nonsquare_input(model):
  d = np.load(os.path.join(EXTRA, "nonsquare_input.npz"))
  ref = np.load(os.path.join(EXTRA, "nonsquare_generate_ratio0.1.npz"))
  out = model.generate(d["pixel_values"], 0.1, coupled=True)
  _check_exact(out, ref)
  np.testing.assert_allclose(out["log_action_probs"], ref["log_action_probs"], rtol=1e-4, atol=1e-4)


def test_gaze_shortest_edge_224_is_the_official_basic_path(model):
  """gaze(resize="shortest_edge_224") on raw uint8 frames = the official QUICK_START basic run (processor:
  shortest edge 224, 320x180 -> 398x224; the model squashes to 224x224) on the same frames."""
  d = np.load(os.path.join(EXTRA, "nonsquare_input.npz"))
  ref = np.load(os.path.join(EXTRA, "nonsquare_generate_ratio0.1.npz"))
  res = model.gaze(d["frames_uint8"], 0.1, None, resize="shortest_edge_224", coupled=True)
  t = res["tiling"]
  assert (t.num_tiles, t.height, t.width) == (1, 224, 224) and res["frames"].shape == (16, 224, 224, 3)
  _check_exact(res["tiles"][0], ref)
  np.testing.assert_array_equal(res["masks"][3].reshape(1, 16, -1), ref["gazing_mask_3"].astype(bool))
  np.testing.assert_allclose(res["kept_ratio_per_frame"], ref["num_real_gazing_each_frame"][0] / 265)
  with pytest.raises(ValueError, match="resize='crop': choose one of native, shortest_edge_224"):
    model.gaze(d["frames_uint8"][:1], resize="crop")


@pytest.mark.parametrize("name,ratio,thr", [("streaming_ratio0.1", 0.1, None),
                                            ("streaming_ratio0.75_thr-2.5", 0.75, -2.5)])
def test_streaming_equals_fixture_and_whole_clip(model, pv, name, ratio, thr):
  ref = np.load(os.path.join(EXTRA, name + ".npz"))
  stream = model.stream(ratio, thr, coupled=True)
  outs = [stream(pv[:, t:t + 1]) for t in range(16)]
  gp = np.concatenate([o["gazing_pos"] for o in outs], 1)
  np.testing.assert_array_equal(gp, ref["gazing_pos"])  # frame-local ids, pads = 265
  np.testing.assert_array_equal(np.concatenate([o["num_gazing_each_frame"] for o in outs]), ref["num_gazing_each_frame"])
  whole = model.generate(pv, ratio, thr, coupled=True, generate_only=True)
  np.testing.assert_array_equal(gp + 265 * np.repeat(np.arange(16), whole["num_gazing_each_frame"])[None],
                                whole["gazing_pos"])


@pytest.mark.parametrize("name,ratio,thr", [("resadapt392_ratio0.1", 0.1, None),
                                            ("resadapt392_ratio0.75_thr-2.5", 0.75, -2.5)])
def test_resolution_adaptation_392(model, name, ratio, thr):
  d = np.load(os.path.join(EXTRA, "resadapt392_input.npz"))
  ref = np.load(os.path.join(EXTRA, name + ".npz"))
  x = Processor.from_pretrained(TINY, size=(392, 392))(d["frames_uint8"])[None]
  tiles, info = res_adapt_tiles(x, model.cfg, [56, 112, 196, 392], 14)
  m = nnx.merge(model.graphdef, model.params)
  np.testing.assert_allclose(np.asarray(m.embed_video(tiles[:, :1])[0]).shape[0], 4)
  tile_out = model.generate(tiles, ratio, thr, coupled=True)  # the 4 tiles are batch mates, as official
  for k in ("gazing_pos", "if_padded_gazing", "num_gazing_each_frame"):
    np.testing.assert_array_equal(tile_out[k], ref["tile_" + k], err_msg=k)
  np.testing.assert_allclose(tile_out["log_action_probs"], ref["tile_log_action_probs"], rtol=1e-4, atol=1e-4)
  out = recover_res_adapt(tile_out, info, 1)
  _check_exact(out, ref)
  assert out["num_vision_tokens_each_frame"] == 1060 and "log_action_probs" not in out
  for i in range(4):
    np.testing.assert_array_equal(out["gazing_mask"][i], ref[f"gazing_mask_{i}"])
  # the public entry point does the same
  pub = model.generate(x, ratio, thr, target_scales=[56, 112, 196, 392], target_patch_size=14, coupled=True)
  np.testing.assert_array_equal(pub["gazing_pos"], ref["gazing_pos"])


def test_default_mode_gives_each_sample_its_alone_result(model, pv):
  # With a loss threshold the official batch couples samples (fixture batch2 thr-2.5 differs from the
  # single run from frame 3 on); the default mode must not.
  ref = np.load(os.path.join(TINY, "generate_ratio0.75_thr-2.5.npz"))
  out = model.generate(np.concatenate([pv, pv[..., ::-1]]), 0.75, -2.5)
  s0, s1 = _take_sample(out, 0), _take_sample(out, 1)
  _check_exact(s0, ref)
  np.testing.assert_allclose(s0["log_action_probs"], ref["log_action_probs"], rtol=1e-4, atol=1e-4)
  alone1 = model.generate(pv[..., ::-1], 0.75, -2.5)
  _check_exact(s1, alone1)
  coupled = np.load(os.path.join(TINY, "generate_batch2_ratio0.75_thr-2.5.npz"))
  assert not np.array_equal(coupled["gazing_pos"][:1], s0["gazing_pos"][:, :coupled["gazing_pos"].shape[1]])


@pytest.mark.parametrize("k,budget,thr", [(1, 5, None), (1, 6, -0.3), (10, 23, None), (10, 30, -1.0), (3, 8, 0.2)])
def test_tokens_per_step_vs_plain_reference(model, pv, k, budget, thr):
  x = pv[:, :3]
  m = nnx.merge(model.graphdef, model.params)
  want = reference_generate(m, x, budget, thr, k)
  out = model.generate(x, budget / 265 + 1e-4, thr, tokens_per_step=k, coupled=True, generate_only=True)
  got, off = [], 0
  for f, n in enumerate(out["num_gazing_each_frame"]):
    got.append((out["gazing_pos"][0, off:off + n] - 265 * f).tolist())
    off += n
  assert got == want


def test_tiles_of_a_large_long_video_equal_each_tile_alone(model):
  fr = np.load(os.path.join(TINY, "input_clip.npz"))["frames_uint8"]
  big = np.concatenate([np.concatenate([fr, fr[:, ::-1]], 1), np.concatenate([fr[:, :, ::-1], fr], 1)], 2)
  big = np.concatenate([big, big[:4]], 0)  # (20, 448, 448, 3): 2 temporal x 2 x 2 tiles
  res = model.gaze(big, 0.1, None, batch_tiles=8)
  assert res["tiling"].num_tiles == 8 and [m.shape for m in res["masks"]] == [(20, 4, 4), (20, 8, 8), (20, 14, 14), (20, 28, 28)]
  norm = model.processor.normalize
  alone = model.generate(norm(big[:16, 224:, :224])[None], 0.1)           # tile (t0, row 1, col 0)
  np.testing.assert_array_equal(res["tiles"][2]["gazing_pos"], alone["gazing_pos"])
  alone = model.generate(norm(big[16:, :224, 224:])[None], 0.1)           # partial temporal tile
  np.testing.assert_array_equal(res["tiles"][5]["gazing_pos"], alone["gazing_pos"])
  np.testing.assert_allclose(res["kept_ratio_per_frame"], 26 / 265)
  # the stitched video mask of tile (row 1, col 0) at the finest scale = that tile's own mask
  np.testing.assert_array_equal(res["masks"][3][:16, 14:, :14].reshape(16, -1), alone_mask(model, big[:16, 224:, :224]))


def alone_mask(model, frames):
  return model.generate(model.processor.normalize(frames)[None], 0.1)["gazing_mask"][3][0].astype(bool)


def test_threshold_tiles_independent_of_batch_mates(model):
  fr = np.load(os.path.join(TINY, "input_clip.npz"))["frames_uint8"][:4]
  wide = np.concatenate([fr, fr[:, :, ::-1]], 2)  # 2 tiles side by side
  res = model.gaze(wide, 0.75, -2.5)
  for i, tile in enumerate([fr, fr[:, :, ::-1]]):
    alone = model.generate(model.processor.normalize(tile)[None], 0.75, -2.5)
    np.testing.assert_array_equal(res["tiles"][i]["gazing_pos"], alone["gazing_pos"])


def test_sampling_respects_budget_and_no_repeat(model, pv):
  out = model.generate(pv[:, :4], 0.1, None, sample=True, temperature=3.0, seed=1, generate_only=True)
  off = 0
  for f, n in enumerate(out["num_gazing_each_frame"]):
    ids = out["gazing_pos"][0, off:off + n] - 265 * f
    off += n
    assert n == 26 and len(set(ids.tolist())) == 26 and ids.max() < 265
  again = model.generate(pv[:, :4], 0.1, None, sample=True, temperature=3.0, seed=1, generate_only=True)
  other = model.generate(pv[:, :4], 0.1, None, sample=True, temperature=3.0, seed=2, generate_only=True)
  np.testing.assert_array_equal(out["gazing_pos"], again["gazing_pos"])
  assert not np.array_equal(out["gazing_pos"], other["gazing_pos"])


@pytest.mark.parametrize("ratio,thr,match", [(0.0, None, r"\(0, 1\]"), (1.5, None, r"\(0, 1\]"),
                                             (float("nan"), None, r"\(0, 1\]"), (0.5, float("inf"), "finite"),
                                             (0.5, "abc", "finite"), ([0.1] * 3, None, "per-frame")])
def test_bad_arguments(model, pv, ratio, thr, match):
  with pytest.raises(ValueError, match=match):
    model.generate(pv[:, :2], ratio, thr)


def test_bad_frames(model):
  with pytest.raises(ValueError, match="uint8"):
    model.gaze(np.zeros((4, 32, 32, 3), np.float32))
  with pytest.raises(ValueError, match="empty"):
    model.gaze(np.zeros((0, 32, 32, 3), np.uint8))
