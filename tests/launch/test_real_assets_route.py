"""The README's real-assets route, step by step, on the fixtures under the official hub ids.

What a researcher with the released assets runs (README "The paper's recipe with the released assets"):
download into the hub cache -> convert the official judge (`videomae.pt` + vit-mae config + the DINOv2
and SigLIP2 dirs) -> NTP from `nvidia/AutoGaze` on a video folder with the official label file -> GRPO
from the NTP export against the converted judge, with its perceptual terms -> export. Here the cache is
filled offline with the tiny fixtures (official code's outputs, tests/fixtures/PROVENANCE.md), each step
calls what its command calls, and each hand-off is checked.
"""
import json
import os

import jax
import numpy as np
from PIL import Image

from autogaze_jax import AutoGaze
from autogaze_jax.judge.load import load_judge
from autogaze_jax.labels.format import write_labels
from configs import grpo as grpo_cfg, ntp as ntp_cfg
from data_pipelines import ops
from data_pipelines.synthetic import random_labels
from launch.wiring import convert_judge, export_run, train
from tests.conftest import FIXTURES
from tests.data_pipelines.data_video_factory import write_video
from tests.hub_cache import cache_repo, dir_files, hf_home  # noqa: F401 (fixture)

PERC = os.path.join(FIXTURES, "videomae_perceptual")


def _download(home):
  """What `hf download <id>` of the README leaves in the cache, with the tiny stand-ins."""
  cache_repo(home, "nvidia/AutoGaze", dir_files(os.path.join(FIXTURES, "gaze_tiny"),
                                                ["config.json", "model.safetensors", "preprocessor_config.json"]))
  cache_repo(home, "bfshi/VideoMAE_AutoGaze", {"videomae.pt": os.path.join(PERC, "videomae.pt")})
  cache_repo(home, "facebook/vit-mae-large", {"config.json": os.path.join(FIXTURES, "videomae_tiny", "config.json")})
  cache_repo(home, "facebook/dinov2-with-registers-base", dir_files(os.path.join(PERC, "dinov2_reg_tiny")))
  cache_repo(home, "google/siglip2-base-patch16-224", dir_files(os.path.join(PERC, "siglip2_tiny")))


def _videos_and_labels(root):
  """A video folder (train/ + val/, 16 frames each) and its gazing_labels.json in the official format."""
  rng = np.random.default_rng(0)
  paths = []
  for split, n in (("train", 4), ("val", 1)):
    os.makedirs(os.path.join(root, "videos", split))
    for i in range(n):
      frames = rng.integers(0, 256, (16, 48, 64, 3), np.uint8)
      paths.append(write_video(os.path.join(root, "videos", split, f"v{i}.mp4"), frames))
  labels = os.path.join(root, "gazing_labels.json")
  write_labels(random_labels([ops.relative_video_path(p) for p in paths], max_tokens_per_frame=4), labels)
  return os.path.join(root, "videos"), labels


def _leaves(tree):
  return [np.asarray(a) for a in jax.tree.leaves(tree)]


def _metrics(workdir):
  return [json.loads(line) for line in open(os.path.join(workdir, "tb", "metrics.jsonl"))]


def _small(c):
  c.mesh.num_devices, c.train.picture_every, c.train.log_every = 1, 0, 1
  return c


def test_real_assets_route_on_the_fixtures(tmp_path, hf_home):
  _download(hf_home)
  # convert: every input by its hub id
  judge_dir = str(tmp_path / "judge")
  counts = convert_judge(videomae_pt="bfshi/VideoMAE_AutoGaze", config="facebook/vit-mae-large", out=judge_dir,
                   dinov2="facebook/dinov2-with-registers-base", siglip2="google/siglip2-base-patch16-224")
  assert counts["dinov2_reg"] == 98 and counts["siglip2"] == 96
  judge = load_judge(judge_dir)
  assert judge.loss_terms == ["l1", "dinov2_reg", "siglip2"] and judge.cfg.loss_weights == (1.0, 0.3, 0.3)

  # NTP from the released model on a video folder with the official label file
  videos, labels = _videos_and_labels(str(tmp_path))
  c = _small(ntp_cfg.get_config("smoke,steps=2,batch=2"))
  c.model.init = "nvidia/AutoGaze"
  c.data.source, c.data.path, c.data.labels, c.data.max_tokens_per_frame = "folder", videos, labels, 4
  train(c, str(tmp_path / "ntp"))
  assert [r["step"] for r in _metrics(str(tmp_path / "ntp"))] == [1, 2]
  ntp_export = str(tmp_path / "ntp" / "export")
  released = AutoGaze.from_pretrained("nvidia/AutoGaze")
  assert AutoGaze.from_pretrained(ntp_export).cfg == released.cfg

  # GRPO from the NTP export against the converted judge: rewards carry every perceptual term
  c = _small(grpo_cfg.get_config("smoke,steps=2,batch=2"))
  c.model.init, c.videomae.checkpoint = ntp_export, judge_dir
  c.data.source, c.data.path, c.grpo.group_size = "folder", videos, 2
  c.train.picture_every = 2
  grpo_wd = str(tmp_path / "grpo")
  train(c, grpo_wd)
  rows = _metrics(grpo_wd)
  assert [r["step"] for r in rows] == [1, 2]
  for r in rows:     # reward = -(l1 + 0.3 dinov2_reg + 0.3 siglip2) of the judge, each term really scored
    terms = {k: r[f"reward_{k}"] for k in ("l1", "dinov2_reg", "siglip2")}
    assert all(v < 0 for v in terms.values()), terms
    np.testing.assert_allclose(r["reward_mean"], terms["l1"] + 0.3 * terms["dinov2_reg"] + 0.3 * terms["siglip2"],
                               rtol=1e-5)

  # its picture: original / gazed / the judge's reconstruction / canvas, then one row per scale
  img = np.asarray(Image.open(os.path.join(grpo_wd, "pictures", "step_000002.png")))
  assert img.shape[0] > (4 + len(released.cfg.scales)) * 224 and img.std() > 0

  # export (the run exported at its end; launch.export writes the same from the last checkpoint)
  out = export_run(grpo_wd, str(tmp_path / "final"))
  final, end_of_run = AutoGaze.from_pretrained(out), AutoGaze.from_pretrained(os.path.join(grpo_wd, "export"))
  assert final.cfg == released.cfg
  for x, y in zip(_leaves(final.pure_params()), _leaves(end_of_run.pure_params())):
    np.testing.assert_array_equal(x, y)
  moved = [not np.array_equal(x, y) for x, y in zip(_leaves(final.pure_params()), _leaves(released.pure_params()))]
  assert any(moved)

