"""GRPO post-training (paper recipe).

  python -m launch.train --config=configs/grpo.py --workdir=runs/grpo \
      --config.model.init=runs/ntp/export --config.videomae.checkpoint=/ckpt/videomae
  python -m launch.train --config=configs/grpo.py:smoke --workdir=runs/grpo_smoke

Recipe: start from the NTP export, group size 12, discount 0.995, 1 epoch, ratio cap 0.75 (198 tokens
per frame), per-frame budget from a reference rollout stopped at tau ~ U(0.5, 1.0) (the model block's
sampling configs, official names: --config.model.gazing_ratio_config.fixed.gazing_ratio=...), sampling temperature
3 -> 0.3 (exponential over the run) with HF's top-k 50, reward = -reconstruction loss of 2 random frames,
advantages centred per group without std normalisation, no KL/clipping, task-loss head trained.
Optimizer: the official trainer falls back to plain SGD with linear warmup (10%) then linear decay to 0
(so lr(0) = 0); that is our default for parity. Variant `adam` switches to Adam (lr 5e-5 constant).
Unlike the official script (2 videos x 32 accumulation, which trips its own B == 1 assertion), any
per-device batch works here: budgets are per video.
Variants: smoke (tiny gaze model + small judge on the embedded dataset, minutes on a CPU; Adam 4e-3 and
temperature 1, see below), adam.
"""
from configs import common


def get_config(arg=None):
  a = common.run_arg(arg, adam=False)
  # Smoke runs take minutes, not days: Adam 4e-3 at a constant temperature 1 (SGD from a zero-lr warmup
  # barely moves in 30 steps, and temperature 3 samples near-uniform rollouts whose advantages are
  # mostly noise).
  optimizer = (common.optimizer_config("adam", 4e-3, "constant", 0.0) if a.smoke
               else common.optimizer_config("sgd", 5e-4, "linear_w_warmup", 0.0))
  c = common.training_config("grpo", a, optimizer=optimizer, batch=(2, 64), steps=(30, 13_300), log_every=(5, 20),
                             picture_every=(10, 500), ckpt_every=(10, 500))
  # The recipe's sampling (official RL script), exported with the model: ratio fixed 0.75 (198 tokens per
  # frame; smoke 0.1 = 26), per-frame budgets from a `self` reference rollout stopped at tau ~ U(0.5, 1.0),
  # no stop in the group rollouts, inference stop at the fixed requirement 0.7.
  m = c.model
  m.gazing_ratio_config.fixed.gazing_ratio = 0.1 if a.smoke else 0.75
  m.gazing_ratio_each_frame_config.sample_strategy_during_training = "self"
  m.has_task_loss_requirement_during_inference = True
  m.task_loss_requirement_config.sample_strategy_during_training = "uniform"
  m.task_loss_requirement_config.uniform.task_loss_requirement_min = 0.5
  m.task_loss_requirement_config.uniform.task_loss_requirement_max = 1.0
  c.grpo = common.mlc.ConfigDict({
      "group_size": 4 if a.smoke else 12, "discount_factor": 0.995,
      "tokens_per_step": 0, "top_k": 50,  # tokens_per_step 0 = the model's num_multi_token_pred
      "temperature_start": 1.0 if a.smoke else 3.0, "temperature_end": 1.0 if a.smoke else 0.3,
      "frames_to_reconstruct": 2, "optimize_task_loss_prediction": True,
      # per-frame capacities below the ratio cap the step may run at (the smallest >= the step's largest
      # budget; one compiled branch each): early-stopping clips are not padded to 198 slots per frame
      "capacity_buckets": () if a.smoke else (8, 16, 32, 64, 128),
      # the reward call runs the judge only on the frames up to the latest reconstructed one, rounded up
      # to one of this many frame counts (one compiled branch each; 1 = every frame, always)
      "judge_prefix_buckets": 4})
  c.videomae = common.judge_config("small" if a.smoke else "default")
  if a.adam:
    c.optimizer = common.optimizer_config("adam", 5e-5, "constant", 0.0)
  return common.steps_and_batch(c, a)
