"""The labelling loop: this host's clips through the greedy search into its resumable shard.

Host h of n labels dataset indices h, h+n, ... in batches; the next batch decodes on a thread while the
current one is searched; an unreadable clip is recorded as skipped (with its error), never fatal. The
last host to finish merges the shards (`labels/shards.py`). The caller supplies `load(i)` and the keys
(`launch/label.py` builds them from a data source), so this module reads no dataset format itself.
"""
from __future__ import annotations

import concurrent.futures
import json
import logging
import os
from typing import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from autogaze_jax.evaluation.writers import Progress
from autogaze_jax.gaze.preprocess import normalize_on_device
from autogaze_jax.labels.greedy import GreedyLabeler
from autogaze_jax.labels.shards import append_batch, merge_shards, read_shard, shard_path

log = logging.getLogger(__name__)


def label_dataset(labeler: GreedyLabeler, load: Callable[[int], dict], keys: Sequence[str], workdir: str, *,
                  meta: Mapping, num_frames: int, clips_per_batch: int = 1,
                  process_index: int | None = None, process_count: int | None = None, log_every: int = 1,
                  stop_after_batches: int | None = None) -> dict | None:
  """Label this host's clips into its shard file (resuming), then merge once every shard is finished.

  load(i) -> {"frames": uint8 (>=num_frames,224,224,3)} or raises (the clip is then recorded as skipped
  with the error); keys[i]: the clip's label key (relative video path), unique. Host h of n labels
  indices h, h+n, ... in batches of `clips_per_batch`; randomness is seeded by the dataset index, so
  labels do not depend on the host count or batching. Returns the summary after merging (None when
  other hosts are still running or `stop_after_batches`, a test hook simulating a kill, stopped early).
  """
  if len(set(keys)) != len(keys):
    raise ValueError("clip keys (last three path components) are not unique; labels would collide")
  meta = {**meta, "tokens_per_frame": labeler.cfg.tokens_per_frame}
  pi = jax.process_index() if process_index is None else process_index
  pc = jax.process_count() if process_count is None else process_count
  path = shard_path(workdir, pi, pc)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  done = {r["i"] for r in read_shard(path, truncate=True)}
  mine = list(range(pi, len(keys), pc))
  todo = [i for i in mine if i not in done]
  log.info("host %d/%d: %d clips, %d already labelled, %d to go (variant %s)", pi, pc, len(mine),
           len(mine) - len(todo), len(todo), labeler.gcfg.variant)
  batches = [todo[s:s + clips_per_batch] for s in range(0, len(todo), clips_per_batch)]
  progress = Progress(len(mine), every=log_every, name="label", start_step=len(mine) - len(todo))
  norm = jax.jit(normalize_on_device)

  def fetch(idx):
    out = []
    for i in idx:
      try:
        fr = np.asarray(load(i)["frames"])[:num_frames]
        if fr.shape[0] < num_frames:
          raise ValueError(f"clip has {fr.shape[0]} frames < num_frames={num_frames}")
        out.append((i, fr, None))
      except Exception as e:  # noqa: BLE001 (any unreadable clip is recorded as skipped, never fatal)
        log.warning("skipping %s: %s", keys[i], e)
        out.append((i, None, f"{type(e).__name__}: {e}"))
    return out

  n_done = len(mine) - len(todo)
  batch_no = len(done)
  with concurrent.futures.ThreadPoolExecutor(1) as pool:  # decode the next batch while searching this one
    nxt = pool.submit(fetch, batches[0]) if batches else None
    for bi in range(len(batches)):
      items = nxt.result()
      nxt = pool.submit(fetch, batches[bi + 1]) if bi + 1 < len(batches) else None
      good = [(i, fr) for i, fr, err in items if err is None]
      res = {}
      if good:
        video = norm(jnp.asarray(np.stack([fr for _, fr in good])))
        for (i, _), lab in zip(good, labeler.label(video, [i for i, _ in good])):
          res[i] = lab
      recs = []
      for i, _, err in items:
        if err is not None:
          recs.append({"i": i, "key": keys[i], "skip": err})
        else:
          e = res[i].entry()
          recs.append({"i": i, "key": keys[i], **e, "reached": res[i].reached, "evals": res[i].evals})
      append_batch(path, recs, batch_no)
      batch_no += 1
      n_done += len(items)
      last = [r for r in recs if "task_losses" in r]
      shown = {"final_loss": np.mean([f[-1] for r in last for f in r["task_losses"]]),
               "patches/frame": np.mean([len(f) for r in last for f in r["gazing_pos"]])} if last else None
      progress(n_done, shown, force=bi % log_every == 0 or bi + 1 == len(batches))
      if stop_after_batches is not None and bi + 1 >= stop_after_batches:
        return None
  with open(path + ".done", "w") as f:
    json.dump({"clips": len(mine)}, f)
  if all(os.path.exists(shard_path(workdir, i, pc) + ".done") for i in range(pc)):
    return merge_shards(workdir, pc, meta, num_frames)
  log.info("host %d finished; the last host to finish merges the shards", pi)
  return None
