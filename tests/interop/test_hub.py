"""Hub ids ("nvidia/AutoGaze", "org/name@revision") through huggingface_hub's cache, offline.

Each test lays out a hub cache by hand from our fixtures under tmp_path (HF_HOME/hub/models--org--name/
{refs/<ref>, snapshots/<sha>/...}, the layout huggingface_hub reads) and sets HF_HUB_OFFLINE=1: no test
touches a network.
"""
import json
import os

import jax
import numpy as np
import pytest

from autogaze_jax import AutoGaze
from autogaze_jax.interop.common import CheckpointError, resolve_checkpoint_dir
from autogaze_jax.interop.videomae import extractor_config
from autogaze_jax.judge import perceptual as perc
from autogaze_jax.judge.load import load_judge
from autogaze_jax.vit.pipeline import GazedViT
from launch.wiring import convert_judge as convert
from tests.conftest import FIXTURES
from tests.hub_cache import SHA_MAIN, SHA_V0, cache_repo, dir_files as _dir_files, hf_home  # noqa: F401 (fixture)

GAZE = os.path.join(FIXTURES, "gaze_tiny")
PERC = os.path.join(FIXTURES, "videomae_perceptual")


def _same_params(a, b):
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(la) == len(lb) > 0
  for x, y in zip(la, lb):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_gaze_model_by_hub_id_and_revision(hf_home, tmp_path):
  files = _dir_files(GAZE, ["config.json", "model.safetensors", "preprocessor_config.json"])
  cache_repo(hf_home, "nvidia/AutoGaze", files)
  pre = json.load(open(files["preprocessor_config.json"]))
  pre["size"] = {"shortest_edge": 256}                    # tells the v0 snapshot apart
  (tmp_path / "pre_v0.json").write_text(json.dumps(pre))
  cache_repo(hf_home, "nvidia/AutoGaze", dict(files, **{"preprocessor_config.json": str(tmp_path / "pre_v0.json")}),
             sha=SHA_V0, refs=("v0",))
  local = AutoGaze.from_pretrained(GAZE)
  hub = AutoGaze.from_pretrained("nvidia/AutoGaze")
  assert hub.cfg == local.cfg and hub.processor.shortest_edge == 224
  _same_params(hub.params, local.params)
  assert AutoGaze.from_pretrained("nvidia/AutoGaze@v0").processor.shortest_edge == 256
  assert AutoGaze.from_pretrained("nvidia/AutoGaze", revision=SHA_V0).processor.shortest_edge == 256
  assert AutoGaze.from_pretrained(f"nvidia/AutoGaze@{SHA_MAIN}").processor.shortest_edge == 224


def test_hub_errors_name_the_id_and_the_fix(hf_home, tmp_path, monkeypatch):
  with pytest.raises(CheckpointError, match=r"gaze checkpoint 'org/missing'.*HF_HUB_OFFLINE is set.*--local-dir"):
    AutoGaze.from_pretrained("org/missing")
  cache_repo(hf_home, "org/model", _dir_files(GAZE, ["config.json"]))
  with pytest.raises(CheckpointError, match=r"'org/model@nope' is not a local path and not in the hub cache"):
    resolve_checkpoint_dir("org/model@nope")
  with pytest.raises(CheckpointError, match=r"revision given twice"):
    resolve_checkpoint_dir("org/model@main", revision="v0")
  with pytest.raises(CheckpointError, match=r"'/no/such/dir' does not exist"):
    AutoGaze.from_pretrained("/no/such/dir")
  with pytest.raises(CheckpointError, match=r"applies only to hub ids"):
    AutoGaze.from_pretrained(GAZE, revision="v0")
  # a local dir of the same name wins over the cached repo
  (tmp_path / "org" / "model").mkdir(parents=True)
  monkeypatch.chdir(tmp_path)
  assert resolve_checkpoint_dir("org/model") == "org/model"
  assert resolve_checkpoint_dir("org/model@main").endswith(os.path.join("snapshots", SHA_MAIN))


def test_convert_judge_and_perceptual_by_hub_ids(hf_home, tmp_path):
  """launch.convert with every input a hub id -> a judge dir; that dir loaded by hub id with its nets;
  a perceptual net and the gazed ViT loaded by hub id equal the local ones."""
  cache_repo(hf_home, "bfshi/VideoMAE_AutoGaze", {"videomae.pt": os.path.join(PERC, "videomae.pt")})
  cache_repo(hf_home, "facebook/vit-mae-tiny", {"config.json": os.path.join(FIXTURES, "videomae_tiny", "config.json")})
  cache_repo(hf_home, "facebook/dinov2-tiny", _dir_files(os.path.join(PERC, "dinov2_reg_tiny")))
  cache_repo(hf_home, "google/siglip2-tiny", _dir_files(os.path.join(PERC, "siglip2_tiny")))
  out = str(tmp_path / "judge")
  counts = convert("bfshi/VideoMAE_AutoGaze", "facebook/vit-mae-tiny", out, "facebook/dinov2-tiny",
                   "google/siglip2-tiny")
  assert counts["vit"] == 40 and counts["siglip2"] == 96
  cache_repo(hf_home, "me/judge", _dir_files(out))
  hub, local = load_judge("me/judge"), load_judge(out)
  assert hub.loss_terms == local.loss_terms == ["l1", "dinov2_reg", "siglip2"]
  _same_params(hub.params, local.params)
  d = os.path.join(PERC, "dinov2_reg_tiny")
  ecfg = extractor_config("dinov2_reg", json.load(open(os.path.join(d, "config.json"))))
  _same_params(perc.load(ecfg, "facebook/dinov2-tiny").params, perc.load(ecfg, d).params)
  s = os.path.join(PERC, "siglip2_tiny")   # the SigLIP hand-off's ViT by hub id, as QUICK_START loads it
  _same_params(GazedViT.from_pretrained("google/siglip2-tiny").params, GazedViT.from_pretrained(s).params)
  with pytest.raises(SystemExit, match=r"--dinov2 'facebook/nope' is not a local path and not in the hub cache"):
    convert("bfshi/VideoMAE_AutoGaze", "facebook/vit-mae-tiny", str(tmp_path / "j2"), "facebook/nope")
