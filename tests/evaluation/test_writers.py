"""Metric writer: rows flushed as written, valid JSON for non-finite values, resume drops later rows."""
import json
import math
import os

from autogaze_jax.evaluation.writers import MetricWriter


def _rows(path):
  with open(path) as f:
    return [json.loads(line) for line in f]


def test_rows_flushed_valid_json_and_resume_truncation(tmp_path):
  logdir = str(tmp_path / "tb")
  path = os.path.join(logdir, "metrics.jsonl")
  w = MetricWriter(logdir)
  for step in (1, 2, 3):
    w.write_scalars(step, {"loss": 1.0 / step, "odd": float("nan") if step == 2 else 0.5})
    assert [r["step"] for r in _rows(path)] == list(range(1, step + 1))    # on disk before close
  assert _rows(path)[1]["odd"] is None and math.isclose(_rows(path)[2]["loss"], 1 / 3)
  with open(path, "a") as f:
    f.write('{"step": 4, "loss": 0.2')                                     # a kill mid-write
  w2 = MetricWriter(logdir, resume_step=2)                                  # resumed from checkpoint 2
  assert [r["step"] for r in _rows(path)] == [1, 2]
  w2.write_scalars(3, {"loss": 0.3})
  assert [r["step"] for r in _rows(path)] == [1, 2, 3]
  w.close()
  w2.close()
