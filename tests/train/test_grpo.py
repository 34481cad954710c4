"""GRPO step vs the official one (tests/fixtures/grpo_tiny, PROVENANCE.md `grpo_tiny/`).

The stored rollouts and reconstructed frames are fed in (torch's sampler RNG cannot be reproduced);
everything downstream is ours: teacher-forced log-probs, VideoMAE rewards and targets, advantages,
losses, gradients summed over the two micro-steps, and the SGD update."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from autogaze_jax import AutoGaze
from autogaze_jax.train.grpo import discounted_advantages, grpo_losses, policy_loss_fn
from autogaze_jax.interop.gaze import params_to_official
from autogaze_jax.interop.videomae import load_checkpoint
from autogaze_jax.judge.losses import reconstruction_task
from tests.conftest import FIXTURES

G, GAMMA = 4, 0.995


@pytest.fixture(scope="module")
def setup():
  gaze = AutoGaze.from_pretrained(os.path.join(FIXTURES, "gaze_tiny"))
  _, mg, mp, _ = load_checkpoint(os.path.join(FIXTURES, "videomae_tiny"))
  pv = np.load(os.path.join(FIXTURES, "gaze_tiny", "input_clip.npz"))["pixel_values"]
  steps = [np.load(os.path.join(FIXTURES, "grpo_tiny", f"microstep{i}.npz")) for i in range(2)]
  videos = [pv, pv[..., ::-1]]  # micro-step 1 = the mirrored clip
  return gaze, mg, mp, steps, videos


def _task(mg, mp, video, ms):
  rows = jnp.asarray(np.tile(video, (G, 1, 1, 1, 1)))
  counts = tuple(int(n) for n in ms["num_gazing_each_frame"])
  return rows, counts, reconstruction_task(mg, mp, rows, jnp.asarray(ms["gazing_pos"]), jnp.asarray(ms["if_padded_gazing"]),
                                           jnp.asarray(ms["num_gazing_each_frame"]),
                                           jnp.asarray(ms["frame_idx_to_reconstruct"]), static_counts=counts)


def test_rewards_targets_advantages_losses(setup):
  gaze, mg, mp, steps, videos = setup
  for ms, video in zip(steps, videos):
    rows, counts, task = _task(mg, mp, video, ms)
    np.testing.assert_allclose(task["reward"], ms["reward"], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(task["traj_len_each_reward"], ms["traj_len_each_reward"])
    np.testing.assert_allclose(task["reconstruction_loss_each_gazing_token"], ms["task_losses"], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(task["reconstruction_loss_each_gazing_token_mask"], ms["task_losses_mask"])
    # advantages from the *stored* rewards (a 1e-6 reward error would shift them by 1e-3 relative)
    adv = discounted_advantages(jnp.asarray(ms["reward"]), jnp.asarray(ms["traj_len_each_reward"]),
                                jnp.asarray(ms["if_padded_gazing"]), G, GAMMA)
    np.testing.assert_allclose(adv, ms["advantages"], rtol=1e-5, atol=1e-9)
    out = gaze.teacher_forced(rows, ms["gazing_pos"], ms["if_padded_gazing"], counts)
    np.testing.assert_allclose(out["log_action_probs"], ms["log_action_probs"], atol=1e-4)
    np.testing.assert_allclose(out["task_loss_prediction"], ms["task_loss_prediction"], atol=1e-4)
    terms = grpo_losses(jnp.asarray(ms["log_action_probs"]), jnp.asarray(ms["task_loss_prediction"]),
                        jnp.asarray(ms["if_padded_gazing"]), adv, jnp.asarray(ms["task_losses"]),
                        jnp.asarray(ms["task_losses_mask"]))
    for k in ("grpo_loss", "task_loss_prediction_loss", "loss"):
      np.testing.assert_allclose(terms[k], ms[k], rtol=1e-5, atol=1e-5, err_msg=k)


def _grads(setup, policy_only: bool):
  gaze, mg, mp, steps, videos = setup
  total = None
  for ms, video in zip(steps, videos):
    rows, counts, _ = _task(mg, mp, video, ms)
    task = {"reward": jnp.asarray(ms["reward"]), "traj_len_each_reward": jnp.asarray(ms["traj_len_each_reward"]),
            "reconstruction_loss_each_gazing_token": jnp.asarray(ms["task_losses"]),
            "reconstruction_loss_each_gazing_token_mask": jnp.asarray(ms["task_losses_mask"])}

    def f(p):
      loss, (aux, *_) = policy_loss_fn(gaze.graphdef, p, rows, jnp.asarray(ms["gazing_pos"]),
                                       jnp.asarray(ms["if_padded_gazing"]), counts, task, G, GAMMA,
                                       optimize_task_loss_prediction=not policy_only)
      return (aux["grpo_loss"] if policy_only else loss) / 2  # official: loss.mean() / grad_acc_steps
    g = jax.grad(f)(gaze.params)
    total = g if total is None else jax.tree.map(jnp.add, total, g)
  return gaze, total


def _official_names(gaze, tree):
  return params_to_official(gaze.cfg, jax.tree.map(np.asarray, tree.to_pure_dict()))


def test_gradients_and_sgd_update(setup):
  gaze, grads = _grads(setup, policy_only=False)
  ours = _official_names(gaze, grads)
  ref = np.load(os.path.join(FIXTURES, "grpo_tiny", "grads.npz"))
  assert sorted(ref.files) == sorted(ours)
  for k in ref.files:
    assert np.max(np.abs(ours[k] - ref[k])) <= 1e-4 * np.max(np.abs(ref[k])), k
  # the official SGD(lr=5e-4) step
  tx = optax.sgd(5e-4)
  upd, _ = tx.update(grads, tx.init(gaze.params), gaze.params)
  new = _official_names(gaze, optax.apply_updates(gaze.params, upd))
  after = np.load(os.path.join(FIXTURES, "grpo_tiny", "params_after_official_step.npz"))
  for k in after.files:
    np.testing.assert_allclose(new[k], after[k], atol=1e-6, err_msg=k)


def test_policy_term_gradients(setup):
  gaze, grads = _grads(setup, policy_only=True)
  ours = _official_names(gaze, grads)
  ref = np.load(os.path.join(FIXTURES, "grpo_tiny", "grads_policy_term.npz"))
  for k in ref.files:
    assert np.max(np.abs(ours[k] - ref[k])) <= 1e-4 * np.max(np.abs(ref[k])) + 1e-12, k
  assert not np.any(ours["gazing_model.gaze_decoder.task_loss_prediction_head.weight"])



def test_capacity_buckets_run_the_same_step_at_a_smaller_capacity(setup):
  """A reference rollout that stops early puts the step in a small capacity bucket (`grpo.capacity_buckets`):
  same sampled rollouts, rewards, losses and update as at the full ratio cap, on fewer slots."""
  import ml_collections
  from autogaze_jax.gaze import sampling as S
  from autogaze_jax.train.grpo import capacity_buckets, make_train_step
  from autogaze_jax.train.state import TrainState
  gaze, mg, mp, _, videos = setup
  assert capacity_buckets((4, 16, 500), 26) == (4, 16, 26)
  sampling = S.SamplingConfig(S.RatioSampling(fixed=0.1), S.FrameSampling(during_training="self"),
                              S.RequirementSampling(during_training="uniform", uniform_min=1e6, uniform_max=1e6))
  tx = optax.sgd(1e-2)
  state = TrainState(jnp.zeros((), jnp.int32), gaze.params, tx.init(gaze.params))
  batch = {"video": jnp.asarray(videos[0][:, :4].copy())}
  out = {}
  for buckets in ((), (2, 4, 8, 16)):
    cfg = ml_collections.ConfigDict(dict(group_size=G, discount_factor=GAMMA, tokens_per_step=2, top_k=50,
                                         temperature_start=1.0, temperature_end=1.0, frames_to_reconstruct=2,
                                         optimize_task_loss_prediction=True, total_steps=10, capacity_buckets=buckets))
    step = jax.jit(make_train_step(gaze.graphdef, mg, tx, cfg=cfg, sampling=sampling))
    out[buckets] = jax.block_until_ready(step(state, batch, jax.random.key(1), {"videomae": mp, "perceptual": {}}))
  (full_state, full_m), (small_state, small_m) = out[()], out[(2, 4, 8, 16)]
  assert float(full_m["capacity"]) == 26 and float(small_m["capacity"]) == 2   # tau 1e6: one 2-token step per frame
  for k in ("loss", "reward_mean", "gaze_ratio", "grad_norm"):
    np.testing.assert_allclose(float(small_m[k]), float(full_m[k]), rtol=1e-4, atol=1e-6, err_msg=k)
  for a, b in zip(jax.tree.leaves(small_state.params), jax.tree.leaves(full_state.params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)


def test_judge_prefix_buckets_same_step(setup):
  """`grpo.judge_prefix_buckets`: a step whose reward frames are early runs the judge on fewer frames and
  gives the same rewards, losses and update as the judge on every frame."""
  import ml_collections
  from autogaze_jax.gaze import sampling as S
  from autogaze_jax.train.grpo import make_train_step, reward_frames, step_keys
  from autogaze_jax.train.state import TrainState
  gaze, mg, mp, _, videos = setup
  sampling = S.SamplingConfig(S.RatioSampling(fixed=0.1), S.FrameSampling(during_training="self"),
                              S.RequirementSampling(during_training="uniform", uniform_min=0.5, uniform_max=1.0))
  tx = optax.sgd(1e-2)
  state = TrainState(jnp.zeros((), jnp.int32), gaze.params, tx.init(gaze.params))
  batch = {"video": jnp.asarray(videos[0][:, :4].copy())}
  seed = next(s for s in range(100)
              if int(jnp.max(reward_frames(step_keys(jax.random.key(s))["frames"], 4, 2))) == 1)  # frames {0, 1}
  out = {}
  for n in (1, 4):
    cfg = ml_collections.ConfigDict(dict(group_size=G, discount_factor=GAMMA, tokens_per_step=2, top_k=50,
                                         temperature_start=1.0, temperature_end=1.0, frames_to_reconstruct=2,
                                         optimize_task_loss_prediction=True, total_steps=10, judge_prefix_buckets=n))
    step = jax.jit(make_train_step(gaze.graphdef, mg, tx, cfg=cfg, sampling=sampling))
    out[n] = jax.block_until_ready(step(state, batch, jax.random.key(seed), {"videomae": mp, "perceptual": {}}))
  (full_state, full_m), (skip_state, skip_m) = out[1], out[4]
  for k in ("loss", "reward_mean", "reconstruction_loss", "grad_norm"):
    np.testing.assert_allclose(float(skip_m[k]), float(full_m[k]), rtol=1e-5, atol=1e-6, err_msg=k)
  for a, b in zip(jax.tree.leaves(skip_state.params), jax.tree.leaves(full_state.params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
