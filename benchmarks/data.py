"""Input pipeline throughput: clips/s of 16x224x224 uint8 batches, folder (PyAV) vs ArrayRecord,
with 0/1/2 grain worker processes. Prints one JSON object.

    python -m benchmarks.data [--clips=200] [--batch=8] [--batches=12] [--workers=0,1,2] [--cache_dir=DIR]

Uses the embedded synthetic dataset (generated/built on first use under the cache dir). Target: the
ArrayRecord path >= 50 clips/s on a 2-core machine, so data never bounds a CPU NTP step.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import time


def _rate(source, workers, batch, batches):
  from data_pipelines import pipeline
  it = pipeline.make_iterator(source, global_batch_size=batch, seed=0, num_workers=workers, process_index=0,
                              process_count=1)
  next(it)  # warm-up: worker start, first decode
  t = time.perf_counter()
  for _ in range(batches):
    b = next(it)
  dt = time.perf_counter() - t
  assert b["frames"].shape == (batch, 16, 224, 224, 3)
  return round(batches * batch / dt, 1)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--clips", type=int, default=200)
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--batches", type=int, default=12)
  p.add_argument("--workers", default="0,1,2")
  p.add_argument("--cache_dir", default=None)
  a = p.parse_args(argv)
  logging.basicConfig(level=logging.WARNING)
  from data_pipelines import sources, synthetic
  from data_pipelines.tfds_builder import build
  cfg = synthetic.SyntheticConfig(num_clips=a.clips)
  t = time.perf_counter()
  root = synthetic.ensure_synthetic(cfg, a.cache_dir)
  gen_s = time.perf_counter() - t
  out = root + "-arrayrecord"
  t = time.perf_counter()
  if not os.path.isdir(os.path.join(out, "autogaze_videos")):
    build(root, out, progress=lambda s: None)
  build_s = time.perf_counter() - t
  res = {"machine": platform.machine(), "cpus": os.cpu_count(), "batch": a.batch, "batches": a.batches,
         "synthetic_generate_s": round(gen_s, 2), "arrayrecord_build_s": round(build_s, 2),
         "clips_per_s": {}}
  srcs = {"folder": sources.VideoFolderSource(root, "train"), "arrayrecord": sources.ArrayRecordSource(out, "train")}
  for name, src in srcs.items():
    for w in [int(x) for x in a.workers.split(",")]:
      res["clips_per_s"][f"{name}_workers{w}"] = _rate(src, w, a.batch, a.batches)
  print(json.dumps(res, indent=1))
  return res


if __name__ == "__main__":
  main()
