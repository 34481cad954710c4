"""Train the VideoMAE judge with random multi-scale gaze masks (ours).

  python -m launch.train --config=configs/videomae.py --workdir=runs/videomae
  python -m launch.train --config=configs/videomae.py:smoke --workdir=runs/videomae_smoke

Per video and frame a gaze ratio is drawn (frame 0 ~ U(0.05, 0.5), later frames ~ U(0, 0.2)) and a
uniform random subset of the 265 multi-scale ids; loss = the task loss on the reconstructed frames;
AdamW with linear warmup (5%) + cosine decay, global-norm clip 1. Real runs start from the official
videomae.pt (converted once to safetensors) rather than training from scratch; the `smoke` variant
trains the small judge used by the embedded default pipeline.
"""
from configs import common


def get_config(arg=None):
  a = common.parse_arg(arg, smoke=False, steps=0, batch=0)
  c = common.mlc.ConfigDict()
  c.algorithm = "videomae"
  c.mesh = common.mesh_config()
  c.model = common.model_config("tiny")  # unused by this algorithm (kept for a uniform config schema)
  c.data = common.data_config(4 if a.smoke else 256)
  c.optimizer = common.optimizer_config("adamw", 1e-3 if a.smoke else 1.5e-4, "cosine", 0.0)
  c.optimizer.warmup_frac = 0.05
  c.optimizer.grad_clip = 1.0
  c.train = common.train_config(150 if a.smoke else 20_000)
  c.train.log_every = 10 if a.smoke else 50
  c.train.ckpt_every = 50 if a.smoke else 1000
  c.videomae = common.judge_config("small" if a.smoke else "default")
  c.videomae.update({"frame0_ratio": (0.05, 0.5), "other_ratio": (0.0, 0.2), "recon_frames": 4 if a.smoke else 2,
                     # pretraining from scratch: the perceptual nets' weights (HF dirs or safetensors files)
                     "dinov2_reg_weights": "", "siglip2_weights": ""})
  if a.smoke:
    c.data.synthetic_num_clips = 160
    # A small judge trained for minutes only learns to use the visible patches when it often sees many
    # of them: with the paper-like ratios (<= 0.2 after frame 0) it stays at the mean image; up to 0.4
    # after frame 0 it does (autogaze_jax/assets/judge_small: this recipe, 500 steps). 160 clips, not 40:
    # on 40 it memorises its training clips and the held-out losses barely depend on the gaze.
    c.videomae.frame0_ratio = (0.05, 1.0)
    c.videomae.other_ratio = (0.0, 0.4)
    c.optimizer.lr = 2e-3
  if a.steps:
    c.train.num_steps = a.steps
  if a.batch:
    c.data.global_batch_size = a.batch
  return c
