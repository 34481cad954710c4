"""Gaze at scale: one video or a whole dataset streamed into on-disk gaze records (docs/gaze_format.md).

`gaze_video` streams one video (`AutoGaze.gaze_stream`) into a records dir chunk by chunk, optionally
embedding each chunk's gazed patches with the gazed ViT (`VitEmbedder`) and drawing a bounded overview
(`Overview`). `gaze_dataset` runs this host's share of a dataset (videos h, h+n, ... of n hosts) with the
label shards' commit-line scheme (`labels/shards.py`): one committed line per finished or skipped video,
so a restart skips finished videos, drops a torn last line and redoes the video that was in flight;
the last host to finish writes summary.json. Nothing here holds a whole video or all tiles' results.
This module sits at the top of the library beside api.py: it joins gaze/, vit/, labels/ and evaluation/.
"""
from __future__ import annotations

import functools
import json
import logging
import os
import shutil
import time
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from autogaze_jax.core.patches import ScaleLayout
from autogaze_jax.evaluation import viz
from autogaze_jax.evaluation.writers import _fmt
from autogaze_jax.gaze.generate import check_ratio, check_threshold
from autogaze_jax.core.atomic_files import write_json
from autogaze_jax.gaze.records import GazeWriter
from autogaze_jax.gaze.stream_video import REASONS, GazeEngine, VideoEnd, VideoError
from autogaze_jax.gaze.tiling import RESIZE_MODES, tile_video
from autogaze_jax.labels.shards import append_batch, read_shard
from autogaze_jax.vit.model import capacity_for_ratio, forward, pack_gaze
from autogaze_jax.vit.pipeline import siglip_normalize

log = logging.getLogger(__name__)

SHARD_DIR, VIDEOS_DIR, SUMMARY_NAME = "shards", "videos", "summary.json"


class GazeOutputError(OSError):
  """The records could not be written (full disk, read-only dir); names the dir and what is kept."""


class StopRequested(Exception):
  """Raised by the `stop_after_chunks` test hook: the run stops as a kill would (no cleanup)."""


# ---------------------------------------------------------------- downstream ViT, per chunk
class VitEmbedder:
  """The gazed ViT on each chunk's tiles as they are gazed: the canvas tiles (SigLIP-normalised) with
  every tile's gaze packed into `capacity` slots per frame (`vit.model.pack_gaze`, as `gaze_then_vit`),
  `batch_tiles` tiles per call (the last call padded: one program shape), pooling over real slots."""

  def __init__(self, vit, gaze_cfg, gazing_ratio, capacity: int | None = None, batch_tiles: int | None = None):
    lay = vit.cfg.layout
    if ScaleLayout.from_gaze_config(gaze_cfg) != lay:
      raise ValueError(f"the gaze model's id space {ScaleLayout.from_gaze_config(gaze_cfg)} differs from the ViT's "
                       f"{lay}; use a ViT with scales {tuple(gaze_cfg.scales)}")
    self.vit, self.lay = vit, lay
    self.capacity = int(capacity or capacity_for_ratio(gazing_ratio, lay.tokens_per_frame))
    self.batch_tiles = batch_tiles
    self.kept_tokens = self.vit_tokens = self.full_tokens = self.tiles = 0
    self.seconds = 0.0

  def __call__(self, chunk: dict) -> dict:
    tl = chunk["tiling"]
    tiles, _ = tile_video(siglip_normalize(chunk["frames"]), tl.clip_len, tl.tile)
    packed = [pack_gaze(t["gazing_pos"], t["if_padded_gazing"], t["num_gazing_each_frame"], tl.clip_len,
                        self.capacity) for t in chunk["tiles"]]
    ids = np.concatenate([p[0] for p in packed])
    valid = ~np.concatenate([p[1] for p in packed])
    n = tiles.shape[0]
    bt = self.batch_tiles or n
    hidden, pooled = [], []
    t0 = time.perf_counter()
    for s in range(0, n, bt):
      sel = np.minimum(np.arange(s, s + bt), n - 1)
      out = forward(self.vit.graphdef, self.vit.params, jnp.asarray(tiles[sel]), jnp.asarray(ids[sel]),
                    jnp.asarray(~valid[sel]), None, frame_slots=self.capacity, pool_valid_only=True)
      real = min(bt, n - s)
      hidden.append(np.asarray(out["last_hidden_state"])[:real])
      if out["pooler_output"] is not None:
        pooled.append(np.asarray(out["pooler_output"])[:real])
    self.seconds += time.perf_counter() - t0
    hidden = np.concatenate(hidden)
    res = {"vit_tokens": np.concatenate([hidden[i][valid[i]] for i in range(n)]).astype(np.float32),
           "vit_num_tokens": valid.sum(1).astype(np.int32)}
    if pooled:
      res["vit_pooler"] = np.concatenate(pooled).astype(np.float32)
    self.tiles += n
    self.kept_tokens += int(valid.sum())
    self.vit_tokens += int(ids.size)
    self.full_tokens += n * tl.clip_len * self.lay.tokens_per_scale[-1]
    return res

  def meta(self) -> dict:
    return {"capacity": self.capacity, "dim": int(self.vit.cfg.hidden_size)}


# ---------------------------------------------------------------- overview picture / GIF
class Overview:
  """A bounded sample of the canvas frames with the gazed footprints: the first `png_frames` frames
  (the PNG) and an evenly spaced sample of at most `gif_frames` (the GIF: every `stride`-th frame, the
  stride doubling whenever the sample is full). Frames larger than `max_side` are scaled down."""

  def __init__(self, png_frames: int = 16, gif_frames: int = 64, max_side: int = 640):
    self.png_frames, self.gif_frames, self.max_side = png_frames, gif_frames, max_side
    self.png: list[tuple[np.ndarray, np.ndarray]] = []
    self.gif: dict[int, np.ndarray] = {}
    self.stride = 1

  def _small(self, img: np.ndarray) -> np.ndarray:
    h, w = img.shape[:2]
    s = self.max_side / max(h, w)
    if s >= 1:
      return img
    from PIL import Image
    return np.asarray(Image.fromarray(img).resize((max(1, round(w * s)), max(1, round(h * s))), Image.BILINEAR))

  def _overlay(self, chunk: dict, j: int) -> np.ndarray:
    frame = chunk["frames"][j]
    h, w = frame.shape[:2]
    tl = chunk["tiling"]
    foot = np.zeros((tl.nh * tl.tile, tl.nw * tl.tile), bool)
    for m in chunk["masks"]:
      g = m.shape[1] // tl.nh
      k = tl.tile // g
      foot |= np.repeat(np.repeat(m[j], k, 0), k, 1)
    foot = foot[:h, :w]
    dim = np.round(frame.astype(np.float32) * viz.DIM).astype(np.uint8)
    return np.where(foot[..., None], frame, dim)

  def add(self, chunk: dict) -> None:
    for j in range(chunk["num_frames"]):
      t = chunk["frame_start"] + j
      want_png, want_gif = t < self.png_frames, t % self.stride == 0
      if not (want_png or want_gif):
        continue
      pair = np.concatenate([self._small(chunk["frames"][j]), self._small(self._overlay(chunk, j))], axis=1)
      if want_png:
        half = pair.shape[1] // 2
        self.png.append((pair[:, :half], pair[:, half:]))
      if want_gif:
        self.gif[t] = pair
        if len(self.gif) > self.gif_frames:
          self.stride *= 2
          self.gif = {k: v for k, v in self.gif.items() if k % self.stride == 0}

  def write(self, png_path: str | None, gif_path: str | None) -> None:
    if png_path:
      viz.save_png_grid(png_path, [np.stack([a for a, _ in self.png]), np.stack([b for _, b in self.png])],
                        ["original", "gaze"])
    if gif_path:
      viz.save_gif(gif_path, np.stack([self.gif[k] for k in sorted(self.gif)]))


def video_meta(end, label: str, gazing_ratio, task_loss_requirement, resize: str, kept_sum: float,
               vit: VitEmbedder | None) -> dict:
  """index.json of a finished video (`stream_video.VideoEnd`): deterministic, no timings."""
  tl = end.tiling
  return {"video": label, "frames": end.frames, "input_size": list(end.input_size),
          "canvas_size": list(end.canvas_size), "resize": resize, "clip_len": tl.clip_len, "tile": tl.tile,
          "temporal": tl.nt, "rows": tl.nh, "cols": tl.nw, "num_tiles": tl.num_tiles,
          "gazing_ratio": gazing_ratio, "task_loss_requirement": task_loss_requirement,
          "kept_ratio": kept_sum / end.frames, "truncated_at_frame": end.truncated_at,
          "decode_error": end.error, "vit": vit.meta() if vit is not None else None}


# ---------------------------------------------------------------- one video
def gaze_video(model, source, out_dir: str, *, gazing_ratio=0.75, task_loss_requirement=0.7,
               resize: str = "native", batch_tiles: int | None = None, max_frames: int | None = None,
               name: str | None = None, vit: VitEmbedder | None = None, overview: Overview | None = None,
               sharding=None, stop_after_chunks: Callable[[], bool] | None = None, log_every_s: float = 30.0,
               kept_per_frame: list | None = None, **gen_kw) -> dict:
  """Stream one video into the records dir `out_dir` (GazeWriter); returns the index.json dict.

  Raises VideoError (unreadable: nothing usable decoded), GazeOutputError (a write failed: the chunk
  files written so far are kept, index.json is not written), ValueError (bad settings)."""
  stream = model.gaze_stream(source, gazing_ratio, task_loss_requirement, resize=resize, batch_tiles=batch_tiles,
                             max_frames=max_frames, sharding=sharding, **gen_kw)
  label = name or stream.reader.name
  try:
    writer = GazeWriter(out_dir)
  except OSError as e:
    raise GazeOutputError(f"cannot create {out_dir}: {e.strerror or e}") from None
  t0 = last_log = time.perf_counter()
  kept_sum = 0.0
  for chunk in stream:
    try:
      writer.write_chunk(chunk, vit(chunk) if vit is not None else None)
    except OSError as e:
      free = shutil.disk_usage(out_dir).free if os.path.isdir(out_dir) else 0
      raise GazeOutputError(f"writing chunk {chunk['chunk']} of {label} to {out_dir}: {e.strerror or e} "
                            f"({free / 2**20:.1f} MiB free); the {writer.chunks} chunk files written before it "
                            f"(frames 0..{chunk['frame_start'] - 1}) are kept") from None
    kept_sum += float(np.sum(chunk["kept_ratio_per_frame"]))
    if kept_per_frame is not None:
      kept_per_frame += [float(x) for x in chunk["kept_ratio_per_frame"]]
    if overview is not None:
      overview.add(chunk)
    now = time.perf_counter()
    if now - last_log >= log_every_s:
      last_log = now
      rate = stream.tiles_done / (now - t0)
      total = stream.reader.frame_count_hint
      seen = chunk["frame_start"] + chunk["num_frames"]
      eta = (total - seen) / (seen / (now - t0)) if total else float("nan")
      log.info("[gaze] %s: frame %d%s | %.1f tiles/s | ETA %s", label, seen, f"/{total}" if total else "",
               rate, _fmt(eta))
    del chunk
    if stop_after_chunks is not None and stop_after_chunks():
      raise StopRequested(label)
  meta = video_meta(stream.end, label, gazing_ratio, task_loss_requirement, resize, kept_sum, vit)
  try:
    writer.finish(meta)
  except OSError as e:
    raise GazeOutputError(f"writing {out_dir}/index.json: {e.strerror or e}; the {writer.chunks} chunk files are "
                          "kept") from None
  meta["seconds"] = time.perf_counter() - t0   # not in index.json: the records stay byte-deterministic
  meta["tiles_per_s"] = meta["num_tiles"] / max(meta["seconds"], 1e-9)
  return meta


# ---------------------------------------------------------------- a dataset, per host
def shard_file(out: str, process_index: int, process_count: int) -> str:
  return os.path.join(out, SHARD_DIR, f"gaze-{process_index:05d}-of-{process_count:05d}.jsonl")


def video_dir(out: str, key: str) -> str:
  return os.path.join(out, VIDEOS_DIR, key)


def gaze_dataset(model, keys: Sequence[str], source: Callable[[int], object], out: str, *,
                 process_index: int | None = None, process_count: int | None = None,
                 vit: VitEmbedder | None = None, stop_after_chunks: int | None = None, **video_kw) -> dict | None:
  """Gaze this host's videos (indices h, h+n, ...) into out/videos/<key>/ and commit one line per video
  to out/shards/gaze-h-of-n.jsonl; skip the committed ones of an earlier run. `source(i)` -> what
  `gaze_stream` takes (a path, array, frame iterable) or raises VideoError. An unreadable video is a
  committed skip with its reason, never a crash; a write failure stops the run (GazeOutputError), the
  committed videos kept. Returns the merged summary from the last host to finish (None otherwise, or
  when `stop_after_chunks`, a test hook simulating a kill, stopped the run)."""
  if len(set(keys)) != len(keys):
    raise ValueError("video keys are not unique; their records would collide")
  # settings are checked once here: a bad one is an error, not every video skipped
  if video_kw.get("gazing_ratio") is not None:
    check_ratio(video_kw["gazing_ratio"], 1)
  check_threshold(video_kw.get("task_loss_requirement"))
  if video_kw.get("resize", "native") not in RESIZE_MODES:
    raise ValueError(f"resize={video_kw['resize']!r}: choose one of {', '.join(RESIZE_MODES)}")
  pi = jax.process_index() if process_index is None else process_index
  pc = jax.process_count() if process_count is None else process_count
  path = shard_file(out, pi, pc)
  try:
    os.makedirs(os.path.dirname(path), exist_ok=True)
  except OSError as e:
    raise GazeOutputError(f"--out {out!r} is not writable: {e.strerror or e}") from None
  done = {r["i"] for r in read_shard(path, truncate=True)}
  mine = list(range(pi, len(keys), pc))
  todo = [i for i in mine if i not in done]
  log.info("host %d/%d: %d videos, %d already done, %d to go", pi, pc, len(mine), len(mine) - len(todo), len(todo))
  settings = {k: video_kw.pop(k) for k in ("gazing_ratio", "task_loss_requirement") if k in video_kw}
  ratio, thr = settings.get("gazing_ratio", 0.75), settings.get("task_loss_requirement", 0.7)
  resize = video_kw.get("resize", "native")
  # one stream over all of this host's videos: tiles batch across videos (short clips fill the program)
  # and the next video is opened and decoded while this one is gazed
  engine = GazeEngine(model, ratio, thr, **video_kw)
  stream = engine.run([(keys[i], functools.partial(source, i)) for i in todo])
  writers: dict[int, GazeWriter] = {}
  kept: dict[int, float] = {}
  t0, chunks_written, batch_no, n_done = time.perf_counter(), 0, len(done), 0
  for item in stream:
    if not isinstance(item, VideoEnd):
      i = todo[item["video"]]
      d = video_dir(out, keys[i])
      w = writers.get(item["video"])
      try:
        if w is None:
          if os.path.exists(d):      # the video in flight when a run was stopped: redone from its start
            shutil.rmtree(d)
          w = writers[item["video"]] = GazeWriter(d)
        w.write_chunk(item, vit(item) if vit is not None else None)
      except OSError as e:
        raise GazeOutputError(f"writing chunk {item['chunk']} of {keys[i]} to {d}: {e.strerror or e}; the videos "
                              f"committed before it are kept") from None
      kept[item["video"]] = kept.get(item["video"], 0.0) + float(np.sum(item["kept_ratio_per_frame"]))
      chunks_written += 1
      if stop_after_chunks is not None and chunks_written >= stop_after_chunks:
        return None                  # test hook: stop as a kill would, the in-flight video uncommitted
      continue
    end, i = item, todo[item.index]
    d = video_dir(out, keys[i])
    w = writers.pop(end.index, None)
    e = end.failure
    if e is None and end.frames == 0:
      e = VideoError(keys[i], "no_frames", "no decodable frames")
    if e is None:
      meta = video_meta(end, keys[i], ratio, thr, resize, kept.pop(end.index, 0.0), vit)
      try:
        w.finish(meta)
      except OSError as err:
        raise GazeOutputError(f"writing {d}/index.json: {err.strerror or err}") from None
      rec = {"i": i, "key": keys[i], "frames": end.frames, "tiles": end.tiling.num_tiles,
             "kept_ratio": meta["kept_ratio"], "truncated_at_frame": end.truncated_at}
    else:
      if os.path.exists(d):
        shutil.rmtree(d)
      if isinstance(e, VideoError):
        rec = {"i": i, "key": keys[i], "skip": e.reason, "error": str(e)}
      else:     # anything else one video does is that video's problem, not the run's
        rec = {"i": i, "key": keys[i], "skip": "gaze_error", "error": f"{keys[i]}: {type(e).__name__}: {e}"}
      log.warning("skipping %s: %s", keys[i], rec["error"])
    try:
      append_batch(path, [rec], batch_no)
    except OSError as err:
      raise GazeOutputError(f"committing {keys[i]} to {path}: {err.strerror or err}") from None
    batch_no += 1
    n_done += 1
    dt = time.perf_counter() - t0
    left = len(todo) - n_done
    log.info("[gaze] %d/%d videos | %.1f tiles/s | ETA %s | %s", len(mine) - left, len(mine),
             engine.tiles_done / max(dt, 1e-9), _fmt(dt / n_done * left),
             keys[i] + (f" skipped ({rec['skip']})" if "skip" in rec else ""))
  with open(path + ".done", "w") as f:
    json.dump({"videos": len(mine)}, f)
  if all(os.path.exists(shard_file(out, h, pc) + ".done") for h in range(pc)):
    return merge_summary(out, pc, len(keys))
  log.info("host %d finished; the last host to finish writes %s", pi, SUMMARY_NAME)
  return None


def merge_summary(out: str, process_count: int, num_videos: int) -> dict:
  """Every host's committed lines -> out/summary.json: counts, the skipped videos named with their
  reason, the truncated ones with the frame where decoding stopped."""
  recs = []
  for h in range(process_count):
    recs += read_shard(shard_file(out, h, process_count))
  recs.sort(key=lambda r: r["i"])
  if len({r["i"] for r in recs}) != len(recs):
    raise RuntimeError(f"a video was gazed twice across the shards of {out}; the shard files are inconsistent")
  gazed = [r for r in recs if "skip" not in r]
  skipped = {r["key"]: r["error"] for r in recs if "skip" in r}
  summary = {"videos": num_videos, "gazed": len(gazed), "skipped": len(skipped),
             "skip_counts": {k: sum(r.get("skip") == k for r in recs) for k in REASONS},
             "skipped_videos": skipped,
             "truncated_videos": {r["key"]: r["truncated_at_frame"] for r in gazed if r["truncated_at_frame"] is not None},
             "frames": sum(r["frames"] for r in gazed), "tiles": sum(r["tiles"] for r in gazed),
             "kept_ratio": (sum(r["kept_ratio"] * r["frames"] for r in gazed) / max(1, sum(r["frames"] for r in gazed))
                            if gazed else None),
             "missing": num_videos - len(recs)}
  write_json(os.path.join(out, SUMMARY_NAME), summary, indent=1)
  return summary


def local_sharding(batch_tiles: int | None):
  """Data-parallel placement of a batch of tiles over this host's devices (None with one device or a
  batch size the device count does not divide; CPU "devices" share the same cores: no gain)."""
  devs = jax.local_devices()
  if len(devs) < 2 or devs[0].platform == "cpu" or not batch_tiles or batch_tiles % len(devs):
    return None
  from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
  return NamedSharding(Mesh(np.asarray(devs), ("data",)), P("data"))


__all__ = ["gaze_video", "gaze_dataset", "merge_summary", "VitEmbedder", "Overview", "GazeOutputError",
           "VideoError", "local_sharding"]
