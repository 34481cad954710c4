"""The paper's multi-token ablation in miniature: NTP smoke runs with 1 / 5 / 10 tokens per decoder step.

  python -m benchmarks.multi_token_ablation [--steps=40] [--tokens=1,5,10] [--out=benchmarks/results/multi_token_ablation.json]

On the embedded dataset: greedy labels for a few clips from the small bundled judge (autogaze_jax/assets/
judge_small), then per K an NTP smoke run (`configs/ntp.py:smoke,mtp=K`, the tiny gaze model) and two
numbers on the held-out clips:
  gaze_ratio_at_threshold  the gaze ratio needed to reach the judge's loss at 10% random patches
                           (evaluation.evaluate.ratio_at_loss, greedy gaze)
  rollout_latency_s        median (and min) wall time of 10 greedy generates of one 16-frame clip at
                           ratio 0.1 (26 tokens per frame = ceil(26 / K) decoder steps per frame),
                           compile excluded
next to the paper's numbers (default model, real data, a GPU): ratio 0.074 / 0.078 / 0.094 and latency
0.949 / 0.246 / 0.193 s for K = 1 / 5 / 10. Minutes on a CPU: a plumbing-scale check of the trend (more
tokens per step = fewer decoder steps = lower latency), not a reproduction of the paper's figures.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time

import jax
import numpy as np

PAPER = {1: {"gaze_ratio_at_threshold": 0.074, "rollout_latency_s": 0.949},
         5: {"gaze_ratio_at_threshold": 0.078, "rollout_latency_s": 0.246},
         10: {"gaze_ratio_at_threshold": 0.094, "rollout_latency_s": 0.193}}


def run(tokens=(1, 5, 10), steps: int = 40, clips: int = 24, label_clips: int = 8, workdir: str | None = None,
        repeats: int = 10) -> dict:
  from autogaze_jax import AutoGaze
  from autogaze_jax.evaluation import evaluate as ev
  from autogaze_jax.judge.load import load_judge
  from autogaze_jax.labels.greedy import GreedyConfig
  from autogaze_jax.train import registry
  from configs import ntp as ntp_cfg
  from data_pipelines import training as train_input
  from launch.wiring import label_embedded, train

  judge_dir = os.path.join(os.path.dirname(os.path.dirname(registry.__file__)), "assets", "judge_small")
  workdir = workdir or tempfile.mkdtemp(prefix="mtp_ablation_")
  t0 = time.perf_counter()
  labels = label_embedded(label_clips, os.path.join(workdir, "labels"),
                          GreedyConfig(tau=0.0, budget=8, candidates="random", num_candidates=16, k_per_step=8),
                          videomae_checkpoint=judge_dir, synthetic_num_clips=clips)
  label_s = time.perf_counter() - t0
  judge = load_judge(judge_dir)
  rows, threshold = [], None
  for k in tokens:
    c = ntp_cfg.get_config(f"smoke,mtp={k},steps={steps},batch=4")
    c.mesh.num_devices, c.train.picture_every, c.train.ckpt_every = 1, 0, 1000
    c.data.synthetic_num_clips, c.data.labels, c.data.max_tokens_per_frame = clips, labels, 8
    wd = os.path.join(workdir, f"ntp_mtp{k}")
    t0 = time.perf_counter()
    train(c, wd)                    # a finished run in a reused --workdir only re-exports
    train_s = time.perf_counter() - t0
    with open(os.path.join(wd, "tb", "metrics.jsonl")) as f:
      last = [json.loads(line) for line in f][-1]
    model = AutoGaze.from_pretrained(os.path.join(wd, "export"))
    val = train_input.source(c, "val")
    pv = np.stack([model.processor.normalize(val[i]["frames"]) for i in range(len(val))])
    if threshold is None:  # one threshold for every K: the judge's loss at 10% random patches
      threshold = ev.random_gaze_loss(judge, pv, 0.1)
    ratio = ev.ratio_at_loss(model, judge, pv, threshold, (0.04, 0.08, 0.15, 0.3))["gaze_ratio_at_threshold"]
    one = pv[:1]
    gen = lambda: model.generate(one, 0.1, None, generate_only=True)["gazing_pos"]  # noqa: E731
    gen()                                                                              # compile
    times = []
    for _ in range(repeats):
      t1 = time.perf_counter()
      jax.block_until_ready(gen())
      times.append(time.perf_counter() - t1)
    rows.append({"num_multi_token_pred": k, "gaze_ratio_at_threshold": float(ratio),
                 "rollout_latency_s": float(np.median(times)), "rollout_latency_min_s": float(np.min(times)),
                 "decoder_steps_per_frame": -(-26 // k), "train_or_reuse_s": round(train_s, 1),
                 "final_step": last.get("step"), "final_ntp_loss": last.get("ntp_loss"),
                 "paper": PAPER.get(k)})
  return {"benchmark": "multi_token_ablation", "model": "tiny (gaze_tiny architecture)", "steps": steps,
          "train_clips": clips, "label_clips": label_clips, "threshold_loss": float(threshold),
          "latency_setting": "greedy generate, 1 clip x 16 frames x 224^2, ratio 0.1 (26 tokens/frame)",
          "label_s": round(label_s, 1), "device": jax.devices()[0].device_kind, "platform": platform.platform(),
          "rows": rows,
          "note": "tiny model, toy-scale greedy labels, minutes of CPU: compare the trend across K, "
                  "not the values, with the paper's (default model, real data, GPU)"}


def main():
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--tokens", default="1,5,10", help="comma list of num_multi_token_pred values")
  ap.add_argument("--steps", type=int, default=40, help="NTP steps per variant")
  ap.add_argument("--workdir", default=None, help="keep the runs here (default: a temporary dir)")
  ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "multi_token_ablation.json"))
  args = ap.parse_args()
  res = run(tuple(int(k) for k in args.tokens.split(",")), args.steps, workdir=args.workdir)
  text = json.dumps(res, indent=1)
  print(text, flush=True)
  if args.out:
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
      f.write(text + "\n")


if __name__ == "__main__":
  main()
