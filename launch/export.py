"""Export a training run's gaze model to the official format (config.json + model.safetensors).

  python -m launch.export --workdir=runs/ntp --out=exports/ntp [--step=N]

Reads the run's config (WORKDIR/config.json) and its latest (or --step) orbax checkpoint, and writes a
checkpoint that `AutoGaze.from_pretrained` here and the official `AutoGaze.from_pretrained` load.
"""
from __future__ import annotations


from absl import app, flags

_WORKDIR = flags.DEFINE_string("workdir", None, "training workdir (has config.json and checkpoints/)")
_OUT = flags.DEFINE_string("out", None, "output directory")
_STEP = flags.DEFINE_integer("step", None, "checkpoint step (default: the latest)")


def main(argv):
  del argv
  from launch.runtime import init_runtime
  init_runtime()
  if not _WORKDIR.value or not _OUT.value:
    raise app.UsageError("--workdir and --out are required")
  from launch.wiring import export_run
  print(f"exported to {export_run(_WORKDIR.value, _OUT.value, _STEP.value)}")


if __name__ == "__main__":
  app.run(main)
