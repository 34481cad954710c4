"""grain input pipeline: per-host shard -> seeded shuffle (reshuffled each epoch) -> repeat ->
optional augmentation/views -> batch + label collation -> worker processes.

    source = sources.VideoFolderSource(root, "train", labels=labels_path)   # or ArrayRecordSource
    it = make_iterator(source, global_batch_size=32, seed=cfg.seed, num_workers=2,
                       labels="fixed", max_tokens_per_frame=K)
    batch = next(it)                      # numpy, this host's B = global_batch_size / process_count
    batch = autogaze_jax.core.sharding.shard_batch(batch, mesh)   # the trainer places it on the mesh
    ckpt: it.get_state() / it.set_state(...)   (orbax: grain.checkpoint.CheckpointSave(it))

Batch (this host's B clips):
  frames          uint8   (B, 16, 224, 224, 3)  normalise late (`gaze.preprocess.normalize_on_device` or `views=True`)
  video_path      str     (B,)                   relative keys (host only, never sent to devices)
  data_stats      int32   (B, len(STAT_KEYS))    repairs/skips behind each item (summed in `stats()`)
  video, video_for_task  float32 (B, 16, 3, 224, 224)   only with `views=True`
  with labels="official" | "fixed" (`labels.py`): gazing_pos int64 (B, S), task_losses float32 (B, S),
  if_padded_gazing bool (B, S), num_gazing_each_frame int64 (16,), S = sum(num_gazing_each_frame).
  "official" = the reference collation (S depends on the batch; single host only for jit);
  "fixed" = S = 16 * (max_tokens_per_frame + 1), the same on every batch and host.

Resume: the iterator state (grain's, plus the running stats) is a small JSON blob; restoring it into
a freshly built pipeline with the same arguments yields exactly the batches that would have come
next. Worker transforms are numpy only (JAX in forked workers can deadlock).
"""
from __future__ import annotations

import dataclasses
import json
import logging
from typing import Any, Mapping, Sequence

import grain
import numpy as np

from data_pipelines import labels as labels_lib
from data_pipelines import ops
from data_pipelines import sources, synthetic

LABEL_MODES = (None, "official", "fixed")
AUGMENTATIONS = ("random_resized_crop", "flip")
_LABEL_KEYS = ("gazing_pos", "task_losses", "label_lengths")


def host_shard(n: int, process_index: int, process_count: int) -> slice:
  """Strided shard of `range(n)` for one host; the tail `n % process_count` is dropped so every host
  gets the same number of items (hosts must run the same number of steps)."""
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} not in [0, {process_count})")
  usable = (n // process_count) * process_count
  if usable == 0:
    raise ValueError(f"{n} items cannot be split over {process_count} hosts")
  return slice(process_index, usable, process_count)


@dataclasses.dataclass
class Collate:
  """grain batch_fn: stack item fields; collate labels officially or to a fixed capacity.

  Under `mp_prefetch` grain calls `enable_shared_memory_output`: numeric fields are then stacked
  straight into shared memory, so a 16x224x224x3 uint8 batch is not pickled through a pipe."""
  labels: str | None = None
  max_tokens_per_frame: int | None = None
  shared_memory: bool = False

  def enable_shared_memory_output(self) -> None:
    self.shared_memory = True

  def _stack(self, vals):
    first = np.asarray(vals[0])
    if not self.shared_memory or first.dtype.kind not in "biuf" or first.nbytes * len(vals) < (1 << 16):
      return np.stack(vals)
    from grain.multiprocessing import SharedMemoryArray
    return np.stack(vals, out=SharedMemoryArray((len(vals),) + first.shape, dtype=first.dtype))

  def __call__(self, items: Sequence[Mapping[str, Any]]) -> dict[str, np.ndarray]:
    out = {}
    for k in items[0]:
      if k in _LABEL_KEYS:
        continue
      vals = [it[k] for it in items]
      out[k] = np.asarray(vals) if k == "video_path" else self._stack(vals)
    if self.labels is not None:
      if any(k not in it for it in items for k in _LABEL_KEYS):
        raise ValueError("labels requested but an item has no label fields (source built without labels?)")
      if self.labels == "official":
        out.update(labels_lib.collate_official(items))
      else:
        out.update(labels_lib.collate_fixed(items, self.max_tokens_per_frame))
    return out


@dataclasses.dataclass(frozen=True)
class Augment:
  """grain RandomMap: same random crop/flip for all frames of a clip (both views derive from it)."""
  ops_: tuple[str, ...]
  size: int = ops.SIZE

  def __call__(self, item, rng: np.random.Generator):
    f = item["frames"]
    if "random_resized_crop" in self.ops_:
      f = ops.random_resized_crop(f, rng, size=self.size)
    if "flip" in self.ops_:
      f = ops.random_flip(f, rng)
    return {**item, "frames": f}


def _add_views(item):
  return {**item, **ops.views(item["frames"])}


def make_dataset(source, *, global_batch_size: int, seed: int = 0, shuffle: bool = True,
                 num_epochs: int | None = None, drop_remainder: bool = True, labels: str | None = None,
                 max_tokens_per_frame: int | None = None, augment: str | None = None, views: bool = False,
                 num_workers: int = 0, worker_buffer_size: int = 2, read_threads: int = 2,
                 read_buffer: int | None = None, process_index: int | None = None,
                 process_count: int | None = None) -> grain.IterDataset:
  """The grain graph over a random-access `source` (see module docstring for the batch format).

  global_batch_size: split evenly over `process_count` hosts (default: jax's process index/count).
  num_epochs: None = repeat forever (each epoch reshuffled with a seed derived from `seed`).
  augment: None or "+"-joined names from AUGMENTATIONS (train only; the recipes use none).
  num_workers: grain worker processes (0 = in-process); each keeps `worker_buffer_size` batches ready.
  read_threads / read_buffer: threads reading items ahead in each process, and how many items they
    may hold (default 2 batches). grain's defaults (16 threads, 500 items = 1.2 GB of clips) thrash a
    small machine and multiply by the number of workers.
  """
  if process_index is None or process_count is None:
    import jax  # main process only; workers never import it through this module's transforms
    process_index, process_count = jax.process_index(), jax.process_count()
  if global_batch_size % process_count:
    raise ValueError(f"global_batch_size {global_batch_size} not divisible by {process_count} hosts")
  if labels not in LABEL_MODES:
    raise ValueError(f"labels={labels!r}: choose from {LABEL_MODES}")
  if labels == "fixed" and not max_tokens_per_frame:
    raise ValueError("labels='fixed' needs max_tokens_per_frame")
  aug = tuple(a for a in (augment or "").split("+") if a)
  bad = [a for a in aug if a not in AUGMENTATIONS]
  if bad:
    raise ValueError(f"unknown augmentation {bad}: choose from {AUGMENTATIONS}")
  sl = host_shard(len(source), process_index, process_count)
  if sl.stop < len(source):
    logging.info("dropping %d of %d items so %d hosts get equal shards", len(source) - sl.stop, len(source),
                 process_count)
  ds = grain.MapDataset.source(source)[sl]
  if shuffle:
    ds = ds.shuffle(seed=seed)
  ds = ds.repeat(num_epochs)
  if aug:
    ds = ds.random_map(Augment(aug), seed=seed + 1)
  if views:
    ds = ds.map(_add_views)
  per_host = global_batch_size // process_count
  it = ds.to_iter_dataset(grain.ReadOptions(num_threads=read_threads,
                                            prefetch_buffer_size=read_buffer or 2 * per_host))
  it = it.batch(per_host, drop_remainder=drop_remainder,
                batch_fn=Collate(labels, max_tokens_per_frame))
  if num_workers > 0:
    from absl import flags
    if not flags.FLAGS.is_parsed():  # grain reads its absl flags in mp_prefetch; defaults when not a CLI
      flags.FLAGS.mark_as_parsed()
    it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers,
                                                     per_worker_buffer_size=worker_buffer_size))
  return it


class DataIterator:
  """Checkpointable iterator over a `make_dataset` graph; sums `data_stats` of all batches served.

  `get_state()` -> bytes (JSON: grain state + stats) and `set_state(bytes)` follow the protocol of
  `grain.checkpoint.CheckpointHandler`, so orbax saves it with `grain.checkpoint.CheckpointSave(it)`
  (one file per host) next to the train state.
  """

  def __init__(self, dataset: grain.IterDataset):
    self._ds = dataset
    self._it = iter(dataset)
    self._counts = np.zeros((len(ops.STAT_KEYS),), np.int64)
    self.batches = 0

  def __iter__(self):
    return self

  def __next__(self) -> dict:
    b = next(self._it)
    self._counts += b["data_stats"].sum(0)
    self.batches += 1
    return b

  def get_state(self) -> bytes:
    return json.dumps({"grain": self._it.get_state(), "batches": self.batches,
                       "stats": ops.stats_dict(self._counts)}).encode()

  def set_state(self, state: bytes | str | Mapping) -> None:
    if isinstance(state, (bytes, str)):
      state = json.loads(state)
    self._it.set_state(state["grain"])
    self.batches = int(state["batches"])
    self._counts = np.asarray([state["stats"].get(k, 0) for k in ops.STAT_KEYS], np.int64)

  def start_prefetch(self) -> None:
    """Called by grain's orbax handler after restore; grain starts prefetch lazily, so a no-op."""
    if hasattr(self._it, "start_prefetch"):
      self._it.start_prefetch()

  def stats(self) -> dict[str, int]:
    """Repair/skip counts of every item served so far (all workers, restored across resumes)."""
    return ops.stats_dict(self._counts)

  def log_stats(self) -> dict[str, int]:
    s = self.stats()
    bad = {k: v for k, v in s.items() if k != "ok" and v}
    (logging.warning if bad else logging.info)("data stats after %d batches: %s", self.batches, s)
    return s


def make_iterator(source, **kwargs) -> DataIterator:
  """`DataIterator(make_dataset(source, **kwargs))`."""
  return DataIterator(make_dataset(source, **kwargs))


SOURCES = ("synthetic", "folder", "arrayrecord")


def make_source(kind: str, path: str | None = None, split: str = "train", *, labels=None,
                require_labels: bool | None = None, synthetic_num_clips: int = 200, seed: int = 0,
                cache_dir: str | None = None):
  """Source from config strings. kind: "synthetic" (embedded default, generated on first use into
  `cache_dir`), "folder" (`path` = comma-separated roots with train/ val/), "arrayrecord" (`path` =
  the build output dir)."""
  if kind == "synthetic":
    root = synthetic.ensure_synthetic(synthetic.SyntheticConfig(num_clips=synthetic_num_clips, seed=seed), cache_dir)
    return sources.VideoFolderSource(root, split, labels=labels, require_labels=require_labels)
  if kind == "folder":
    return sources.VideoFolderSource(path, split, labels=labels, require_labels=require_labels)
  if kind == "arrayrecord":
    return sources.ArrayRecordSource(path, split, labels=labels, require_labels=require_labels)
  raise ValueError(f"unknown data source {kind!r}: choose from {SOURCES}")
