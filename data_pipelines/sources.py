"""Random-access clip sources for grain (`__len__` + `__getitem__`), numpy only (worker safe).

Item (one clip; all sources return the same dict):
  frames        uint8  (16, 224, 224, 3)  RGB, shortest edge resized to 224 (PIL bilinear) and
                                          center-cropped to a square (identity crop for square input)
  video_path    str                       join key: last 3 path components (`relative_video_path`)
  data_stats    int32  (len(STAT_KEYS),)  repair/skip counts for this item (ops.STAT_KEYS)
  and, when the source has labels (`labels.py` flat form):
  gazing_pos    int64  (N,)   task_losses float32 (N,)   label_lengths int32 (16,)

Bad videos never crash a run and never yield garbage: an unreadable file is skipped with a counted
reason and the item is taken from the next index (deterministic; counted as `substituted`), repairs
(short -> last frame repeated, non-square -> center crop, gray/alpha -> RGB) are counted too.
Counts travel inside items so they survive grain worker processes; `stats()` gives this process's.
"""
from __future__ import annotations

import json
import logging
import os
from typing import Mapping, Sequence

import numpy as np

from data_pipelines import labels as labels_lib
from data_pipelines import ops

VIDEO_EXTS = (".mp4", ".webm", ".mov", ".mkv")
SPLITS = ("train", "val")
# The ArrayRecord dataset `launch.build_dataset` writes (tfds name/version) and its per-split path index:
# defined on the reading side so the builder depends on the reader, never the other way round.
DATASET_NAME, DATASET_VERSION = "autogaze_videos", "1.0.0"


def path_index_file(data_dir: str, split: str, version: str = DATASET_VERSION) -> str:
  return os.path.join(data_dir, DATASET_NAME, version, f"video_paths-{split}.json")


def read_path_index(data_dir: str, split: str) -> list[str] | None:
  f = path_index_file(data_dir, split)
  if not os.path.isfile(f):
    return None
  with open(f) as fh:
    return json.load(fh)


class BadVideo(Exception):
  """Unusable video; `reason` is one of the `skip_*` keys of `ops.STAT_KEYS`."""

  def __init__(self, reason: str, detail: str = ""):
    assert reason in ops.STAT_INDEX, reason
    super().__init__(f"{reason}: {detail}")
    self.reason = reason


def _pix_fmt_flags(fmt) -> dict[str, int]:
  """Repairs implied by a decoded frame's pixel format (conversion to rgb24 is done by FFmpeg)."""
  if fmt is None:
    return {}
  comps = fmt.components
  flags = {}
  if any(c.is_alpha for c in comps):
    flags["converted_alpha"] = 1
  if not fmt.is_rgb and not fmt.has_palette and not any(c.is_chroma for c in comps):
    flags["converted_gray"] = 1
  return flags


def decode_clip(path: str, *, clip_len: int = ops.CLIP_LEN, size: int = ops.SIZE, frame_sample_rate: int = 1,
                rng: np.random.Generator | None = None) -> tuple[np.ndarray, dict[str, int]]:
  """Decode one clip with PyAV: -> (uint8 (clip_len, size, size, 3), repair counts).

  Frames follow the official sampling (`ops.sample_frame_indices`): by default the first
  `clip_len` decoded frames; decoding stops after the last needed frame (no decode-everything).
  With `rng`, the official random window (needs the frame count: from the container, else counted
  from demuxed packets, no decoding). Raises BadVideo with a counted reason.
  """
  try:   # a dangling symlink, a vanished or unreadable file is a bad video like any other
    nbytes = os.path.getsize(path)
    with open(path, "rb"):
      pass
  except OSError as e:
    raise BadVideo("skip_open_error", f"{path}: {e}") from e
  if nbytes == 0:
    raise BadVideo("skip_zero_length", path)
  import av  # local: keeps `import data_pipelines` light
  try:
    container = av.open(path)
  except Exception as e:  # noqa: BLE001  any container error = unreadable
    raise BadVideo("skip_open_error", f"{path}: {e}") from e
  try:
    if not container.streams.video:
      raise BadVideo("skip_no_video_stream", path)
    stream = container.streams.video[0]
    span = clip_len * frame_sample_rate
    seg_len = int(stream.frames or 0)
    if rng is not None and seg_len <= 0:
      seg_len = sum(1 for p in container.demux(stream) if p.size)
      container.seek(0)
    if seg_len > 0:
      idx = ops.sample_frame_indices(clip_len, seg_len, frame_sample_rate, rng)
    else:  # unknown count, first-frames sampling: indices of the first window; shortfall padded below
      idx = ops.sample_frame_indices(clip_len, span + 1, frame_sample_rate)
    wanted = set(int(i) for i in idx)
    last = int(idx[-1])
    got: dict[int, np.ndarray] = {}
    flags: dict[str, int] = {}
    try:
      for i, frame in enumerate(container.decode(stream)):
        if i > last:
          break
        if i in wanted:
          flags.update(_pix_fmt_flags(frame.format))
          got[i] = frame.to_ndarray(format="rgb24")
    except BadVideo:
      raise
    except Exception as e:  # noqa: BLE001
      raise BadVideo("skip_decode_error", f"{path}: {e}") from e
  finally:
    container.close()
  if not got:
    raise BadVideo("skip_no_frames", path)
  shapes = {f.shape for f in got.values()}
  if len(shapes) != 1 or min(next(iter(shapes))[:2]) < 1:
    raise BadVideo("skip_bad_frames", f"{path}: frame shapes {sorted(shapes)}")
  # Indices past the decodable end (truncated or short file) repeat the last decoded frame, as
  # the official edge-padded indices + `process_video_frames` do.
  present = [int(i) for i in idx if int(i) in got]
  frames = np.stack([got[i] for i in present])
  frames, _ = ops.pad_or_trim(frames, clip_len)
  if len(set(present)) < clip_len:  # short video (edge-padded indices) or truncated stream
    flags["padded_short"] = 1
  h, w = frames.shape[1:3]
  if h != w:
    flags["cropped_non_square"] = 1
  return ops.resize_short_center_crop(frames, size), flags


def list_videos(roots: str | Sequence[str], split: str, exts: Sequence[str] = VIDEO_EXTS) -> list[str]:
  """Video files of `<root>/<split>/` for each root (comma-separated string or list), each root's
  names sorted (the official order), roots in the given order."""
  if isinstance(roots, str):
    roots = [r.strip() for r in roots.split(",") if r.strip()]
  out = []
  for r in roots:
    d = os.path.join(r, split)
    if not os.path.isdir(d):
      raise ValueError(f"video folder {d!r} does not exist or is not a directory")
    out += [os.path.join(d, f) for f in sorted(os.listdir(d)) if f.lower().endswith(tuple(exts))]
  return out


class _Counting:
  """Per-process repair/skip counters shared by the sources."""

  def _init_counts(self):
    self._counts = np.zeros((len(ops.STAT_KEYS),), np.int64)

  def stats(self) -> dict[str, int]:
    """Counts made in this process (the pipeline iterator aggregates counts from all workers)."""
    return ops.stats_dict(self._counts)


class VideoFolderSource(_Counting):
  """Official video-folder dataset: `<root>/<split>/*.{mp4,webm,mov,mkv}`, decoded on access.

  labels: a label dict (`labels.load_labels`), label file path(s), or None. With labels and
  `require_labels` (default: True when labels are given, i.e. an NTP job) videos without labels are
  dropped; both join failures are counted in `join_stats` and logged.
  """

  def __init__(self, roots: str | Sequence[str], split: str = "train", *, labels=None,
               require_labels: bool | None = None, clip_len: int = ops.CLIP_LEN, size: int = ops.SIZE,
               frame_sample_rate: int = 1, random_sample_frame: bool = False, seed: int = 0,
               exts: Sequence[str] = VIDEO_EXTS, max_substitutions: int = 64):
    if split not in SPLITS:
      raise ValueError(f"split {split!r} not in {SPLITS}")
    self.paths = list_videos(roots, split, exts)
    self.clip_len, self.size, self.frame_sample_rate = clip_len, size, frame_sample_rate
    self.random_sample_frame, self.seed, self.max_substitutions = random_sample_frame, seed, max_substitutions
    if isinstance(labels, (str, list, tuple)):
      labels = labels_lib.load_labels(labels, num_frames=clip_len)
    self.labels: Mapping | None = labels
    self.join_stats = {"videos_without_labels": 0, "labels_without_video": 0}
    if labels is not None:
      rep = labels_lib.join_report([ops.relative_video_path(p) for p in self.paths], labels)
      self.join_stats = {k: len(v) for k, v in rep.items()}
      if any(self.join_stats.values()):
        logging.warning("label join for %s/%s: %s (e.g. %s)", roots, split, self.join_stats,
                        {k: v[:3] for k, v in rep.items()})
      if require_labels is None or require_labels:
        self.paths = [p for p in self.paths if ops.relative_video_path(p) in labels]
    if not self.paths:
      raise ValueError(f"no videos in {roots} split {split!r}" + (" with labels" if labels is not None else ""))
    self._init_counts()

  def __len__(self) -> int:
    return len(self.paths)

  def __repr__(self):
    return f"VideoFolderSource(n={len(self)}, labels={self.labels is not None})"

  def load(self, index: int) -> dict:
    """Decode the video at `index` exactly (raises BadVideo); no substitution."""
    path = self.paths[index]
    rng = np.random.default_rng([self.seed, index]) if self.random_sample_frame else None
    frames, flags = decode_clip(path, clip_len=self.clip_len, size=self.size,
                                frame_sample_rate=self.frame_sample_rate, rng=rng)
    item = {"frames": frames, "video_path": ops.relative_video_path(path),
            "data_stats": ops.stats_vector(ok=1, **flags)}
    if self.labels is not None:
      item.update(label_fields(self.labels.get(item["video_path"]), self.clip_len))
    return item

  def __getitem__(self, index: int) -> dict:
    index = int(index) % len(self)
    skipped = np.zeros((len(ops.STAT_KEYS),), np.int32)
    for k in range(min(self.max_substitutions, len(self))):
      j = (index + k) % len(self)
      try:
        item = self.load(j)
      except BadVideo as e:
        logging.warning("skipping video %s (%s)", self.paths[j], e)
        skipped[ops.STAT_INDEX[e.reason]] += 1
        continue
      if k:
        skipped[ops.STAT_INDEX["substituted"]] += 1
      item["data_stats"] = item["data_stats"] + skipped
      self._counts += item["data_stats"]
      return item
    self._counts += skipped
    raise RuntimeError(f"{self.max_substitutions} consecutive unreadable videos from {self.paths[index]}: "
                       f"{ops.stats_dict(skipped)}; the dataset is broken")


def label_fields(entry: Mapping | None, clip_len: int = ops.CLIP_LEN) -> dict[str, np.ndarray]:
  """Flat label fields of an item; empty (all lengths 0) when the video has no label."""
  if entry is None:
    return {"gazing_pos": np.zeros((0,), np.int64), "task_losses": np.zeros((0,), np.float32),
            "label_lengths": np.zeros((clip_len,), np.int32)}
  return labels_lib.flatten_entry(entry)


class ArrayRecordSource(_Counting):
  """Clips packed by `tfds_builder` (ArrayRecord), read with `tfds.data_source` (no TensorFlow).

  data_dir: the `--out` of `launch.build_dataset`. Labels stored at build time are returned as is;
  `labels=` joins (and with `require_labels`, filters) by `video_path` at read time instead, using
  the per-split path index written at build time.
  """

  def __init__(self, data_dir: str, split: str = "train", *, name: str | None = None, labels=None,
               require_labels: bool | None = None, clip_len: int = ops.CLIP_LEN):
    import tensorflow_datasets as tfds
    self.data_dir, self.split, self.clip_len = data_dir, split, clip_len
    self._ds = tfds.data_source(name or DATASET_NAME, data_dir=data_dir, split=split)
    self._index = np.arange(len(self._ds))
    if isinstance(labels, (str, list, tuple)):
      labels = labels_lib.load_labels(labels, num_frames=clip_len)
    self.labels = labels
    self.join_stats = {"videos_without_labels": 0, "labels_without_video": 0}
    if labels is not None:
      paths = self.paths()
      rep = labels_lib.join_report(paths, labels)
      self.join_stats = {k: len(v) for k, v in rep.items()}
      if any(self.join_stats.values()):
        logging.warning("label join for %s/%s: %s", data_dir, split, self.join_stats)
      if require_labels is None or require_labels:
        self._index = np.asarray([i for i, p in enumerate(paths) if p in labels], np.int64)
    if len(self._index) == 0:
      raise ValueError(f"no records in {data_dir} split {split!r}")
    self._init_counts()

  def paths(self) -> list[str]:
    """`video_path` of every record in storage order (from the build's index file, else a scan)."""
    return read_path_index(self.data_dir, self.split) or [self._read(i)["video_path"] for i in range(len(self._ds))]

  def __len__(self) -> int:
    return len(self._index)

  def __repr__(self):
    return f"ArrayRecordSource({self.data_dir!r}, {self.split!r}, n={len(self)})"

  def _read(self, i: int) -> dict:
    r = self._ds[int(i)]
    vp = r["video_path"]
    item = {"frames": r["frames"], "video_path": vp.decode() if isinstance(vp, bytes) else str(vp),
            "data_stats": np.asarray(r["data_stats"], np.int32)}
    if bool(r["has_labels"]):
      item.update(gazing_pos=np.asarray(r["gazing_pos"], np.int64), task_losses=np.asarray(r["task_losses"], np.float32),
                  label_lengths=np.asarray(r["label_lengths"], np.int32))
    return item

  def __getitem__(self, index: int) -> dict:
    item = self._read(self._index[int(index) % len(self)])
    if self.labels is not None:
      item.update(label_fields(self.labels.get(item["video_path"]), self.clip_len))
    self._counts += item["data_stats"]
    return item

