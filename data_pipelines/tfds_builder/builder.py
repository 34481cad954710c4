"""`AutogazeVideos`: a tfds GeneratorBasedBuilder over a video folder (`<src>/{train,val}/*.mp4`).

Record features (one clip, same layout as `sources` items):
  frames        uint8  (16, 224, 224, 3)  stored as raw bytes (Encoding.BYTES: a varint-packed
                                          uint8 tensor parses ~10x slower, too slow for 50 clips/s)
  video_path    text                      relative key (last 3 components)
  data_stats    int32  (len(STAT_KEYS),)  repairs applied when the clip was decoded
  has_labels    int32  ()                 1 when the label fields below are meaningful
  gazing_pos    int64 (N,), task_losses float32 (N,), label_lengths int32 (16,)

Unreadable videos are skipped and counted (`build_report.json` in the output dir for the local
path, Beam metrics `skip_*` for the Beam path); a split with no readable video at all is a
`NoReadableVideos` error naming the split and its skip counts. `build_source.json` beside the dataset
records what it was built from (each video's size and mtime, the labels' digest, the clip shape): a
later build into the same dir reuses the dataset only when that record matches, else it stops with
`StaleDataset` (counts of added / removed / modified videos) or, asked to, rebuilds. Records keep
the generation order (shuffling is disabled: the grain pipeline shuffles), and
`video_paths-<split>.json` next to the shards lists the `video_path` of each record for fast label
joins at read time.

Beam: `build(..., beam_runner=...)` (or `use_beam=True`) makes `_generate_examples` return a Beam
PTransform, so tfds runs the same decode on any Beam runner (DirectRunner, Dataflow, Flink, Spark).
"""
from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
import time
from typing import Mapping, Sequence

import numpy as np
import tensorflow_datasets as tfds

from autogaze_jax.core.atomic_files import write_json
from data_pipelines import labels as labels_lib
from data_pipelines import ops
from data_pipelines import sources
from data_pipelines.sources import DATASET_NAME, DATASET_VERSION, path_index_file, read_path_index


class NoReadableVideos(ValueError):
  """A split whose folder holds no video that decodes; the message lists the skip counts."""


class StaleDataset(ValueError):
  """The output dir holds a dataset built from another source (or an unknown one)."""


SOURCE_FILE = "build_source.json"   # beside build_report.json in the output dir


def labels_digest(labels) -> str | None:
  """sha256 of the labels a build stores: label file path(s) (globs as `labels.load_labels` takes
  them) by each file's path, size and mtime (cheap for a multi-GB file); a dict by its content."""
  if labels is None:
    return None
  h = hashlib.sha256()
  if isinstance(labels, (str, list, tuple)):
    specs = [p.strip() for p in labels.split(",") if p.strip()] if isinstance(labels, str) else list(labels)
    for spec in specs:
      for f in (sorted(glob.glob(spec)) if glob.has_magic(spec) else [spec]):
        if not os.path.isfile(f):
          continue   # `load_labels` names it next
        st = os.stat(f)
        h.update(json.dumps([os.path.abspath(f), st.st_size, st.st_mtime_ns]).encode())
    return "files:" + h.hexdigest()
  for k in sorted(labels):   # entry by entry: no second copy of a large label dict in memory
    h.update(json.dumps([k, labels[k]], sort_keys=True, default=lambda o: np.asarray(o).tolist()).encode())
  return "dict:" + h.hexdigest()


def source_record(src_dir: str, splits: Sequence[str], labels_sha256: str | None, clip_len: int, size: int) -> dict:
  """What a build depends on: each video's (size, mtime_ns) keyed "<split>/<name>", the labels'
  digest (`labels_digest`) and the clip shape. Stat only (no reading), so checking a large folder
  stays cheap."""
  videos = {}
  for split in splits:
    if not os.path.isdir(os.path.join(src_dir, split)):
      continue
    for p in sources.list_videos(src_dir, split):
      try:
        st = os.stat(p)
        videos[f"{split}/{os.path.basename(p)}"] = [st.st_size, st.st_mtime_ns]
      except OSError:   # dangling link / vanished file: listed (it is a counted skip) without a stat
        videos[f"{split}/{os.path.basename(p)}"] = None
  return {"src_dir": os.path.abspath(src_dir), "splits": sorted(s for s in splits
                                                                  if os.path.isdir(os.path.join(src_dir, s))),
          "clip_len": clip_len, "size": size, "labels_sha256": labels_sha256, "videos": videos}


def source_changes(old: Mapping | None, new: Mapping) -> list[str]:
  """Human-readable differences between two `source_record`s (empty: the same source)."""
  if old is None:
    return [f"no {SOURCE_FILE} (built by an older version or interrupted): its source is unknown"]
  out = []
  for key in ("splits", "clip_len", "size"):
    if old.get(key) != new.get(key):
      out.append(f"{key} {old.get(key)} -> {new.get(key)}")
  if old.get("labels_sha256") != new.get("labels_sha256"):
    out.append("labels changed" if old.get("labels_sha256") and new.get("labels_sha256") else
               ("labels added" if new.get("labels_sha256") else "labels removed"))
  a, b = old.get("videos", {}), new.get("videos", {})
  added, removed = sorted(b.keys() - a.keys()), sorted(a.keys() - b.keys())
  modified = sorted(k for k in a.keys() & b.keys() if a[k] != b[k])
  if added or removed or modified:
    eg = ", ".join([f"+{k}" for k in added[:2]] + [f"-{k}" for k in removed[:2]] + [f"~{k}" for k in modified[:2]])
    out.append(f"videos: {len(added)} added, {len(removed)} removed, {len(modified)} modified (e.g. {eg})")
  if old.get("src_dir") != new.get("src_dir") and out:
    out.append(f"src {old.get('src_dir')} -> {new.get('src_dir')}")
  return out


def _read_json(path: str):
  if not os.path.isfile(path):
    return None
  with open(path) as f:
    return json.load(f)


def _features(clip_len: int, size: int):
  f = tfds.features
  return f.FeaturesDict({
      "frames": f.Tensor(shape=(clip_len, size, size, 3), dtype=np.uint8, encoding=f.Encoding.BYTES),
      "video_path": f.Text(),
      "data_stats": f.Tensor(shape=(len(ops.STAT_KEYS),), dtype=np.int32),
      "has_labels": f.Scalar(dtype=np.int32),
      "gazing_pos": f.Tensor(shape=(None,), dtype=np.int64),
      "task_losses": f.Tensor(shape=(None,), dtype=np.float32),
      "label_lengths": f.Tensor(shape=(clip_len,), dtype=np.int32),
  })


def encode_one(path: str, labels: Mapping | None, clip_len: int, size: int) -> tuple[dict | None, dict[str, int]]:
  """Decode one video into a record dict, or (None, {skip reason: 1}). Numpy only; picklable for Beam."""
  try:
    frames, flags = sources.decode_clip(path, clip_len=clip_len, size=size)
  except sources.BadVideo as e:
    logging.warning("skipping %s (%s)", path, e)
    return None, {e.reason: 1}
  key = ops.relative_video_path(path)
  entry = labels.get(key) if labels is not None else None
  flags = dict(flags, ok=1)
  rec = {"frames": frames, "video_path": key, "data_stats": ops.stats_vector(**flags),
         "has_labels": np.int32(entry is not None), **sources.label_fields(entry, clip_len)}
  return rec, flags


class _Progress:
  """Logs done/total, clips/s and ETA about every `every_s` seconds."""

  def __init__(self, total: int, what: str, every_s: float = 5.0, sink=None):
    self.total, self.what, self.every_s, self.sink = total, what, every_s, sink or logging.info
    self.t0 = self.last = time.time()
    self.n = 0

  def step(self):
    self.n += 1
    now = time.time()
    if now - self.last >= self.every_s or self.n == self.total:
      rate = self.n / max(now - self.t0, 1e-9)
      eta = (self.total - self.n) / max(rate, 1e-9)
      self.sink(f"{self.what}: {self.n}/{self.total} clips, {rate:.1f} clips/s, ETA {eta:.0f}s")
      self.last = now


class AutogazeVideos(tfds.core.GeneratorBasedBuilder):
  """Video clips (+ gaze labels) from `<src_dir>/{train,val}/` packed into ArrayRecord shards."""

  VERSION = tfds.core.Version(DATASET_VERSION)
  RELEASE_NOTES = {"1.0.0": "First 16 frames, 224x224 uint8, official gaze labels (flat)."}

  def __init__(self, *, src_dir: str | None = None, labels: Mapping | None = None,
               splits: Sequence[str] = sources.SPLITS, clip_len: int = ops.CLIP_LEN, size: int = ops.SIZE,
               use_beam: bool = False, progress=None, **kwargs):
    self._src_dir, self._labels, self._splits = src_dir, labels, tuple(splits)
    self._clip_len, self._size, self._use_beam, self._progress = clip_len, size, use_beam, progress
    self.skip_counts: dict[str, dict[str, int]] = {}
    kwargs.setdefault("file_format", "array_record")
    super().__init__(**kwargs)

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls):
    # tfds derives this through `importlib_resources`, which is not installed with our pins; the
    # answer is simply this file (used to look for an optional checksums.tsv next to it).
    from etils import epath
    return epath.Path(__file__)

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=_features(self._clip_len, self._size),
                                 disable_shuffling=True, homepage="https://github.com/NVlabs/AutoGaze")

  def _split_generators(self, dl_manager):
    del dl_manager
    if not self._src_dir:
      raise ValueError("AutogazeVideos needs src_dir to build")
    gens = {}
    for split in self._splits:
      if os.path.isdir(os.path.join(self._src_dir, split)):
        gens[split] = self._generate_examples(split, sources.list_videos(self._src_dir, split))
    if not gens:
      raise ValueError(f"no split folder of {self._splits} under {self._src_dir}")
    return gens

  def _generate_examples(self, split: str, paths: list[str]):
    labels, clip_len, size = self._labels, self._clip_len, self._size
    if self._use_beam:
      beam = tfds.core.lazy_imports.apache_beam

      def process(ip):
        i, p = ip
        rec, flags = encode_one(p, labels, clip_len, size)
        for k, n in flags.items():
          beam.metrics.Metrics.counter(DATASET_NAME, f"{split}/{k}").inc(n)
        if rec is not None:
          # int key: with disable_shuffling tfds's Beam writer uses the key itself as the hashed
          # key for shard assignment (arithmetic on it), so a string key fails there.
          yield i, rec

      return beam.Create(list(enumerate(paths))) | beam.FlatMap(process)
    return self._local_examples(split, paths)

  def _local_examples(self, split, paths):
    counts = self.skip_counts.setdefault(split, {k: 0 for k in ops.STAT_KEYS})
    prog = _Progress(len(paths), f"{DATASET_NAME}/{split}", sink=self._progress)
    yielded = 0
    for i, p in enumerate(paths):
      rec, flags = encode_one(p, self._labels, self._clip_len, self._size)
      for k, n in flags.items():
        counts[k] += n
      prog.step()
      if rec is not None:
        yielded += 1
        yield f"{i:010d}", rec  # zero-padded: key order = folder order
    if not yielded:   # else tfds stops with a bare "No examples were yielded"
      skipped = {k: n for k, n in counts.items() if k.startswith("skip_") and n}
      raise NoReadableVideos(f"split {split!r}: no readable video in {os.path.join(self._src_dir, split)} "
                             f"({len(paths)} video files; skips: {skipped or 'none'})")


def build(src_dir: str, out_dir: str, *, labels=None, splits: Sequence[str] = sources.SPLITS,
          beam_runner=None, beam_options=None, progress=None, rebuild: bool = False) -> dict:
  """Build (or reuse) the ArrayRecord dataset of `src_dir` under `out_dir`; returns a report
  {split: {"records": n, **skip/repair counts}} also written to `<out_dir>/build_report.json`.

  labels: label dict or file path(s) (validated); joined by relative path and stored per record.
  beam_runner: a Beam runner (e.g. "DirectRunner" or an object) to build with Apache Beam.
  A dataset already in `out_dir` is reused (with the counts of the build that made it) only when
  its `build_source.json` matches `src_dir`, the labels and the splits; otherwise `StaleDataset`
  lists the changes, or with `rebuild` the old dataset is deleted and built again.
  """
  labels_sha256 = labels_digest(labels)   # before loading: of the files as they were read
  if isinstance(labels, (str, list, tuple)):
    labels = labels_lib.load_labels(labels)
  use_beam = beam_runner is not None
  b = AutogazeVideos(data_dir=out_dir, src_dir=src_dir, labels=labels, splits=splits, use_beam=use_beam,
                     progress=progress)
  record = source_record(src_dir, splits, labels_sha256, b._clip_len, b._size)
  source_file, report_file = os.path.join(out_dir, SOURCE_FILE), os.path.join(out_dir, "build_report.json")
  reused = os.path.exists(os.path.join(str(b.data_path), "dataset_info.json"))
  if reused:
    changes = source_changes(_read_json(source_file), record)
    if changes and not rebuild:
      raise StaleDataset(f"{out_dir} holds the {DATASET_NAME} dataset of another source: "
                         f"{'; '.join(changes)}. Rebuild it (--rebuild) or choose another --out")
    if changes or rebuild:
      logging.warning("rebuilding %s (%s)", out_dir, "; ".join(changes) or "asked to")
      reused = False
  mode = (tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS if reused else
          tfds.download.GenerateMode.REUSE_CACHE_IF_EXISTS)   # the latter deletes an existing dataset
  dl = tfds.download.DownloadConfig(beam_runner=beam_runner, beam_options=beam_options, download_mode=mode)
  if not reused:   # a build that dies midway must not leave an old source record next to new data
    for f in (source_file, report_file):
      if os.path.exists(f):
        os.remove(f)
  try:
    b.download_and_prepare(download_config=dl)
  except AssertionError as e:   # the Beam writer's empty split (the local path raises NoReadableVideos itself)
    if "No examples were yielded" not in str(e):
      raise
    raise NoReadableVideos(f"a split of {splits} under {src_dir} has no readable video (Beam build: see its "
                           "skip_* counters for the reasons)") from None
  previous = (_read_json(report_file) or {}) if reused else {}
  report = {}
  for split in b.info.splits.keys():
    ds = tfds.data_source(DATASET_NAME, data_dir=out_dir, split=split)
    idx_file = path_index_file(out_dir, split)
    paths = read_path_index(out_dir, split)
    if paths is None or len(paths) != len(ds):
      # One pass over the records (frames are raw bytes, so this is a fast parse) to list the keys.
      paths = [r["video_path"].decode() if isinstance(r["video_path"], bytes) else str(r["video_path"])
               for r in (ds[i] for i in range(len(ds)))]
      with open(idx_file + ".tmp", "w") as f:
        json.dump(paths, f)
      os.replace(idx_file + ".tmp", idx_file)
    # Reused: this run decoded nothing, so the skip/repair counts are those of the build that made it.
    report[split] = {**previous.get(split, {}), "records": len(ds), **b.skip_counts.get(split, {})}
    if labels is not None:
      report[split].update({k: len(v) for k, v in labels_lib.join_report(paths, labels).items()})
  write_json(report_file, report, indent=1)
  if not reused:
    write_json(source_file, record, indent=1)
  return report
