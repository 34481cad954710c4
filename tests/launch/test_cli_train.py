"""launch.train as a scheduler sees it: SIGTERM saves a checkpoint and exits 143 (not 0, not "done"), and a
rerun resumes from that checkpoint with metrics.jsonl holding each step once."""
import json
import os
import signal
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ARGS = ["--config=configs/ntp.py:smoke,steps=400,batch=2", "--config.data.synthetic_num_clips=6",
        "--config.data.max_tokens_per_frame=4", "--config.train.ckpt_every=1000", "--config.train.log_every=1",
        "--config.mesh.num_devices=1"]


def _rows(workdir):
  with open(os.path.join(workdir, "tb", "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]          # every line is valid JSON


def test_sigterm_exits_143_with_checkpoint_and_resume_logs_each_step_once(tmp_path):
  wd = str(tmp_path / "run")
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1", JAX_PLATFORMS="cpu")
  p = subprocess.Popen([sys.executable, "-m", "launch.train", f"--workdir={wd}", *ARGS], cwd=ROOT, env=env,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  metrics = os.path.join(wd, "tb", "metrics.jsonl")
  deadline = time.time() + 300
  while time.time() < deadline and p.poll() is None:    # rows are flushed as they are logged
    if os.path.exists(metrics) and len(_rows(wd)) >= 2:
      break
    time.sleep(0.5)
  assert p.poll() is None, p.communicate()[0][-3000:]
  p.send_signal(signal.SIGTERM)
  out = p.communicate(timeout=300)[0]
  assert p.returncode == 143, out[-3000:]
  assert "preempted at step" in out and "done:" not in out
  stopped = max(r["step"] for r in _rows(wd))
  assert os.path.isdir(os.path.join(wd, "checkpoints", str(stopped)))
  # a rerun with fewer total steps resumes at the checkpoint and finishes; no step is logged twice
  done = subprocess.run([sys.executable, "-m", "launch.train", f"--workdir={wd}", *ARGS,
                         f"--config.train.num_steps={stopped + 2}"], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=300)
  assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
  steps = [r["step"] for r in _rows(wd)]
  assert steps == list(range(1, stopped + 3)), steps
