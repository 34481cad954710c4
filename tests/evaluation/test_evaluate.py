"""Held-out evaluation (autogaze_jax/evaluation/evaluate.py): the judge scores with every loss term it has
weights for, and the ratio at a threshold interpolates the measured curve."""
import os

import jax.numpy as jnp
import numpy as np
import pytest

from autogaze_jax import AutoGaze
from autogaze_jax.evaluation import evaluate as ev
from autogaze_jax.judge import perceptual as pc
from autogaze_jax.interop.videomae import load_checkpoint, read_config
from autogaze_jax.judge.load import Judge, load_judge
from autogaze_jax.judge.losses import reconstruction_task
from tests.conftest import FIXTURES

TINY_SIGLIP = pc.ExtractorConfig("siglip2", hidden_size=16, num_layers=4, num_heads=2, intermediate_size=32,
                                 patch_size=16, num_registers=0, pos_grid=14)


def test_interpolate_ratio():
  curve = {0.1: {"gaze_ratio": 0.1, "loss": 1.0}, 0.2: {"gaze_ratio": 0.2, "loss": 0.6},
           0.4: {"gaze_ratio": 0.4, "loss": 0.2}}
  assert ev.interpolate_ratio(curve, 0.8) == pytest.approx(0.15)
  assert ev.interpolate_ratio(curve, 0.4) == pytest.approx(0.3)
  assert ev.interpolate_ratio(curve, 1.5) == 0.1            # already reached at the smallest ratio
  assert ev.interpolate_ratio(curve, 0.1) == float("inf")   # never reached


@pytest.fixture(scope="module")
def clips():
  pv = np.load(os.path.join(FIXTURES, "gaze_tiny", "input_clip.npz"))["pixel_values"][:, :4]
  return np.concatenate([pv, pv[..., ::-1]])                 # 2 clips, 4 frames


def _direct(judge, pv, ratio, seed=0):
  """random_gaze_loss recomputed by hand: the same draws, one reconstruction_task call."""
  n, t = pv.shape[:2]
  v = judge.cfg.tokens_per_frame
  k = max(1, int(round(ratio * v)))
  rng = np.random.default_rng(seed)
  local = np.stack([np.stack([rng.permutation(v)[:k] for _ in range(t)]) for _ in range(n)])
  pos = (local + v * np.arange(t)[None, :, None]).reshape(n, t * k)
  res = reconstruction_task(judge.graphdef, judge.params, jnp.asarray(pv), jnp.asarray(pos),
                            jnp.zeros(pos.shape, bool), jnp.full((t,), k), jnp.arange(t), judge.perceptual,
                            static_counts=(k,) * t)
  return float(np.mean(res["loss_each_reconstruction_frame"])), res["loss_terms"]


def test_scores_with_the_judges_perceptual_terms(clips):
  judge = load_judge(os.path.join(FIXTURES, "videomae_tiny"))
  l1_only = ev.random_gaze_loss(judge, clips, 0.1)
  assert l1_only == pytest.approx(_direct(judge, clips, 0.1)[0], rel=1e-6)
  tiny = os.path.join(FIXTURES, "videomae_tiny")      # the same weights, scored as l1 + 0.3 siglip2
  cfg, graphdef, params, _ = load_checkpoint(tiny, read_config(tiny, loss_type=("l1", "siglip2"),
                                                                 loss_weights=(1.0, 0.3)))
  net = pc.from_tensors(TINY_SIGLIP, pc.random_tensors(TINY_SIGLIP, seed=1))
  both = Judge(cfg, graphdef, params, {"siglip2": net})
  with_siglip = ev.random_gaze_loss(both, clips, 0.1)
  total, terms = _direct(both, clips, 0.1)
  assert with_siglip == pytest.approx(total, rel=1e-6)
  assert with_siglip == pytest.approx(l1_only + 0.3 * float(np.mean(terms["siglip2"])), rel=1e-5)
  assert float(np.mean(terms["siglip2"])) > 0


def test_ratio_at_loss_on_the_measured_curve(clips):
  judge = load_judge(os.path.join(FIXTURES, "videomae_tiny"))
  model = AutoGaze.from_pretrained(os.path.join(FIXTURES, "gaze_tiny"))
  ratios = (0.05, 0.3)
  r = ev.ratio_at_loss(model, judge, clips, threshold=0.0, ratios=ratios, batch=2)
  assert sorted(r["curve"]) == list(ratios) and r["gaze_ratio_at_threshold"] == float("inf")
  losses = [r["curve"][x]["loss"] for x in ratios]
  mid = float(np.mean(losses))
  got = ev.ratio_at_loss(model, judge, clips, threshold=mid, ratios=ratios, batch=2)["gaze_ratio_at_threshold"]
  assert got == pytest.approx(ev.interpolate_ratio(r["curve"], mid))
  assert min(r["curve"][x]["gaze_ratio"] for x in ratios) <= got <= max(r["curve"][x]["gaze_ratio"] for x in ratios)
