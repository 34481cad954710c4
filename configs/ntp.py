"""NTP pre-training on greedy gaze labels (paper recipe).

  python -m launch.train --config=configs/ntp.py --workdir=runs/ntp \
      --config.data.source=folder --config.data.path=/data/videos --config.data.labels=/data/gazing_labels.json
  python -m launch.train --config=configs/ntp.py:smoke --workdir=runs/ntp_smoke   # minutes on a CPU

Recipe: Adam (0.9, 0.999, eps 1e-8), no weight decay, no clipping, lr 5e-4 linear to 1e-5 without
warmup, global batch 1024 (official: 32 x 4 accumulation x 8 GPUs), 150 epochs, task-loss head trained,
fp32 params. Variants:
  smoke      tiny model, embedded synthetic dataset with its labels (`data.labels` may point to a
             greedy label file; empty = toy labels generated from the dataset for plumbing runs).
  official   per-device micro-batch 32 with 4 accumulation steps, as the official script.
  mtp=N      num_multi_token_pred N (the paper's ablation: 1 / 5 / 10; 0 = the size's, 10).
  single_scale  one 224 scale of 196 tokens (the paper's single-scale ablation) instead of 32+64+112+224.
With no data given, the embedded default dataset is used. The sampling configs exported with the model
are the official NTP script's: ratio fixed 0.1; at inference the per-frame split is Dirichlet with
alpha 10,3,...,3 (more budget for the first frame) and no task-loss stop.
"""
from configs import common


def get_config(arg=None):
  a = common.run_arg(arg, official=False, mtp=0, single_scale=False)
  c = common.training_config("ntp", a, optimizer=common.optimizer_config("adam", 5e-4, "linear", 1e-5),
                             batch=(8, 1024), steps=(60, 124_500), log_every=(5, 50), picture_every=(20, 5000),
                             ckpt_every=(20, 500))
  c.data.max_tokens_per_frame = 12 if a.smoke else 26
  m = c.model
  m.num_multi_token_pred = a.mtp
  if a.single_scale:
    m.scales, m.num_vision_tokens_each_frame = "224", 196
  m.gazing_ratio_config.fixed.gazing_ratio = 0.1
  m.gazing_ratio_each_frame_config.sample_strategy_during_inference = "dirichlet"
  m.gazing_ratio_each_frame_config.dirichlet.alpha = ",".join(["10"] + ["3"] * 15)
  c.ntp = common.mlc.ConfigDict({"optimize_task_loss_prediction": True})
  if a.smoke:
    c.optimizer.lr = 3e-3
  if a.official:
    c.optimizer.grad_accum_steps = 4
    c.data.global_batch_size = 256
  return common.steps_and_batch(c, a)
