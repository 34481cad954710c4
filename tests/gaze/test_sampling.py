"""The official sampling configs (gazing ratio, per-frame ratio, task-loss requirement): draw moments,
determinism under a seed, config.json round trips, and a no-argument generate that follows them."""
import copy
import json
import math
import os

import jax
import numpy as np
import pytest

from autogaze_jax import AutoGaze, GazeConfig
from autogaze_jax.gaze import sampling as S
from autogaze_jax.gaze.generate import config_draws
from tests.conftest import FIXTURES

TINY = os.path.join(FIXTURES, "gaze_tiny")
N = 20_000


def _draws(fn, n=N, seed=0):
  return np.asarray(jax.jit(jax.vmap(fn))(jax.random.split(jax.random.key(seed), n)))


def test_ratio_moments_uniform_and_truncated_exponential():
  u = _draws(lambda k: S.draw_ratio(k, S.RatioSampling(during_inference="uniform", uniform_min=0.2,
                                                       uniform_max=0.6), False))
  assert u.min() >= 0.2 and u.max() <= 0.6
  np.testing.assert_allclose([u.mean(), u.var()], [0.4, 0.4 ** 2 / 12], rtol=0.03)
  for lo, hi, lam in ((0.0, 1.0, 10.0), (0.05, 0.5, 4.0)):
    e = _draws(lambda k: S.draw_ratio(k, S.RatioSampling(during_training="exponential", exponential_min=lo,
                                                         exponential_max=hi, exponential_lambda=lam), True))
    w = hi - lo  # mean of Exp(lam) conditioned on [lo, hi]
    mean = lo + 1 / lam - w * math.exp(-lam * w) / (1 - math.exp(-lam * w))
    assert e.min() >= lo and e.max() <= hi
    np.testing.assert_allclose(e.mean(), mean, rtol=0.03)
  # fixed ignores the key
  assert float(S.draw_ratio(jax.random.key(1), S.RatioSampling(fixed=0.3), False)) == np.float32(0.3)


def test_dirichlet_per_frame_means_follow_alpha_and_sum_to_ratio_times_frames():
  fs = S.FrameSampling(during_inference="dirichlet", dirichlet_alpha="10,3,3,3")
  d = _draws(lambda k: S.draw_frame_ratios(k, fs, 0.2, 4, False), 4000)
  assert d.shape == (4000, 4)
  np.testing.assert_allclose(d.sum(1), 0.8, rtol=1e-5)                       # never clamped: each < 1
  np.testing.assert_allclose(d.mean(0), 0.8 * np.array([10, 3, 3, 3]) / 19, rtol=0.03)
  # a float alpha is the same for every frame; a large total is clamped to [0, 1] per frame
  big = _draws(lambda k: S.draw_frame_ratios(k, S.FrameSampling(during_inference="dirichlet"), 0.9, 4, False), 1000)
  assert big.max() <= 1.0 and big.min() >= 0.0 and np.all(big.sum(1) <= 3.6 + 1e-5)
  np.testing.assert_allclose(big.mean(0), big.mean(), rtol=0.1)
  with pytest.raises(S.SamplingError, match=r"dirichlet\.alpha = '10,3,3,3'.*5 comma-separated"):
    S.draw_frame_ratios(jax.random.key(0), fs, 0.2, 5, False)
  with pytest.raises(S.SelfStrategyNeedsModel, match="'self'"):
    S.draw_frame_ratios(jax.random.key(0), S.FrameSampling(during_training="self"), 0.2, 4, True)


def test_requirement_draws_and_flags():
  qs = S.RequirementSampling(has_during_training=True, during_training="uniform", uniform_min=0.5, uniform_max=1.0)
  q = _draws(lambda k: S.draw_requirement(k, qs, True))
  np.testing.assert_allclose([q.mean(), q.var()], [0.75, 0.25 / 12], rtol=0.03)
  assert S.draw_requirement(jax.random.key(0), qs, False) is None                # not during inference
  assert float(S.draw_requirement(jax.random.key(0), qs, False, force=True)) == np.float32(0.7)  # forced: fixed


def test_a_fixed_seed_gives_the_same_draws_every_run():
  cfg = GazeConfig(sampling=S.SamplingConfig(
      S.RatioSampling(during_inference="exponential"), S.FrameSampling(during_inference="dirichlet"),
      S.RequirementSampling(has_during_inference=True, during_inference="uniform")))
  a, b, c = config_draws(cfg, 16, 7), config_draws(cfg, 16, 7), config_draws(cfg, 16, 8)
  assert a[0] == b[0] and a[2] == b[2] and np.array_equal(a[1], b[1])
  assert a[0] != c[0] and a[2] != c[2] and not np.array_equal(a[1], c[1])


def test_config_json_round_trip_of_the_sampling_configs():
  raw = json.load(open(os.path.join(TINY, "config.json")))
  cfg = GazeConfig.from_official_dict(raw)
  assert cfg.sampling == S.SamplingConfig()        # the fixture holds the official constructor defaults
  assert cfg.to_official_dict() == raw             # verbatim re-export (0 stays 0, None entries stay)
  # the NTP and GRPO recipes' settings (official TRAIN.md command lines)
  custom = S.SamplingConfig(
      S.RatioSampling(during_training="exponential", during_inference="uniform", fixed=0.1, uniform_min=0.05,
                      uniform_max=0.4, exponential_lambda=4.0),
      S.FrameSampling(during_training="self", during_inference="dirichlet",
                      dirichlet_alpha="10," + ",".join(["3"] * 15)),
      S.RequirementSampling(has_during_training=False, has_during_inference=True, during_training="uniform",
                            uniform_min=0.5, uniform_max=1.0))
  d = json.loads(json.dumps(cfg.replace(sampling=custom).to_official_dict()))
  assert GazeConfig.from_official_dict(d).sampling == custom
  for key in ("gazing_ratio_config", "gazing_ratio_each_frame_config", "task_loss_requirement_config"):
    assert set(d[key]) == set(raw[key])            # the official layout, no key of ours
  assert d["gazing_ratio_each_frame_config"]["dirichlet"]["alpha"] == "10,3,3,3,3,3,3,3,3,3,3,3,3,3,3,3"
  assert d["gazing_ratio_config"]["exponential"]["lambda"] == 4.0
  assert d["has_task_loss_requirement_during_inference"] is True
  # a bad value is a named error
  bad = copy.deepcopy(raw)
  bad["gazing_ratio_config"]["sample_strategy_during_inference"] = "gaussian"
  with pytest.raises(S.SamplingError, match=r"gazing_ratio_config\.sample_strategy_during_inference = 'gaussian'"):
    GazeConfig.from_official_dict(bad)
  bad = copy.deepcopy(raw)
  bad["task_loss_requirement_config"]["uniform"]["task_loss_requirement_max"] = 0.1
  with pytest.raises(S.SamplingError, match=r"task_loss_requirement_max = 0.1"):
    GazeConfig.from_official_dict(bad)


@pytest.fixture(scope="module")
def tiny_pv():
  m = AutoGaze.from_pretrained(TINY)
  pv = np.load(os.path.join(TINY, "input_clip.npz"))["pixel_values"][:, :4]
  return m, pv


def _with(m, **kw):
  d = {"ratio": S.RatioSampling(), "frame": S.FrameSampling(), "requirement": S.RequirementSampling()}
  d.update(kw)
  return AutoGaze(m.cfg.replace(sampling=S.SamplingConfig(**d)), m.params)


def test_no_argument_generate_follows_the_config(tiny_pv):
  m, pv = tiny_pv
  kw = dict(generate_only=True, capacity=80)  # one compiled program per threshold mode
  fixed = _with(m, ratio=S.RatioSampling(fixed=0.3))
  out = fixed.generate(pv, **kw)
  ref = m.generate(pv, 0.3, **kw)
  assert out["num_gazing_each_frame"].tolist() == [int(np.float32(0.3) * np.float32(265))] * 4 == [79] * 4
  np.testing.assert_array_equal(out["gazing_pos"], ref["gazing_pos"])
  assert out["has_task_loss_requirement"] is False
  # the inference threshold of the config (fixed -2.5, the fixture's value that stops some frames early)
  thr = _with(m, ratio=S.RatioSampling(fixed=0.3), requirement=S.RequirementSampling(has_during_inference=True,
                                                                                      fixed=-2.5))
  out = thr.generate(pv, **kw)
  ref = m.generate(pv, 0.3, -2.5, **kw)
  assert out["has_task_loss_requirement"] and np.all(out["task_loss_requirement"] == np.float32(-2.5))
  np.testing.assert_array_equal(out["gazing_pos"], ref["gazing_pos"])
  np.testing.assert_array_equal(out["if_padded_gazing"], ref["if_padded_gazing"])
  # dirichlet: budgets max(1, int(r_t * 265)) of the seed's draw
  dm = _with(m, ratio=S.RatioSampling(fixed=0.05), frame=S.FrameSampling(during_inference="dirichlet",
                                                                        dirichlet_alpha="10,3,3,3"))
  _, per_frame, _ = config_draws(dm.cfg, 4, 3)
  want = np.maximum(1, (per_frame.astype(np.float32) * np.float32(265)).astype(np.int64))
  assert dm.generate(pv, seed=3, **kw)["num_gazing_each_frame"].tolist() == want.tolist()
  # self: a greedy pre-pass at the forced requirement sets each frame's budget to its real tokens
  sm = _with(m, ratio=S.RatioSampling(fixed=0.3), frame=S.FrameSampling(during_inference="self"),
             requirement=S.RequirementSampling(fixed=-2.5))
  pre = m.generate(pv, 0.3, -2.5, **kw)["num_real_gazing_each_frame"][0]
  out = sm.generate(pv, **kw)
  assert out["num_gazing_each_frame"].tolist() == np.maximum(1, pre).tolist()
  assert out["has_task_loss_requirement"] is False and not out["if_padded_gazing"].any()


def test_grpo_rollout_capacity_is_the_largest_drawable_budget():
  from autogaze_jax.train.grpo import rollout_capacity
  recipe = S.SamplingConfig(S.RatioSampling(fixed=0.75), S.FrameSampling(during_training="self"))
  assert rollout_capacity(recipe, 265) == 198                        # the official int(0.75 * 265)
  assert rollout_capacity(S.SamplingConfig(S.RatioSampling(during_training="exponential", exponential_max=0.4)),
                          265) == 106
  assert rollout_capacity(S.SamplingConfig(frame=S.FrameSampling(during_training="dirichlet")), 196) == 196
  # null flags are the official falsy "no requirement"
  assert not S.SamplingConfig.from_official_dict({"has_task_loss_requirement_during_inference": None}
                                                 ).requirement.has_during_inference
