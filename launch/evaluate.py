r"""Evaluate gaze models against a judge on held-out clips: curves, quality, analyses, pictures, report.json.

  python -m launch.evaluate --checkpoint=runs/ntp/export,runs/grpo/export --judge=runs/videomae/export \
      --out=runs/eval [--data=/videos | --data=/arrayrecord_build] [--split=val] [--num_clips=16]

Checkpoints and the judge are official-format dirs or hub ids ('org/name[@revision]'); names in the
report are the basenames of their parent dirs (runs/ntp/export -> ntp) unless given as NAME=DIR. The
clips come from any source the trainer reads (a video folder or an ArrayRecord build; default: the
embedded synthetic dataset's held-out 'val' split). Writes OUT/report.json, OUT/curves.png,
OUT/analysis.png and OUT/pictures/ (see autogaze_jax/evaluation/report.py and the README for what each
number means) and prints the ratio-at-epsilon table.
"""
from __future__ import annotations

import logging
import os

from absl import app, flags

_CKPT = flags.DEFINE_list("checkpoint", None, "gaze model dirs or hub ids, comma separated (NAME=DIR to name one)")
_JUDGE = flags.DEFINE_string("judge", None, "judge (VideoMAE) dir or hub id")
_OUT = flags.DEFINE_string("out", None, "output directory")
_DATA = flags.DEFINE_string("data", "", "clip source: '' = the embedded synthetic dataset, else a video folder "
                            "(<root>/<split>/*.mp4) or an ArrayRecord build dir")
_SPLIT = flags.DEFINE_string("split", "val", "split of the source")
_NUM = flags.DEFINE_integer("num_clips", 16, "held-out clips to evaluate")
_SYN = flags.DEFINE_integer("synthetic_num_clips", 200, "size of the embedded dataset (as the training config's)")
_RATIOS = flags.DEFINE_list("ratios", ["0.02", "0.05", "0.1", "0.2", "0.4", "0.75"], "fixed-budget gaze ratios")
_EPS = flags.DEFINE_float("epsilon", None, "loss of the ratio-at-epsilon table (default: judge loss at a random "
                          "10% of the patches on these clips)")
_NTHR = flags.DEFINE_integer("num_thresholds", 6, "stop-rule thresholds (spanning the fixed-budget losses)")
_LOSS = flags.DEFINE_string("loss_type", "", "judge terms to score with ('' = all of the judge's, e.g. l1)")
_BATCH = flags.DEFINE_integer("batch", 4, "clips per compiled call")
_PICS = flags.DEFINE_integer("pictures", 2, "clips drawn per model")


def load_clips(data: str, split: str, num_clips: int, synthetic_num_clips: int = 200):
  """(N, T, H, W, 3) uint8: the first `num_clips` readable clips of the source (EmptyEvaluationData if none)."""
  import ml_collections
  import numpy as np

  from autogaze_jax.evaluation.report import EmptyEvaluationData
  from launch.wiring import clip_source
  if num_clips < 1:
    raise EmptyEvaluationData(f"num_clips = {num_clips}: evaluate at least one clip")
  d = ml_collections.ConfigDict({"source": "auto", "src": data, "split": split, "synthetic_num_clips":
                                 synthetic_num_clips, "seed": 0, "cache_dir": "", "max_clips": 0})
  try:
    load, keys, kind = clip_source(d)
  except ValueError as e:      # an empty folder/split: the sources' own message
    raise EmptyEvaluationData(f"no clips to evaluate in {data or 'the embedded dataset'} split {split!r}: {e}") from None
  clips = []
  for i in range(len(keys)):
    if len(clips) == num_clips:
      break
    try:
      clips.append(np.asarray(load(i)["frames"]))
    except Exception as e:  # an unreadable video is skipped (and said), as the labeller does
      logging.warning("skipping unreadable clip %s: %s", keys[i], e)
  if not clips:
    raise EmptyEvaluationData(f"no readable clips in {data or 'the embedded dataset'} split {split!r} ({kind})")
  return np.stack(clips)


def _names(checkpoints):
  out = {}
  for c in checkpoints:
    name, sep, path = c.partition("=")
    if not sep:
      path = c
      base = os.path.basename(os.path.normpath(c))
      name = os.path.basename(os.path.dirname(os.path.normpath(c))) if base == "export" else base
    if name in out:
      name = f"{name}_{len(out)}"
    out[name] = path
  return out


def run(checkpoints, judge: str, out: str, *, data: str = "", split: str = "val", num_clips: int = 16,
        synthetic_num_clips: int = 200, loss_type: str = "", **kw) -> dict:
  """Load the models and the judge (CheckpointError for an unknown one or a layout mismatch), the clips
  (EmptyEvaluationData if none), and `report.evaluate_models`. Prints the table; returns the report."""
  from autogaze_jax import AutoGaze
  from autogaze_jax.evaluation import report
  from autogaze_jax.judge.load import load_judge
  if not checkpoints:
    raise app.UsageError("--checkpoint needs at least one gaze model")
  j = load_judge(judge, loss_type=loss_type)
  models = {}
  for name, path in _names(checkpoints).items():
    models[name] = AutoGaze.from_pretrained(path)
    report.check_compatible(name, models[name].cfg, j, judge)
  frames = load_clips(data, split, num_clips, synthetic_num_clips)
  logging.info("evaluating %d model(s) on %d clips x %d frames", len(models), len(frames), frames.shape[1])
  res = report.evaluate_models(models, j, frames, out, **kw)
  print("\n".join(report.table_lines(res)), flush=True)
  return res


def main(argv):
  del argv
  from launch.runtime import init_runtime
  init_runtime()
  if not _CKPT.value or not _JUDGE.value or not _OUT.value:
    raise app.UsageError("--checkpoint, --judge and --out are required (see --help)")
  run(_CKPT.value, _JUDGE.value, _OUT.value, data=_DATA.value, split=_SPLIT.value, num_clips=_NUM.value,
      synthetic_num_clips=_SYN.value, loss_type=_LOSS.value, ratios=[float(r) for r in _RATIOS.value],
      epsilon=_EPS.value, num_thresholds=_NTHR.value, batch=_BATCH.value, pictures=_PICS.value)


if __name__ == "__main__":
  app.run(main)
