"""The labelling loop and its shards (autogaze_jax/labels/loop.py, shards.py) on the real 265-id layout,
with the `videomae_tiny` fixture as the judge (random weights: the file format and resume are tested,
not the labels' quality)."""
import json
import os

from autogaze_jax.labels import shards
from autogaze_jax.labels.format import validate_entry
from autogaze_jax.labels.greedy import GreedyConfig
from data_pipelines import labels as labels_lib
from launch.wiring import label_embedded
from tests.conftest import FIXTURES

TINY_JUDGE = os.path.join(FIXTURES, "videomae_tiny")

GC = GreedyConfig(budget=2, tau=-1.0, candidates="random", num_candidates=8, k_per_step=1)


def test_label_file_kill_and_resume(tmp_path):
  """An interrupted run (stopped after one batch, with a torn half-written record appended as a kill
  mid-write leaves it) resumes to the same label file as an uninterrupted run; nothing twice."""
  kw = dict(num_frames=2, clips_per_batch=1, videomae_checkpoint=TINY_JUDGE)
  full = label_embedded(3, str(tmp_path / "a"), GC, **kw)
  b = str(tmp_path / "b")
  label_embedded(3, b, GC, stop_after_batches=1, **kw)
  shard = shards.shard_path(b, 0, 1)
  assert len(shards.read_shard(shard)) == 1 and not os.path.exists(os.path.join(b, shards.LABELS_NAME))
  with open(shard, "a") as f:
    f.write('{"i": 1, "key": "x", "gazing_pos": [[1')             # killed mid-write
  resumed = label_embedded(3, b, GC, **kw)
  with open(full, "rb") as fa, open(resumed, "rb") as fb:
    assert fa.read() == fb.read()
  recs = shards.read_shard(shard)
  assert sorted(r["i"] for r in recs) == [0, 1, 2]                 # each clip exactly once

  labels = labels_lib.load_labels(full, num_frames=2)
  assert len(labels) == 3
  for k, e in labels.items():
    validate_entry(k, e, num_frames=2)
    assert [len(f) for f in e["gazing_pos"]] == [2, 2]
  with open(os.path.join(tmp_path, "a", shards.META_NAME)) as f:
    meta = json.load(f)
  assert meta["tau"] == -1.0 and meta["budget"] == 2 and meta["variant"] == "random8" and meta["dtype"] == "float32"
  assert set(meta["reached_tau"]) == set(labels) and meta["summary"]["patches_per_frame_mean"] == 2.0
