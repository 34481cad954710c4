"""Architecture variants set from a training config (the paper's ablations on the tiny model): each
round-trips through the official checkpoint format with the same config and the same outputs, and
its config.json has the official layout (the keys of the official file) with the variant's values."""
import json
import os

import numpy as np
import pytest

from autogaze_jax import AutoGaze
from autogaze_jax.train.algorithm import gaze_config
from autogaze_jax.train.state import ConfigError
from configs import ntp as ntp_cfg
from tests.conftest import FIXTURES

TINY = os.path.join(FIXTURES, "gaze_tiny")


def _keys(d):
  """The nested key structure of a config dict."""
  return {k: _keys(v) if isinstance(v, dict) else None for k, v in d.items()}


@pytest.mark.parametrize("arg,overrides", [
    ("smoke,mtp=1", {}),
    ("smoke,mtp=5", {}),
    ("smoke,single_scale", {}),                              # scales 224, 196 tokens per frame (mtp 10)
    ("smoke", {"num_hidden_layers": 1, "hidden_size": 48, "num_attention_heads": 3, "head_dim": 16,
               "intermediate_size": 40, "vision_hidden_dim": 8, "vision_depth": 2, "max_num_frames": 8,
               "scales": "112+224", "num_vision_tokens_each_frame": 245}),  # 49 + 196 tokens
])
def test_variant_round_trip(tmp_path, arg, overrides):
  c = ntp_cfg.get_config(arg)
  for k, v in overrides.items():
    c.model[k] = v
  if "max_num_frames" in overrides:  # the recipe's 16-value Dirichlet alpha follows the clip length
    c.model.gazing_ratio_each_frame_config.dirichlet.alpha = "10," + ",".join(["3"] * 7)
  cfg = gaze_config(c)
  a = AutoGaze(cfg, seed=3)
  a.save_pretrained(tmp_path)
  b = AutoGaze.from_pretrained(str(tmp_path))
  assert b.cfg == cfg and b.cfg.sampling == cfg.sampling
  d = json.load(open(tmp_path / "config.json"))
  assert _keys(d) == _keys(json.load(open(os.path.join(TINY, "config.json"))))   # the official layout
  gm, dc = d["gaze_model_config"], d["gaze_model_config"]["gaze_decoder_config"]
  v, k = cfg.num_vision_tokens_each_frame, cfg.decoder.num_multi_token_pred
  assert d["scales"] == "+".join(map(str, cfg.scales)) and d["num_vision_tokens_each_frame"] == v == gm[
      "num_vision_tokens_each_frame"]
  assert (dc["num_multi_token_pred"], dc["vocab_size"], dc["eos_token_id"]) == (k, v + 1, v)
  assert dc["hidden_size"] == gm["connector_config"]["hidden_dim"] == gm["vision_model_config"]["out_dim"]
  assert d["gazing_ratio_each_frame_config"]["sample_strategy_during_inference"] == "dirichlet"
  assert d["gazing_ratio_config"]["fixed"]["gazing_ratio"] == 0.1
  # same outputs: teacher-forced probabilities and task-loss predictions on two frames of a clip
  pv = np.load(os.path.join(TINY, "input_clip.npz"))["pixel_values"][:, :2]
  gp = np.array([[0, 3, v - 1, v + 2, v + 5]])
  pad = np.array([[False, False, False, False, True]])
  ta, tb = (m.teacher_forced(pv, gp, pad, (3, 2)) for m in (a, b))
  assert ta["log_action_probs"].shape == (1, 5)
  for key in ("log_action_probs", "task_loss_prediction"):
    np.testing.assert_array_equal(np.asarray(ta[key]), np.asarray(tb[key]), err_msg=key)


@pytest.mark.parametrize("key,value,match", [
    ("num_multi_token_pred", -1, "config.model.num_multi_token_pred = -1"),
    ("scales", "224", r"config.model.scales: .*square grids"),     # 224 alone needs 196 tokens, not 265
    ("scales", "32+big", r"config.model.scales = '32\+big'"),
    ("head_dim", 15, r"config.model.head_dim: .*even"),
    ("head_dim", 8, r"config.model.head_dim: .*hidden_size / num_attention_heads = 32 / 2"),
    ("max_num_frames", 8, r"config.model.gazing_ratio_each_frame_config.dirichlet.alpha = .*8 comma-separated"),
    ("gazing_ratio_config.sample_strategy_during_training", "gauss",
     r"config.model.gazing_ratio_config.sample_strategy_during_training = 'gauss'"),
    ("task_loss_requirement_config.uniform.task_loss_requirement_max", 0.1,
     r"config.model.task_loss_requirement_config.uniform.task_loss_requirement_max = 0.1"),
])
def test_bad_model_value_is_a_config_error_naming_the_key(key, value, match):
  c = ntp_cfg.get_config("smoke")
  node = c.model
  *path, last = key.split(".")
  for p in path:
    node = node[p]
  node[last] = value
  with pytest.raises(ConfigError, match=match):
    gaze_config(c)


def test_init_checkpoint_keeps_its_architecture_and_takes_the_runs_sampling(tmp_path):
  c = ntp_cfg.get_config("smoke")
  c.model.init = TINY
  cfg = gaze_config(c)
  assert cfg == AutoGaze.from_pretrained(TINY).cfg and cfg.sampling.ratio.fixed == 0.1
  c.model.num_multi_token_pred = 5          # the checkpoint's weights are for 10
  with pytest.raises(ConfigError, match=r"config.model.num_multi_token_pred = 5 differs from the checkpoint"):
    gaze_config(c)
  c.model.num_multi_token_pred, c.model.init = 0, str(tmp_path / "nope")
  with pytest.raises(ConfigError, match="config.model.init"):
    gaze_config(c)
