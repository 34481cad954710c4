"""Multi-process training on localhost: jax.distributed with 2 processes (1 CPU device each), per-host
data shards, orbax save/restore across processes, and exact resume after a preemption."""
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from autogaze_jax import AutoGaze

pytestmark = pytest.mark.multiprocess
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ARGS = ["--config=configs/ntp.py:smoke,steps=4,batch=2", "--config.data.synthetic_num_clips=6",
        "--config.data.max_tokens_per_frame=4", "--config.train.ckpt_every=2", "--config.train.log_every=1"]


def _port():
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _launch(workdir, extra=()):
  port = _port()
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1", JAX_PLATFORMS="cpu")
  procs = [subprocess.Popen([sys.executable, "-m", "launch.train", f"--workdir={workdir}", *ARGS, *extra,
                             f"--coordinator=localhost:{port}", "--num_processes=2", f"--process_id={i}"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
           for i in range(2)]
  outs = [p.communicate(timeout=600)[0] for p in procs]
  for p, out in zip(procs, outs):
    assert p.returncode == 0, out[-3000:]
  return outs


def _params(workdir):
  return [np.asarray(x) for x in jax.tree.leaves(AutoGaze.from_pretrained(os.path.join(workdir, "export")).params)]


def test_two_processes_train_checkpoint_and_resume_exactly(tmp_path):
  from data_pipelines.synthetic import SyntheticConfig, ensure_synthetic
  ensure_synthetic(SyntheticConfig(num_clips=6))  # generated once here, not raced by the two hosts
  full, part = str(tmp_path / "full"), str(tmp_path / "part")
  outs = _launch(full)
  assert "mesh {'data': 2, 'fsdp': 1} over 2 devices (2 processes)" in outs[0]
  assert "4/4" in outs[0]
  # per-host data: each process read its own shard (3 of the 6 clips), 1 clip per step
  assert all("data stats after 4 batches: {'ok': 4" in o for o in outs)
  assert sorted(os.listdir(os.path.join(full, "checkpoints"))) == ["2", "4"]
  _launch(part, ["--stop_after=2"])                 # preempted after 2 steps (checkpoint 2 saved)
  assert not os.path.exists(os.path.join(part, "export"))
  outs = _launch(part)                              # restarted: restores state and both data iterators
  assert any("resumed from" in o and "at step 2" in o for o in outs)
  for a, b in zip(_params(full), _params(part)):
    np.testing.assert_array_equal(a, b)
