"""Export a training run's gaze model to the official format (config.json + model.safetensors).

  python -m launch.export --workdir=runs/ntp --out=exports/ntp [--step=N]

Reads the run's config (WORKDIR/config.json) and its latest (or --step) orbax checkpoint, and writes a
checkpoint that `AutoGaze.from_pretrained` here and the official `AutoGaze.from_pretrained` load.
"""
from __future__ import annotations

import json
import os

from absl import app, flags

_WORKDIR = flags.DEFINE_string("workdir", None, "training workdir (has config.json and checkpoints/)")
_OUT = flags.DEFINE_string("out", None, "output directory")
_STEP = flags.DEFINE_integer("step", None, "checkpoint step (default: the latest)")


def export(workdir: str, out: str, step: int | None = None) -> str:
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


def main(argv):
  del argv
  from launch.runtime import init_runtime
  init_runtime()
  if not _WORKDIR.value or not _OUT.value:
    raise app.UsageError("--workdir and --out are required")
  print(f"exported to {export(_WORKDIR.value, _OUT.value, _STEP.value)}")


if __name__ == "__main__":
  app.run(main)
