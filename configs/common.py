"""Shared config blocks and the `file.py:key=val,...` argument parser (big_vision style).

Configs import only ml_collections and this module. Every number of a run lives in its config;
`validate` (autogaze_jax/train/loop.py) checks it before anything is compiled.
"""
from __future__ import annotations

import ml_collections as mlc


def parse_arg(arg: str | None, **defaults) -> mlc.ConfigDict:
  """`"smoke"` or `"smoke,batch=8"` -> ConfigDict of `defaults` with those set. Bare names are bools
  set to True; `k=v` is converted to the type of the default. Unknown keys raise (naming them)."""
  out = mlc.ConfigDict(dict(defaults))
  for part in filter(None, (arg or "").split(",")):
    key, _, val = part.partition("=")
    key = key.strip()
    if key not in defaults:
      raise ValueError(f"unknown config argument {key!r}; known: {sorted(defaults)}")
    d = defaults[key]
    if not val:
      if not isinstance(d, bool):
        raise ValueError(f"config argument {key!r} needs a value ({key}=...)")
      out[key] = True
    elif isinstance(d, bool):
      if val.lower() not in ("true", "false", "1", "0"):
        raise ValueError(f"config argument {key}={val!r} is not a bool")
      out[key] = val.lower() in ("true", "1")
    else:
      out[key] = type(d)(val)
  return out


def mesh_config() -> mlc.ConfigDict:
  """Axes (data, fsdp); -1 = the remaining devices. num_devices: use only the first N devices
  (0 = all; single-process runs only, e.g. to compare against a 1-device run)."""
  return mlc.ConfigDict({"data": -1, "fsdp": 1, "num_devices": 0})


def data_config(batch: int) -> mlc.ConfigDict:
  """source: synthetic (embedded default, generated on first use) | folder | arrayrecord."""
  return mlc.ConfigDict({
      "source": "synthetic", "path": "", "labels": "", "synthetic_num_clips": 200, "cache_dir": "",
      "global_batch_size": batch, "num_workers": 0, "shuffle": True, "seed": 0,
      "max_tokens_per_frame": 26,  # fixed-capacity label collation: static slots per frame = this + 1
  })


def optimizer_config(name="adam", lr=5e-4, schedule="linear", min_lr=1e-5) -> mlc.ConfigDict:
  return mlc.ConfigDict({"name": name, "lr": lr, "min_lr": min_lr, "schedule": schedule, "warmup_frac": 0.1,
                         "b1": 0.9, "b2": 0.999, "eps": 1e-8, "weight_decay": 0.0, "grad_clip": 0.0,
                         "grad_accum_steps": 1})


def train_config(steps: int) -> mlc.ConfigDict:
  """val_every: steps between validations on `val_clips` held-out clips of the data's val split (0 = off;
  NTP needs labels for them); GRPO's held-out rollouts stop at the task-loss threshold `val_threshold`,
  capped at gaze ratio `val_max_ratio`."""
  return mlc.ConfigDict({"num_steps": steps, "log_every": 10, "ckpt_every": 500, "keep_checkpoints": 2,
                         "picture_every": 0, "picture_ratio": 0.1, "seed": 666,
                         "val_every": 0, "val_clips": 8, "val_threshold": 0.7, "val_max_ratio": 0.75})


def model_config(size: str = "default") -> mlc.ConfigDict:
  """size: default (the released 3.26M model) | tiny (the gaze_tiny fixture architecture).
  init: '' = random init, else an official-format checkpoint dir (config.json + model.safetensors).

  Architecture overrides of the size (0 / '' = the size's value; with `init` they must equal the
  checkpoint's): scales ('32+64+112+224', or one scale such as '224' with num_vision_tokens_each_frame
  196), num_vision_tokens_each_frame, max_num_frames, input_img_size, num_multi_token_pred, vision_hidden_dim,
  vision_depth, vision_kernel_size, hidden_size (vision output = connector = decoder width),
  num_hidden_layers, num_attention_heads, head_dim, intermediate_size.

  Sampling (official config.json names and defaults, exported with the model; docs/sampling.md):
  gazing_ratio_config, gazing_ratio_each_frame_config (dirichlet.alpha '0.5' or '10,3,...,3'),
  task_loss_requirement_config, has_task_loss_requirement_during_training/_inference.
  """
  return mlc.ConfigDict({
      "size": size, "init": "", "dtype": "float32",
      "scales": "", "num_vision_tokens_each_frame": 0, "max_num_frames": 0, "input_img_size": 0,
      "num_multi_token_pred": 0, "vision_hidden_dim": 0, "vision_depth": 0, "vision_kernel_size": 0,
      "hidden_size": 0, "num_hidden_layers": 0, "num_attention_heads": 0, "head_dim": 0, "intermediate_size": 0,
      "gazing_ratio_config": {
          "sample_strategy_during_training": "fixed", "sample_strategy_during_inference": "fixed",
          "fixed": {"gazing_ratio": 0.5}, "uniform": {"gazing_ratio_min": 0.0, "gazing_ratio_max": 1.0},
          "exponential": {"gazing_ratio_min": 0.0, "gazing_ratio_max": 1.0, "lambda": 10.0}},
      "gazing_ratio_each_frame_config": {
          "sample_strategy_during_training": "uniform", "sample_strategy_during_inference": "uniform",
          "dirichlet": {"alpha": "0.5"}},
      "task_loss_requirement_config": {
          "sample_strategy_during_training": "fixed", "sample_strategy_during_inference": "fixed",
          "fixed": {"task_loss_requirement": 0.7},
          "uniform": {"task_loss_requirement_min": 0.6, "task_loss_requirement_max": 0.9}},
      "has_task_loss_requirement_during_training": False, "has_task_loss_requirement_during_inference": False,
  })


def judge_config(size: str) -> mlc.ConfigDict:
  """The frozen or trained VideoMAE judge. checkpoint: an official-format dir ('' = random init of `size`:
  tiny | small | default, plumbing only). loss_type: '' = the judge's own terms (the recipe's
  l1+dinov2_reg+siglip2); a term without weights is a config error, so choose e.g. 'l1' explicitly."""
  return mlc.ConfigDict({"checkpoint": "", "size": size, "loss_type": ""})


def run_arg(arg: str | None, **variants) -> mlc.ConfigDict:
  """`parse_arg` with the arguments every training config takes besides its own `variants`: `smoke`
  (minutes on a CPU), `steps=N` and `batch=N` (0 = the config's own)."""
  return parse_arg(arg, smoke=False, **variants, steps=0, batch=0)


def training_config(algorithm: str, a: mlc.ConfigDict, *, optimizer: mlc.ConfigDict, batch, steps, log_every,
                    picture_every, ckpt_every) -> mlc.ConfigDict:
  """The blocks of a gaze-model training run (algorithm, mesh, model, data, optimizer, train).

  `a` is a `run_arg` result. batch .. ckpt_every are (smoke, full) pairs picked by `a.smoke`; a smoke
  run trains the tiny model on 40 embedded clips. picture_every: steps between gaze pictures of the
  fixed validation clip. Apply `steps_and_batch` once the config's own variants are set.
  """
  pick = lambda pair: pair[0] if a.smoke else pair[1]  # noqa: E731
  c = mlc.ConfigDict()
  c.algorithm = algorithm
  c.mesh = mesh_config()
  c.model = model_config("tiny" if a.smoke else "default")
  c.data = data_config(pick(batch))
  c.optimizer = optimizer
  c.train = train_config(pick(steps))
  c.train.log_every = pick(log_every)
  c.train.picture_every = pick(picture_every)
  c.train.ckpt_every = pick(ckpt_every)
  if a.smoke:
    c.data.synthetic_num_clips = 40
  return c


def steps_and_batch(c: mlc.ConfigDict, a: mlc.ConfigDict) -> mlc.ConfigDict:
  """The `steps=N` / `batch=N` arguments, applied last so that they win over every variant."""
  if a.steps:
    c.train.num_steps = a.steps
  if a.batch:
    c.data.global_batch_size = a.batch
  return c
