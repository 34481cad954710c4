"""launch.train / trainer: NTP on the embedded dataset, exact resume, sharded == single, config errors, export."""
import json
import os

import jax
import numpy as np
import pytest

from autogaze_jax import AutoGaze

from autogaze_jax.train.state import ConfigError
from launch.wiring import train
from configs import ntp as ntp_cfg


def _cfg(steps=4, **over):
  c = ntp_cfg.get_config(f"smoke,steps={steps},batch=2")
  c.data.synthetic_num_clips = 6
  c.data.max_tokens_per_frame = 4
  c.train.log_every = 1
  c.train.ckpt_every = 100
  c.mesh.num_devices = 1
  for k, v in over.items():
    node = c
    *path, last = k.split(".")
    for p in path:
      node = node[p]
    node[last] = v
  return c


def _params(workdir):
  return jax.tree.map(np.asarray, AutoGaze.from_pretrained(os.path.join(workdir, "export")).pure_params())


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
  wd = str(tmp_path_factory.mktemp("full"))
  res = train(_cfg(**{"train.picture_every": 2}), wd)
  return wd, res


def test_ntp_smoke_runs_logs_and_exports(uninterrupted):
  wd, res = uninterrupted
  assert res["step"] == 4 and np.isfinite(res["loss"])
  lines = [json.loads(l) for l in open(os.path.join(wd, "tb", "metrics.jsonl"))]
  assert [l["step"] for l in lines] == [1, 2, 3, 4]
  assert lines[-1]["loss"] < lines[0]["loss"]  # it learns (toy labels: mostly the task-loss head)
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(os.path.join(wd, "tb")))
  m = AutoGaze.from_pretrained(os.path.join(wd, "export"))  # official format round trip
  assert m.num_params == 140672
  # periodic validation pictures: PNG per picture step, same image in TensorBoard
  assert sorted(os.listdir(os.path.join(wd, "pictures"))) == ["step_000002.png", "step_000004.png"]
  from PIL import Image
  img = np.asarray(Image.open(os.path.join(wd, "pictures", "step_000004.png")))
  assert img.ndim == 3 and img.shape[0] > 5 * 224 and img.std() > 0   # original + 4 scale rows


def test_kill_and_resume_is_bitwise(uninterrupted, tmp_path):
  wd_full, _ = uninterrupted
  wd = str(tmp_path / "resumed")
  train(_cfg(), wd, stop_after=2)           # "preempted" after 2 steps (checkpoint written)
  assert not os.path.exists(os.path.join(wd, "export"))
  res = train(_cfg(), wd)                     # a new run in the same workdir resumes at step 2
  assert res["step"] == 4
  a, b = _params(wd_full), _params(wd)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)
  full = [json.loads(l) for l in open(os.path.join(wd_full, "tb", "metrics.jsonl"))]
  resumed = [json.loads(l) for l in open(os.path.join(wd, "tb", "metrics.jsonl"))]
  assert [r["loss"] for r in resumed] == [r["loss"] for r in full]


def test_sharded_step_equals_single_device(uninterrupted, tmp_path):
  wd_full, res1 = uninterrupted
  res8 = train(_cfg(steps=4, **{"data.global_batch_size": 8, "mesh.num_devices": 0}), str(tmp_path / "s8"))
  res1b = train(_cfg(steps=4, **{"data.global_batch_size": 8}), str(tmp_path / "s1"))
  assert res8["step"] == res1b["step"] == 4
  np.testing.assert_allclose(res8["loss"], res1b["loss"], rtol=1e-5, atol=1e-6)
  a, b = _params(str(tmp_path / "s8")), _params(str(tmp_path / "s1"))
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("key,value,match", [
    ("data.global_batch_size", 3, "not divisible by the data axis size 8"),
    ("mesh.data", 3, "do not divide the 8 devices"),
    ("algorithm", "ppo", "choose from"),
    ("model.size", "huge", "choose default or tiny"),
    ("data.source", "folder", "needs config.data.path"),
    ("data.max_tokens_per_frame", 0, "must be in 1..265"),
    ("train.num_steps", 0, "must be positive"),
    ("train.picture_ratio", 1.5, "picture_ratio"),
    ("optimizer.lr", -1e-3, r"config.optimizer.lr = -0.001: expected a finite number > 0"),
    ("optimizer.min_lr", 1.0, r"config.optimizer.min_lr = 1.0: expected in \[0, lr="),
    ("optimizer.b1", 1.0, r"config.optimizer.b1 = 1.0: expected in \[0, 1\)"),
    ("optimizer.eps", 0.0, "config.optimizer.eps"),
    ("optimizer.warmup_frac", 1.5, "config.optimizer.warmup_frac"),
    ("optimizer.grad_clip", -1.0, "config.optimizer.grad_clip"),
    ("optimizer.grad_accum_steps", 0, "config.optimizer.grad_accum_steps"),
    ("optimizer.name", "lion", "config.optimizer.name"),
])
def test_config_validation(tmp_path, key, value, match):
  c = _cfg(**{"mesh.num_devices": 0, "data.global_batch_size": 8})
  c.unlock()
  node = c
  *path, last = key.split(".")
  for p in path:
    node = node[p]
  node[last] = value
  with pytest.raises(ConfigError, match=match):
    train(c, str(tmp_path))


def test_unknown_config_argument():
  with pytest.raises(ValueError, match="unknown config argument 'smok'"):
    ntp_cfg.get_config("smok")


def test_export_cli_from_checkpoint_equals_final_export(uninterrupted, tmp_path):
  from launch.export import export
  wd, _ = uninterrupted
  out = export(wd, str(tmp_path / "exp"))
  a, b = _params(wd), jax.tree.map(np.asarray, AutoGaze.from_pretrained(out).pure_params())
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)
  with pytest.raises(SystemExit, match="no config.json"):
    export(str(tmp_path), str(tmp_path / "x"))


def test_ntp_losses_match_official_fixture():
  from autogaze_jax.train.ntp import ntp_losses
  from tests.conftest import FIXTURES
  tiny = os.path.join(FIXTURES, "gaze_tiny")
  ref = np.load(os.path.join(tiny, "teacher_forced.npz"))
  pv = np.load(os.path.join(tiny, "input_clip.npz"))["pixel_values"]
  m = AutoGaze.from_pretrained(tiny)
  out = m.teacher_forced(np.concatenate([pv, pv[..., ::-1]]), ref["label_gazing_pos"], ref["label_if_padded_gazing"],
                         ref["label_num_gazing_each_frame"])
  got = ntp_losses(out["log_action_probs"], out["task_loss_prediction"], ref["label_if_padded_gazing"],
                   ref["label_task_losses"])
  for k in ("ntp_loss", "task_loss_prediction_loss", "loss"):
    np.testing.assert_allclose(got[k], ref[k], rtol=1e-5, atol=1e-5, err_msg=k)
  # the official normaliser is the batch-average real-token count, not the per-sample count
  per_sample = -np.sum(np.asarray(out["log_action_probs"]) * ~ref["label_if_padded_gazing"], 1) / np.sum(
      ~ref["label_if_padded_gazing"], 1)
  assert np.max(np.abs(per_sample - ref["ntp_loss"])) > 0.1


def test_second_run_in_a_busy_workdir_is_refused(tmp_path):
  import fcntl
  from autogaze_jax.train.loop import WorkdirInUse
  wd = str(tmp_path / "busy")
  os.makedirs(wd)
  with open(os.path.join(wd, ".train.lock"), "a+") as held:        # a run in progress holds the lock
    fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
    held.write("pid 12345")
    held.flush()
    with pytest.raises(WorkdirInUse, match="is in use by a running training \\(pid 12345\\)"):
      train(_cfg(), wd)


def test_resume_with_a_changed_config_is_refused_unless_allowed(uninterrupted, tmp_path):
  import shutil
  wd_full, _ = uninterrupted
  wd = str(tmp_path / "copy")
  shutil.copytree(wd_full, wd)                                      # a finished run with checkpoints
  with pytest.raises(ConfigError, match=r"data.seed: 0 -> 3, optimizer.lr: 0.003 -> 0.5"):
    train(_cfg(**{"optimizer.lr": 0.5, "data.seed": 3, "train.log_every": 2}), wd)
  res = train(_cfg(**{"train.log_every": 2, "train.picture_every": 0}), wd)   # safe keys only: resumes
  assert res["step"] == 4
  res = train(_cfg(**{"optimizer.lr": 0.5}), wd, allow_config_change=True)
  rec = [json.loads(line) for line in open(os.path.join(wd, "config_changes.jsonl"))]
  assert rec[-1]["changed"] == {"optimizer.lr": [0.003, 0.5]}
  assert json.load(open(os.path.join(wd, "config.json")))["optimizer"]["lr"] == 0.5
