"""The wiring of `configs/`, `data_pipelines/` and the library (big_vision's train.py builds the input
pipeline and hands the loop an iterator; so do we). The entry points (`launch/train.py`, `launch/label.py`,
`launch/pipeline.py`) call these; they hold no absl flags, so tests import them freely.

  train(config, workdir, stop_after=None)   input iterator + validation clip -> autogaze_jax.train.loop.run
  label(config, workdir)                    judge + clip source -> autogaze_jax.labels.loop.label_dataset
  label_embedded(num_clips, workdir, gcfg, videomae_checkpoint=...)   the same on the embedded dataset
  convert_judge(videomae_pt, config, out, dinov2, siglip2)   what `launch.convert` runs
  export_run(workdir, out, step=None)       what `launch.export` runs
Imports are deferred so `--help` of the entry points stays fast and XLA flags can be set before jax starts.
"""
from __future__ import annotations

import json
import logging
import os


def train(config, workdir: str, stop_after: int | None = None, allow_config_change: bool = False) -> dict:
  """Wire the input pipeline to the training loop (as big_vision's train.py does): validate, build this
  host's iterator for the algorithm (labels joined when it trains on them) and the validation clip of
  the pictures, then `loop.run`. Returns the loop's final metrics."""
  import jax
  from jax.experimental import multihost_utils

  from autogaze_jax.train import loop, registry
  from data_pipelines import training as train_input
  loop.validate(config)
  loop.resume_config_changes(workdir, config, allow_config_change)   # before building inputs the config names
  algo = registry.ALGORITHMS[config.algorithm]
  barrier = ((lambda: multihost_utils.sync_global_devices("train_input")) if jax.process_count() > 1 else None)
  data = train_input.make_train_iterator(config, workdir, with_labels=algo.needs_labels,
                                         process_index=jax.process_index(), barrier=barrier)
  frames = train_input.validation_clip(config) if config.train.picture_every else None
  val = None
  if config.train.get("val_every", 0):   # the fixed held-out set of train.val_every
    from data_pipelines import validation
    try:
      val = validation.validation_batches(config, workdir, with_labels=algo.needs_labels)
    except validation.NoHeldOutLabels as e:
      raise loop.ConfigError(str(e)) from None
  try:
    return loop.run(config, workdir, data, picture_frames=frames, stop_after=stop_after,
                    allow_config_change=allow_config_change, val_batches=val)
  finally:
    data.log_stats()


def clip_source(data):
  """(load(i), keys, kind) for a `config.data` block: src '' = the embedded synthetic dataset; else a
  video folder, or an ArrayRecord build dir (`source=arrayrecord`, or detected by its dataset_info.json)."""
  import glob
  import os

  from data_pipelines import ops
  from data_pipelines.pipeline import make_source
  kind = data.source
  if kind == "auto":
    if not data.src:
      kind = "synthetic"
    elif glob.glob(os.path.join(data.src, "**", "dataset_info.json"), recursive=True):
      kind = "arrayrecord"
    else:
      kind = "folder"
  src = make_source(kind, data.src or None, data.split, synthetic_num_clips=data.synthetic_num_clips,
                    seed=data.seed, cache_dir=data.cache_dir or None)
  if kind == "arrayrecord":         # records are already decoded clips
    keys, load = list(src.paths()), src.__getitem__
  else:                             # video folder: exact decode, no substitution of unreadable videos
    keys, load = [ops.relative_video_path(p) for p in src.paths], src.load
  if data.max_clips:
    keys = keys[:data.max_clips]
  return load, keys, kind


def _meta(gcfg, judge, num_frames: int, **extra) -> dict:
  import dataclasses
  return {"tau": gcfg.tau, "budget": gcfg.budget, "min_tokens": gcfg.min_tokens, "variant": gcfg.variant,
          "greedy": dataclasses.asdict(gcfg), "dtype": judge.cfg.dtype, "loss_terms": judge.loss_terms,
          "num_frames": num_frames, **extra}


def label(config, workdir: str) -> dict | None:
  """config (configs/greedy_labels.py) -> labels in `workdir` (resumable); the summary once merged."""
  import os
  import time

  import jax

  from autogaze_jax.core.sharding import make_mesh
  from autogaze_jax.judge.load import load_judge
  from autogaze_jax.labels.greedy import GreedyLabeler, greedy_config_from
  from autogaze_jax.labels.loop import label_dataset
  from autogaze_jax.labels.shards import LABELS_NAME
  gcfg = greedy_config_from(config.greedy)
  if config.data.num_frames < 1 or config.data.clips_per_batch < 1:
    raise ValueError(f"data.num_frames={config.data.num_frames} and data.clips_per_batch="
                     f"{config.data.clips_per_batch} must be >= 1")
  os.makedirs(workdir, exist_ok=True)
  vm = config.videomae
  judge = load_judge(vm.checkpoint, vm.size, vm.dtype, vm.seed, loss_type=vm.get("loss_type", ""))
  devices = jax.local_devices() if not config.mesh.num_devices else jax.local_devices()[:config.mesh.num_devices]
  mesh = make_mesh(config.mesh.data, config.mesh.fsdp, devices)
  load, keys, kind = clip_source(config.data)
  meta = _meta(gcfg, judge, config.data.num_frames, videomae_checkpoint=vm.checkpoint or f"(none: random {vm.size})",
               data={"source": kind, "src": config.data.src, "split": config.data.split},
               arrayrecord="NTP reads these labels from an ArrayRecord build by joining at read time "
                           "(--config.data.source=arrayrecord --config.data.labels=<this dir>/gazing_labels.json), "
                           "or store them in the records: python -m launch.build_dataset --labels=<file>")
  labeler = GreedyLabeler(judge.graphdef, judge.params, gcfg, judge.perceptual, mesh if mesh.shape["data"] > 1 else None)
  t0 = time.perf_counter()
  summary = label_dataset(labeler, load, keys, workdir, meta=meta, num_frames=config.data.num_frames,
                          clips_per_batch=config.data.clips_per_batch, log_every=config.log_every)
  if summary is not None:
    summary = {**summary, "seconds": round(time.perf_counter() - t0, 2), "labels": os.path.join(workdir, LABELS_NAME)}
    logging.info("summary: %s", json.dumps(summary))
  return summary


def label_embedded(num_clips: int, workdir: str, gcfg, *, videomae_checkpoint: str, num_frames: int = 16,
                   clips_per_batch: int = 2, synthetic_num_clips: int = 40, split: str = "train", mesh=None,
                   stop_after_batches: int | None = None) -> str:
  """Label the first `num_clips` clips of the embedded synthetic dataset with the judge at
  `videomae_checkpoint` into `workdir/gazing_labels.json` (resumable: call again after a kill); returns
  its path. `stop_after_batches` stops early without merging (a kill, for tests)."""
  import os

  from autogaze_jax.judge.load import load_judge
  from autogaze_jax.labels.greedy import GreedyLabeler
  from autogaze_jax.labels.loop import label_dataset
  from autogaze_jax.labels.shards import LABELS_NAME
  from data_pipelines import ops
  from data_pipelines.pipeline import make_source
  judge = load_judge(videomae_checkpoint)
  src = make_source("synthetic", None, split, synthetic_num_clips=synthetic_num_clips)
  keys = [ops.relative_video_path(p) for p in src.paths][:num_clips]
  label_dataset(GreedyLabeler(judge.graphdef, judge.params, gcfg, judge.perceptual, mesh), src.load, keys, workdir,
                meta=_meta(gcfg, judge, num_frames, videomae_checkpoint=videomae_checkpoint),
                num_frames=num_frames, clips_per_batch=clips_per_batch, process_index=0, process_count=1,
                stop_after_batches=stop_after_batches)
  return os.path.join(workdir, LABELS_NAME)


def convert_judge(videomae_pt: str, config: str, out: str, dinov2: str | None = None, siglip2: str | None = None,
                  loss_type: str = "l1+dinov2_reg+siglip2", loss_weights: str = "1+0.3+0.3") -> dict:
  """`launch.convert`: the official judge `videomae.pt` (+ the vit-mae config.json and the perceptual
  nets' HF dirs; paths or hub ids) -> a judge dir. Returns {part: tensor count, <part>_source: where its
  tensors came from}."""
  from autogaze_jax.interop.common import CheckpointError, resolve_checkpoint_dir, resolve_checkpoint_file
  from autogaze_jax.interop.videomae import TASK_OVERRIDES, convert_task_checkpoint
  overrides = dict(TASK_OVERRIDES, loss_type=loss_type, loss_weights=loss_weights)
  net_files = ("config.json", "model.safetensors")
  try:
    videomae_pt = resolve_checkpoint_file(videomae_pt, "videomae.pt", what="--videomae_pt")
    config = resolve_checkpoint_dir(config, allow_patterns=("config.json",), what="--config")
    dinov2 = dinov2 and resolve_checkpoint_dir(dinov2, allow_patterns=net_files, what="--dinov2")
    siglip2 = siglip2 and resolve_checkpoint_dir(siglip2, allow_patterns=net_files, what="--siglip2")
    return convert_task_checkpoint(videomae_pt, config, out, dinov2, siglip2, overrides)
  except CheckpointError as e:
    raise SystemExit(f"error: {e}") from None


def export_run(workdir: str, out: str, step: int | None = None) -> str:
  """`launch.export`: the gaze model of a training run's checkpoint (latest or `step`) -> an official-format
  dir `out`."""
  import jax
  import ml_collections
  import orbax.checkpoint as ocp
  from autogaze_jax import AutoGaze
  from autogaze_jax.gaze.functional import params_from_pure_dict
  from autogaze_jax.train.algorithm import gaze_config
  cfg_path = os.path.join(workdir, "config.json")
  if not os.path.isfile(cfg_path):
    raise SystemExit(f"error: {workdir} has no config.json (not a launch.train workdir)")
  config = ml_collections.ConfigDict(json.load(open(cfg_path)))
  if config.algorithm not in ("ntp", "grpo"):
    raise SystemExit(f"error: {workdir} trained {config.algorithm!r}; only gaze-model runs (ntp, grpo) export here")
  mngr = ocp.CheckpointManager(os.path.abspath(os.path.join(workdir, "checkpoints")), item_names=("state", "data"))
  step = step if step is not None else mngr.latest_step()
  if step is None:
    raise SystemExit(f"error: no checkpoint in {workdir}/checkpoints")
  gcfg = gaze_config(config)  # the run's architecture (the checkpoint's with model.init) and sampling configs
  restored = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore()))["state"]
  params = restored["params"] if isinstance(restored, dict) else restored.params
  _, state = params_from_pure_dict(gcfg, _strip_values(jax.tree.map(lambda x: x, params)))
  AutoGaze(gcfg, state).save_pretrained(out)
  mngr.close()
  return out


def _strip_values(tree):
  """orbax restores nnx.State leaves as {'value': array} dicts: unwrap them to a pure dict."""
  if isinstance(tree, dict):
    if set(tree) == {"value"}:
      return tree["value"]
    return {(int(k) if isinstance(k, str) and k.isdigit() else k): _strip_values(v) for k, v in tree.items()}
  return tree
