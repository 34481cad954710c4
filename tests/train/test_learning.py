"""Learning, end to end on the embedded dataset with a judge that cares (autogaze_jax/assets/judge_small):
NTP on greedy labels beats the untrained gaze on held-out clips; GRPO raises the mean reward.

Both are smoke-sized (about a minute each on 2 CPU cores) and deterministic on CPU.
"""
import json
import os

import jax.numpy as jnp
import numpy as np
from flax import nnx

from autogaze_jax import AutoGaze

from autogaze_jax.evaluation import evaluate as ev
from autogaze_jax.train import registry
from autogaze_jax.labels.greedy import GreedyConfig
from autogaze_jax.judge.load import load_judge
from autogaze_jax.judge.losses import reconstruction_task
from configs import grpo as grpo_cfg, ntp as ntp_cfg
from data_pipelines import training as train_input
from launch.wiring import label_embedded, train

JUDGE = os.path.join(os.path.dirname(os.path.dirname(registry.__file__)), "assets", "judge_small")


def _metrics(workdir):
  return [json.loads(line) for line in open(os.path.join(workdir, "tb", "metrics.jsonl"))]


def _small_run(c):
  c.mesh.num_devices = 1
  c.train.picture_every = 0
  c.train.ckpt_every = 1000
  return c


def test_ntp_smoke_beats_untrained_gaze_ratio_on_held_out_clips(tmp_path):
  clips = 24                                       # 22 train / 2 held-out (val) clips
  labels = label_embedded(8, str(tmp_path / "labels"),
                          GreedyConfig(tau=0.0, budget=8, candidates="random", num_candidates=16, k_per_step=8),
                          videomae_checkpoint=JUDGE, synthetic_num_clips=clips)
  c = _small_run(ntp_cfg.get_config("smoke,steps=40,batch=4"))
  c.data.synthetic_num_clips = clips
  c.data.labels = labels
  c.data.max_tokens_per_frame = 8
  wd = str(tmp_path / "ntp")
  train(c, wd)
  m = _metrics(wd)
  assert m[-1]["ntp_loss"] < m[0]["ntp_loss"] - 0.2

  judge = load_judge(JUDGE)
  val = train_input.source(c, "val")
  trained = AutoGaze.from_pretrained(os.path.join(wd, "export"))
  pv = np.stack([trained.processor.normalize(val[i]["frames"]) for i in range(len(val))])
  threshold = ev.random_gaze_loss(judge, pv, 0.1)     # the judge's loss at 10% random patches
  ratios = (0.04, 0.08, 0.15)
  ours = ev.ratio_at_loss(trained, judge, pv, threshold, ratios)["gaze_ratio_at_threshold"]
  untrained = ev.ratio_at_loss(AutoGaze(trained.cfg, seed=0), judge, pv, threshold, ratios)["gaze_ratio_at_threshold"]
  # measured (ratios 0.03..0.15): 0.087 vs 0.110 (another untrained seed: 0.112)
  assert np.isfinite(ours) and ours < untrained - 0.01, (ours, untrained)


def _mean_reward(model, judge, pv, seeds=(0, 1, 2, 3)):
  """GRPO's reward (negative reconstruction loss, here of every frame) of sampled gaze (temperature 1,
  gazing ratio 0.05), one value per sampling seed."""
  mg, mp = judge
  out = []
  for seed in seeds:
    g = model.generate(pv, 0.05, None, sample=True, temperature=1.0, seed=seed, generate_only=True)
    counts = tuple(int(n) for n in g["num_gazing_each_frame"])
    r = reconstruction_task(mg, mp, jnp.asarray(pv), jnp.asarray(g["gazing_pos"]), jnp.asarray(g["if_padded_gazing"]),
                            jnp.asarray(counts), jnp.arange(pv.shape[1]), static_counts=counts)
    out.append(-float(np.mean(r["loss_each_reconstruction_frame"])))
  return np.array(out)


def test_grpo_smoke_raises_mean_reward(tmp_path):
  c = _small_run(grpo_cfg.get_config("smoke,steps=30,batch=2"))   # smoke = Adam 4e-3, temperature 1
  c.data.synthetic_num_clips = 4                   # 4 training clips, each seen 15 times
  c.videomae.checkpoint = JUDGE
  wd = str(tmp_path / "grpo")
  models = registry.ALGORITHMS["grpo"].init(c)        # the run's own initial weights
  graphdef, params, judge = models.graphdef, models.params, (models.frozen_graphdef, models.frozen["videomae"])
  src = train_input.source(c, "train")
  m0 = AutoGaze(nnx.merge(graphdef, params).cfg, params)
  pv = np.stack([m0.processor.normalize(src[i]["frames"]) for i in range(len(src))])
  before = _mean_reward(m0, judge, pv)
  train(c, wd)
  after = _mean_reward(AutoGaze.from_pretrained(os.path.join(wd, "export")), judge, pv)
  # per-term rewards are logged; this judge scores l1 alone (weight 1), so that term is the whole reward
  for row in _metrics(wd):
    np.testing.assert_allclose(row["reward_l1"], row["reward_mean"], rtol=1e-5)
  # measured: -1.7829 -> -1.7714, every seed higher
  assert after.mean() > before.mean() + 0.004, (before, after)
  assert np.sum(after > before) >= 3, (before, after)
