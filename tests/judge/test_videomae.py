"""VideoMAE task model: fixture parity, block causality, sharding, checkpoints, bad input, training."""
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.conftest import FIXTURES
from autogaze_jax.judge import perceptual as pc
from autogaze_jax.interop.common import CheckpointError, read_safetensors
from autogaze_jax.interop.videomae import load_checkpoint, official_to_params, save_checkpoint
from autogaze_jax.judge.losses import frame_losses, perceptual_targets, reconstruction_task
from autogaze_jax.judge.model import check_gaze_inputs, init_params
from autogaze_jax.core.sharding import make_mesh, param_specs, shard_batch, shard_params
from autogaze_jax.judge.config import JudgeTermsError, VideoMAEConfig, tiny_videomae_config
from autogaze_jax.judge.load import select_terms
from autogaze_jax.train.judge import VideoMAETrainConfig, make_optimizer, make_train_step, random_gaze
from autogaze_jax.train.state import TrainState

DIR = os.path.join(FIXTURES, "videomae_tiny")
CASES = ("recon_all_frames", "recon_frames_9_2")


@functools.lru_cache(maxsize=None)
def _model():
  return load_checkpoint(DIR)


@functools.lru_cache(maxsize=None)
def _inputs():
  d = np.load(os.path.join(DIR, "inputs.npz"))
  video = np.concatenate([d["video_for_task"], d["video_for_task"][..., ::-1]], 0)  # sample 1 = mirror
  return video, d["gazing_pos"], d["if_padded_gazing"], d["num_gazing_each_frame"]


_task = jax.jit(reconstruction_task, static_argnums=0)


@functools.lru_cache(maxsize=None)
def _fixture_run(case):
  cfg, g, p, _ = _model()
  ref = dict(np.load(os.path.join(DIR, f"{case}.npz")))
  out = _task(g, p, *_inputs(), ref["frame_idx_to_reconstruct"])
  return jax.tree.map(np.asarray, out), ref


# ---------------------------------------------------------------- parity
@pytest.mark.parametrize("case", CASES)
def test_fixture_losses_rewards_targets(case):
  out, ref = _fixture_run(case)
  for k in ("loss_each_reconstruction_frame", "loss_mean", "reward", "reconstruction_loss_each_gazing_token"):
    np.testing.assert_allclose(out[k], ref[k], rtol=1e-5, atol=1e-6, err_msg=k)
  np.testing.assert_array_equal(out["reconstruction_loss_each_gazing_token_mask"],
                                ref["reconstruction_loss_each_gazing_token_mask"])
  for k in ("traj_len_each_reward", "num_non_padded_gazing_at_each_reconstruction_frame"):
    np.testing.assert_array_equal(out[k], ref[k], err_msg=k)
  np.testing.assert_array_equal(out["traj_len_each_reward"], ref["num_gazing_before_each_reconstruction_frame"])
  assert out["reconstruction_loss_each_gazing_token_mask"].sum() > 0


@pytest.mark.parametrize("case", CASES)
def test_fixture_reconstruction_and_hidden(case):
  out, ref = _fixture_run(case)
  # all rows, padded ones too: we reproduce the official dummy token and the last-row self-edge quirk
  np.testing.assert_allclose(out["encoder_last_hidden_state"], ref["encoder_last_hidden_state"], rtol=1e-4, atol=1e-4)
  g, p = 16, 16
  rec = out["reconstruction"]                                    # (B,R,3,224,224) -> official patchify order
  patches = rec.reshape(*rec.shape[:2], 3, 14, g, 14, p).transpose(0, 1, 3, 5, 4, 6, 2).reshape(*rec.shape[:2], 196, -1)
  np.testing.assert_allclose(patches.mean(-1), ref["recon_patch_mean"], rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(np.sqrt((patches ** 2).mean(-1)), ref["recon_patch_rms"], rtol=1e-4, atol=1e-4)
  if "reconstruction_b0_f15" in ref:
    np.testing.assert_allclose(rec[0, 15], ref["reconstruction_b0_f15"], rtol=1e-4, atol=1e-4)


def test_block_causality_and_order_invariance():
  """Changing frame 6 leaves every output of frames <= 5 unchanged; frame 6 itself changes."""
  _, g, p, _ = _model()
  video, pos, pad, cnt = _inputs()
  frames = np.arange(16)
  base, _ = _fixture_run("recon_all_frames")
  video2 = video.copy()
  video2[:, 6] = np.random.default_rng(0).normal(size=video2[:, 6].shape)
  out = jax.tree.map(np.asarray, _task(g, p, video2, pos, pad, cnt, frames))
  end5 = int(cnt[:6].sum())
  np.testing.assert_array_equal(out["reconstruction"][:, :6], base["reconstruction"][:, :6])
  np.testing.assert_array_equal(out["encoder_last_hidden_state"][:, :1 + end5],
                                base["encoder_last_hidden_state"][:, :1 + end5])
  assert np.abs(out["reconstruction"][:, 6] - base["reconstruction"][:, 6]).max() > 1e-3


def test_static_counts_same_outputs():
  """The static-count path (encoder skips later frames' keys) equals the traced one."""
  from autogaze_jax.judge.model import frame_groups
  assert frame_groups((3, 0, 200, 5), 1, 128) == ((0, 204, 204), (204, 209, 209))
  _, g, p, _ = _model()
  video, pos, pad, cnt = _inputs()
  fn = jax.jit(functools.partial(reconstruction_task, static_counts=tuple(int(c) for c in cnt)), static_argnums=0)
  out = fn(g, p, video, pos, pad, cnt, np.array([9, 2]))
  ref, _ = _fixture_run("recon_frames_9_2")
  np.testing.assert_allclose(np.asarray(out["encoder_last_hidden_state"]), ref["encoder_last_hidden_state"], atol=1e-5)
  np.testing.assert_allclose(np.asarray(out["reconstruction"]), ref["reconstruction"], atol=1e-5)
  # every frame reconstructed: the decoder drops the (all dead) slot rows instead of masking them
  out = fn(g, p, video, pos, pad, cnt, np.arange(16))
  ref, _ = _fixture_run("recon_all_frames")
  np.testing.assert_allclose(np.asarray(out["reconstruction"]), ref["reconstruction"], atol=1e-5)


def test_uniform_static_counts_drop_dead_slots():
  """Same slot count in every frame: the decoder keeps only the slots of frames not reconstructed (their
  number is static) and gives what the traced-count decoder (all slots, dead ones masked) gives."""
  _, g, p, _ = _model()
  video = _inputs()[0]
  rng = np.random.default_rng(3)
  k = 6
  pos = np.stack([np.concatenate([rng.permutation(265)[:k] + 265 * t for t in range(16)]) for _ in range(2)])
  pad = rng.random(pos.shape) < 0.2
  cnt = np.full((16,), k, np.int32)
  fr = np.array([4, 13, 0])
  traced = _task(g, p, video, pos, pad, cnt, fr)
  static = jax.jit(functools.partial(reconstruction_task, static_counts=(k,) * 16), static_argnums=0)(
      g, p, video, pos, pad, cnt, fr)
  np.testing.assert_allclose(np.asarray(static["reconstruction"]), np.asarray(traced["reconstruction"]), atol=1e-5)
  np.testing.assert_allclose(np.asarray(static["loss_each_reconstruction_frame"]),
                             np.asarray(traced["loss_each_reconstruction_frame"]), rtol=1e-5)


def test_prefix_buckets_minimise_expected_frames():
  """The bucket DP matches a brute force over all bucket sets (expected kept frames, R uniform draws)."""
  import itertools
  from math import comb
  from autogaze_jax.judge.model import prefix_buckets

  def expected(b, t, r):
    return sum((comb(k, r) - comb(k - 1, r)) * min(x for x in b if x >= k) for k in range(r, t + 1)) / comb(t, r)

  for t, r, n in ((16, 2, 4), (16, 1, 3), (9, 3, 3), (16, 2, 1)):
    got = prefix_buckets(t, r, n)
    assert got[-1] == t and len(got) <= n and list(got) == sorted(set(got))
    best = min(expected(c + (t,), t, r) for m in range(n) for c in itertools.combinations(range(1, t), m))
    assert expected(got, t, r) == pytest.approx(best)
  assert prefix_buckets(16, 2, 4) == (7, 10, 13, 16) and prefix_buckets(16, 16, 4) == (16,)


@pytest.mark.parametrize("frames", [[9, 2], [0, 1], [15, 3], [6, 5]])
def test_prefix_forward_same_reconstructions(frames):
  """Skipping the frames after the latest reconstructed one (one branch per bucket, chosen at run time
  from traced frame ids) gives the full forward's reconstructions and losses; the fixture pins [9, 2]."""
  _, g, p, _ = _model()
  video, pos, pad, cnt = _inputs()
  static = tuple(int(c) for c in cnt)
  full = jax.jit(functools.partial(reconstruction_task, static_counts=static), static_argnums=0)
  skip = jax.jit(functools.partial(reconstruction_task, static_counts=static, prefix_buckets_n=4), static_argnums=0)
  fr = np.array(frames)
  a, b = full(g, p, video, pos, pad, cnt, fr), skip(g, p, video, pos, pad, cnt, fr)
  assert "encoder_last_hidden_state" not in b
  np.testing.assert_allclose(np.asarray(b["reconstruction"]), np.asarray(a["reconstruction"]), atol=1e-5)
  np.testing.assert_allclose(np.asarray(b["loss_each_reconstruction_frame"]),
                             np.asarray(a["loss_each_reconstruction_frame"]), rtol=1e-5)
  if frames == [9, 2]:
    ref, _ = _fixture_run("recon_frames_9_2")
    np.testing.assert_allclose(np.asarray(b["reconstruction"]), ref["reconstruction"], atol=1e-5)


@pytest.mark.parametrize("impl,block", [("dot_product", 264), ("flash", 16)])
def test_attention_impls_same_outputs(impl, block):
  """Every attention implementation (default "auto" = flash on CPU) gives the same model outputs. The
  fixture runs flash with 264-row tiles (its 123-row encoder: one masked softmax; decoder: frame-ordered
  tiles); 16-row tiles take the tiled path in the encoder too (self edges of padded rows)."""
  import dataclasses
  from flax import nnx
  cfg, g, p, _ = _model()
  assert cfg.resolved_attn_impl == "flash" and cfg.attn_block == 264
  model = nnx.merge(g, p)
  model.cfg = dataclasses.replace(cfg, attn_impl=impl, attn_block=block)
  g2, p2 = nnx.split(model)
  out = _task(g2, p2, *_inputs(), np.array([9, 2]))
  ref, _ = _fixture_run("recon_frames_9_2")
  np.testing.assert_allclose(np.asarray(out["encoder_last_hidden_state"]), ref["encoder_last_hidden_state"], atol=1e-5)
  np.testing.assert_allclose(np.asarray(out["reconstruction"]), ref["reconstruction"], atol=1e-5)


def test_remat_scan_same_outputs_and_grads():
  """remat='block' (scan over stacked blocks) computes what the unrolled remat='none' path does."""
  video, pos, pad, cnt = _inputs()
  frames = np.array([3])
  res = []
  for remat in ("none", "block"):
    cfg = tiny_videomae_config(remat=remat)
    g, p = init_params(cfg, seed=4)
    f = jax.jit(jax.value_and_grad(lambda q: jnp.mean(reconstruction_task(
        g, q, video[:, :4], pos[:, :int(cnt[:4].sum())], pad[:, :int(cnt[:4].sum())], cnt[:4], frames)["loss_mean"])))
    res.append(f(p))
  np.testing.assert_allclose(float(res[0][0]), float(res[1][0]), rtol=1e-6)
  for a, b in zip(jax.tree.leaves(res[0][1]), jax.tree.leaves(res[1][1])):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------- sharding
@pytest.mark.parametrize("data,fsdp", [(2, 4)])
def test_sharded_equals_single_device(data, fsdp):
  cfg, g, p, _ = _model()
  video, pos, pad, cnt = _inputs()
  frames = np.array([9, 2])
  mesh = make_mesh(data=data, fsdp=fsdp)
  specs = jax.tree.leaves(param_specs(p, mesh), is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
  assert sum("fsdp" in tuple(s) for s in specs) >= 60          # VideoMAE params really are FSDP-sharded
  ps = shard_params(p, mesh)
  batch = shard_batch({"video": video, "pos": pos, "pad": pad}, mesh)
  assert batch["video"].sharding.spec[0] in ("data", ("data",))
  out = jax.block_until_ready(_task(g, ps, batch["video"], batch["pos"], batch["pad"], cnt, frames))
  ref, _ = _fixture_run("recon_frames_9_2")
  np.testing.assert_allclose(np.asarray(out["loss_each_reconstruction_frame"]), ref["loss_each_reconstruction_frame"],
                             rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(np.asarray(out["reconstruction"]), ref["reconstruction"], atol=1e-5)


# ---------------------------------------------------------------- checkpoints
def test_checkpoint_round_trip_bit_exact(tmp_path):
  cfg, g, p, _ = _model()
  save_checkpoint(str(tmp_path / "a"), cfg, p)
  orig, _ = read_safetensors(os.path.join(DIR, "model.safetensors"))
  saved, meta = read_safetensors(str(tmp_path / "a" / "model.safetensors"))
  assert meta == {"format": "pt"} and set(saved) == set(orig)
  for k in orig:
    assert saved[k].dtype == orig[k].dtype and np.array_equal(saved[k], orig[k]), k
  cfg2, _, p2, _ = load_checkpoint(str(tmp_path / "a"))
  assert cfg2 == cfg
  for a, b in zip(jax.tree.leaves(p), jax.tree.leaves(p2)):
    assert np.array_equal(np.asarray(a), np.asarray(b))


def test_checkpoint_prefixes_and_errors():
  cfg, _, _, _ = _model()
  orig, _ = read_safetensors(os.path.join(DIR, "model.safetensors"))
  ddp = {"module.mae." + k: v for k, v in orig.items()}
  ddp["module.mae.dinov2_reg.embeddings.cls_token"] = np.zeros((1, 1, 4), np.float32)
  tree, perceptual = official_to_params(cfg, ddp)
  assert list(perceptual) == ["dinov2_reg.embeddings.cls_token"]
  np.testing.assert_array_equal(tree["vit"]["layer"][1]["query"]["kernel"], orig["vit.encoder.layer.1.attention.attention.query.weight"].T)
  missing = dict(orig)
  del missing["decoder.mask_token"]
  with pytest.raises(CheckpointError, match="missing \\['decoder.mask_token'\\]"):
    official_to_params(cfg, missing)
  extra = dict(orig, **{"vit.extra": np.zeros(1, np.float32)})
  with pytest.raises(CheckpointError, match="unexpected \\['vit.extra'\\]"):
    official_to_params(cfg, extra)
  bad = dict(orig, **{"vit.layernorm.bias": np.zeros(5, np.float32)})
  with pytest.raises(CheckpointError, match="vit.layernorm.bias has shape \\(5,\\)"):
    official_to_params(cfg, bad)


def test_config_round_trip():
  cfg = _model()[0]
  assert cfg == tiny_videomae_config()
  d = cfg.to_official_dict()
  with open(os.path.join(DIR, "config.json")) as f:
    import json
    assert d == json.load(f)
  big = VideoMAEConfig()
  assert (big.hidden_size, big.num_hidden_layers, big.tokens_per_frame, big.loss_weights) == (1024, 24, 265, (1.0, 0.3, 0.3))
  with pytest.raises(ValueError, match="remat"):
    VideoMAEConfig(remat="sometimes")


# ---------------------------------------------------------------- bad input
def test_out_of_range_id_in_real_slot():
  """Host check raises naming the slot; under jit such a slot behaves exactly like a padded one."""
  cfg, g, p, _ = _model()
  v = cfg.tokens_per_frame
  video, pos, pad, cnt = _inputs()
  check_gaze_inputs(pos, pad, cnt, 16, v)                       # the fixture is valid (padded ids may be anything)
  bad_pos = pos.copy()
  j = int(np.argmax(~pad[0] & (np.arange(pos.shape[1]) >= cnt[:3].sum())))   # a real slot in frame 3
  bad_pos[0, j] = 16 * 265 + 7
  with pytest.raises(ValueError, match=f"gazing_pos\\[0, {j}\\] = 4247"):
    check_gaze_inputs(bad_pos, pad, cnt, 16, v)
  with pytest.raises(ValueError, match="summing to N"):
    check_gaze_inputs(pos, pad, cnt + 1, 16, v)
  frames = np.array([9, 2])
  as_pad = pad.copy()
  as_pad[0, j] = True
  a = _task(g, p, video, bad_pos, pad, cnt, frames)
  b = _task(g, p, video, pos, as_pad, cnt, frames)
  np.testing.assert_array_equal(np.asarray(a["reconstruction"]), np.asarray(b["reconstruction"]))
  assert int(a["num_non_padded_gazing_at_each_reconstruction_frame"][0, 0]) == int(
      b["num_non_padded_gazing_at_each_reconstruction_frame"][0, 0])


def test_frame_without_patches():
  """A frame whose slots are all padded, and a frame with zero slots, give finite defined outputs."""
  _, g, p, _ = _model()
  video, pos, pad, cnt = _inputs()
  start = int(cnt[:2].sum())
  pad2 = pad.copy()
  pad2[:, start:start + cnt[2]] = True                           # frame 2: no real slot
  out = _task(g, p, video, pos, pad2, cnt, np.array([2, 9]))
  assert np.isfinite(np.asarray(out["loss_each_reconstruction_frame"])).all()
  np.testing.assert_array_equal(np.asarray(out["num_non_padded_gazing_at_each_reconstruction_frame"])[:, 0], 0)
  m = np.asarray(out["reconstruction_loss_each_gazing_token_mask"])[:, start:start + cnt[2]]
  assert m.all()                                                 # official: padded[j+1] -> all True
  # zero slots in frame 0: drop its slots entirely
  n0 = int(cnt[0])
  cnt0 = cnt.copy()
  cnt0[0] = 0
  out0 = _task(g, p, video, pos[:, n0:], pad[:, n0:], cnt0, np.array([0, 9]))
  assert np.isfinite(np.asarray(out0["reconstruction"])).all()
  np.testing.assert_array_equal(np.asarray(out0["traj_len_each_reward"]), [0, cnt[1:10].sum()])


# ---------------------------------------------------------------- training
def _tiny_batch(t=2):
  video, *_ = _inputs()
  return {"video": jnp.asarray(video[:, :t])}


def test_grads_finite_and_nonzero_for_every_param():
  cfg = tiny_videomae_config()
  g, p = init_params(cfg, seed=1)
  tcfg = VideoMAETrainConfig()
  pos, pad, cnt = random_gaze(tcfg, jax.random.key(0), 2, 2)
  assert pos.shape == (2, sum(tcfg.slots_per_frame(2))) and (~pad).sum(1).min() >= 2
  video = _tiny_batch()["video"]

  def loss(params):
    return jnp.mean(reconstruction_task(g, params, video, pos, pad, cnt, jnp.arange(2))["loss_mean"])
  grads = jax.jit(jax.grad(loss))(p)
  for path, leaf in jax.tree_util.tree_flatten_with_path(grads)[0]:
    a = np.asarray(leaf)
    assert np.isfinite(a).all() and np.abs(a).max() > 0, jax.tree_util.keystr(path)


def test_train_step_loss_decreases_and_tables_frozen():
  cfg = tiny_videomae_config()
  g, p = init_params(cfg, seed=2)
  tcfg = VideoMAETrainConfig(lr=1e-2, total_steps=8, warmup_frac=0.0, recon_frames=1)
  tx = make_optimizer(tcfg)
  state = TrainState(step=jnp.zeros((), jnp.int32), params=p, opt_state=tx.init(p))
  step = jax.jit(make_train_step(tcfg, g, tx), donate_argnums=0)
  batch, rng = _tiny_batch(), jax.random.key(3)
  pos0 = np.asarray(p["vit"]["embeddings"]["position_embeddings"][...])
  losses = []
  for _ in range(6):
    state, m = step(state, batch, rng, {})
    losses.append(float(m["loss"]))
    assert np.isfinite([float(v) for v in m.values()]).all()
  assert losses[-1] < 0.8 * losses[0], losses
  np.testing.assert_array_equal(np.asarray(state.params["vit"]["embeddings"]["position_embeddings"][...]), pos0)
  assert int(state.step) == 6


# ---------------------------------------------------------------- perceptual terms
TINY_DINO = pc.ExtractorConfig("dinov2_reg", hidden_size=16, num_layers=4, num_heads=2, intermediate_size=32,
                               patch_size=14, num_registers=2, pos_grid=5)
TINY_SIGLIP = pc.ExtractorConfig("siglip2", hidden_size=16, num_layers=4, num_heads=2, intermediate_size=32,
                                 patch_size=16, num_registers=0, pos_grid=14)


def test_perceptual_load_features_and_weighted_loss(tmp_path):
  from safetensors.numpy import save_file
  nets = {}
  for name, ecfg, prefix in (("dinov2_reg", TINY_DINO, "dinov2_reg."), ("siglip2", TINY_SIGLIP, "")):
    t = pc.random_tensors(ecfg, seed=5)
    path = str(tmp_path / f"{name}.safetensors")
    save_file({prefix + k: v for k, v in t.items()}, path)
    nets[name] = pc.load(ecfg, path)
    bad = dict(t)
    bad.pop(next(iter(bad)))
    with pytest.raises(CheckpointError, match="missing"):
      pc.from_tensors(ecfg, bad)
  video, *_ = _inputs()
  x = jnp.asarray(video[:1, :2])                                   # (1,2,3,224,224)
  y = x + 0.1 * jnp.asarray(np.random.default_rng(1).normal(size=x.shape), jnp.float32)
  f = pc.features(nets["dinov2_reg"], x[0])
  assert f.shape == (2, 256, 4 * 16) and np.isfinite(np.asarray(f)).all()
  assert pc.features(nets["siglip2"], x[0]).shape == (2, 196, 64)
  cfg = tiny_videomae_config(loss_type=("l1", "dinov2_reg", "siglip2"), loss_weights=(1.0, 0.3, 0.3))
  total, terms = frame_losses(cfg, y, x, nets)
  np.testing.assert_allclose(total, terms["l1"] + 0.3 * terms["dinov2_reg"] + 0.3 * terms["siglip2"], rtol=1e-6)
  # target features computed once by the caller (greedy rounds, GRPO groups) give the same losses
  np.testing.assert_allclose(frame_losses(cfg, y, x, nets, perceptual_targets(cfg, x, nets))[0], total, rtol=1e-6)
  assert (np.asarray(terms["dinov2_reg"]) > 0).all() and (np.asarray(terms["siglip2"]) > 0).all()
  zero, zterms = frame_losses(cfg, x, x, nets)
  np.testing.assert_allclose(zero, 0.0, atol=1e-6)
  with pytest.raises(JudgeTermsError, match="'dinov2_reg'"):   # a term without its net is an error, never skipped
    frame_losses(cfg, y, x, None)
  only_l1, t1 = frame_losses(select_terms(cfg, "l1"), y, x, None)   # L1 alone, chosen explicitly
  assert set(t1) == {"l1"}
  np.testing.assert_allclose(only_l1, terms["l1"])


def test_aa_bicubic_matrix():
  np.testing.assert_allclose(pc.aa_bicubic_matrix(7, 7), np.eye(7), atol=1e-7)
  m = pc.aa_bicubic_matrix(37, 16)
  np.testing.assert_allclose(m.sum(1), 1.0, atol=1e-6)
  assert (np.count_nonzero(m, axis=1) > 4).all()                  # antialias widens the support
