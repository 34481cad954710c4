"""Pack a video folder (+ gaze labels) into ArrayRecord shards readable without TensorFlow.

    python -m launch.build_dataset --src=/data/InternVid_res448_250K --out=/data/ar/internvid \
        [--labels=/data/gazing_labels.json] [--splits=train,val] [--beam_runner=DirectRunner]
    python -m launch.build_dataset --synthetic=200 --out=/tmp/ar/synthetic   # the embedded default

`--src` holds `train/` and `val/` folders of videos (mp4/webm/mov/mkv). Each video becomes one record
(first 16 frames, 224x224 uint8); unreadable videos are skipped and counted. Progress (clips/s, ETA) is
logged while building; the report is printed and written to `<out>/build_report.json`. Run again
into the same --out, the dataset is reused only if the source (file list, sizes, mtimes, labels) is
unchanged; otherwise the build stops and lists what changed, unless --rebuild replaces it. A split
whose videos are all unreadable stops the build with its skip counts. Read back with
`data_pipelines.sources.ArrayRecordSource(OUT)` or `tfds.data_source("autogaze_videos", data_dir=OUT)`.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys


def parse_args(argv=None):
  p = argparse.ArgumentParser(prog="python -m launch.build_dataset", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  src = p.add_mutually_exclusive_group(required=True)
  src.add_argument("--src", help="video folder root with train/ and val/ subfolders")
  src.add_argument("--synthetic", type=int, metavar="N",
                   help="build the embedded synthetic dataset of N clips (generated on first use) instead")
  p.add_argument("--out", required=True, help="output data_dir for the tfds dataset (created if missing)")
  p.add_argument("--labels", default=None,
                 help="gazing_labels.json path(s): comma-separated, globs allowed; stored with each clip")
  p.add_argument("--splits", default="train,val", help="comma-separated splits to build (default: train,val)")
  p.add_argument("--seed", type=int, default=0, help="seed of the synthetic dataset (with --synthetic)")
  p.add_argument("--cache_dir", default=None, help="cache dir of the synthetic videos (with --synthetic)")
  p.add_argument("--rebuild", action="store_true",
                 help="delete the dataset already in --out and build it again (needed once the source changed)")
  p.add_argument("--beam_runner", default=None,
                 help="build with Apache Beam on this runner (e.g. DirectRunner); needs requirements-beam.txt")
  p.add_argument("--beam_options", default=None,
                 help="extra Beam pipeline flags, space-separated (e.g. '--direct_num_workers=4')")
  return p.parse_args(argv)


def main(argv=None) -> dict:
  args = parse_args(argv)
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
  from data_pipelines.tfds_builder import NoReadableVideos, StaleDataset, build
  src = args.src
  if args.synthetic is not None:
    from data_pipelines import synthetic
    src = synthetic.ensure_synthetic(synthetic.SyntheticConfig(num_clips=args.synthetic, seed=args.seed),
                                     args.cache_dir)
    logging.info("synthetic videos at %s", src)
  beam_options = None
  if args.beam_runner and args.beam_options:
    import apache_beam as beam
    beam_options = beam.options.pipeline_options.PipelineOptions(args.beam_options.split())
  try:
    report = build(src, args.out, labels=args.labels, splits=[s for s in args.splits.split(",") if s],
                   beam_runner=args.beam_runner, beam_options=beam_options, rebuild=args.rebuild)
  except (StaleDataset, NoReadableVideos) as e:
    raise SystemExit(f"error: {type(e).__name__}: {e}") from None
  print(json.dumps(report, indent=1, sort_keys=True))
  return report


if __name__ == "__main__":
  main(sys.argv[1:])
