"""Gaze a video of any length in bounded memory: decode, tile and gaze one clip_len-frame chunk at a time.

`AutoGaze.gaze` holds the whole video (uint8, then float32, then its tiles) and every tile's result;
a 1024-frame 4K clip does not fit. `VideoGazeStream` holds about two chunks of uint8 frames (the one
being gazed, the next being decoded on a prefetch thread), a few blocks of at most `batch_tiles`
normalised tiles (the thread normalises and tiles a chunk block by block), one compiled batch, and the
results of the chunks not yet handed out: nothing grows with the length of the video.

The results equal `AutoGaze.gaze` tile for tile: temporal tile k of the video is chunk k (frames
k*clip_len ..), the spatial tiling of a chunk is the video's, a partial last chunk is padded by repeating
its last frame exactly as `tiling.tile_video` pads the whole video, and tiles go through `generate` in
the same (chunk, row, col) order and batches of `batch_tiles` (the last batch padded with repeats).

Sources (`FrameReader`): a uint8 array (T, H, W, 3), an iterable of uint8 (H, W, 3) frames, an .npz
with `frames` (loaded whole: npz cannot be read in parts), or a video file decoded with PyAV frame by
frame. A file that stops decoding after some frames keeps them (`truncated_at`, `error`); nothing
decodable, a missing file or a directory is a `VideoError` naming the file and the reason.
"""
from __future__ import annotations

import dataclasses
import os
import queue
import threading
import time
from typing import Iterable, Iterator

import numpy as np

from autogaze_jax.gaze.generate import generate
from autogaze_jax.gaze.preprocess import check_frames
from autogaze_jax.gaze.tiling import VideoTiling, clip_video, kept_ratio_per_frame, merge_tile_masks, prepare_frames

VIDEO_EXTS = (".mp4", ".webm", ".mov", ".mkv", ".avi")
# Why a video could not be gazed at all (a counted skip in dataset runs).
REASONS = ("missing", "directory", "open_error", "no_video_stream", "no_frames", "bad_frames", "gaze_error")


class VideoError(ValueError):
  """A video that cannot be gazed; `reason` is one of REASONS, `path` the file."""

  def __init__(self, path: str, reason: str, detail: str = ""):
    assert reason in REASONS, reason
    self.path, self.reason = path, reason
    super().__init__(f"{path}: {reason}" + (f" ({detail})" if detail else ""))


class FrameReader:
  """uint8 (H, W, 3) frames of `source`, at most `max_frames`. After iterating: `count` frames read,
  `truncated_at` = index of the frame where decoding failed (None when the source ended normally) and
  `error` its message. A frame whose size differs from the first one ends the stream the same way."""

  def __init__(self, source, max_frames: int | None = None):
    self.source, self.max_frames = source, max_frames
    self.name = source if isinstance(source, str) else "<frames>"
    self.count, self.truncated_at, self.error = 0, None, None
    self.frame_count_hint = None   # frames the container announces (0/None when unknown)
    if isinstance(source, str):
      if os.path.isdir(source):
        raise VideoError(source, "directory", "a directory, not a video file")
      if not os.path.isfile(source):
        raise VideoError(source, "missing", "the file does not exist")

  def _frames(self) -> Iterator[np.ndarray]:
    src = self.source
    if isinstance(src, str) and src.endswith(".npz"):
      try:
        with np.load(src) as d:
          if "frames" not in d.files:
            raise VideoError(src, "bad_frames", f"no array 'frames' (found {d.files})")
          arr = d["frames"]
      except (OSError, ValueError) as e:
        if isinstance(e, VideoError):
          raise
        raise VideoError(src, "open_error", f"cannot read as .npz: {e}") from None
      yield from self._array_frames(arr)
    elif isinstance(src, str):
      yield from self._av_frames(src)
    elif isinstance(src, np.ndarray):
      yield from self._array_frames(src)
    else:
      yield from src

  def _array_frames(self, arr):
    arr = np.asarray(arr)
    if arr.ndim != 4 or arr.shape[-1] != 3 or arr.dtype != np.uint8:
      raise VideoError(self.name, "bad_frames", f"expected uint8 frames (T, H, W, 3), got {arr.dtype} {arr.shape}")
    self.frame_count_hint = arr.shape[0]
    yield from arr

  def _av_frames(self, path):
    import av
    try:
      if os.path.getsize(path) == 0:
        raise VideoError(path, "no_frames", "empty file")
      container = av.open(path)
    except VideoError:
      raise
    except Exception as e:  # noqa: BLE001  any container error: unreadable
      raise VideoError(path, "open_error", f"cannot decode: {e}") from None
    with container:
      if not container.streams.video:
        raise VideoError(path, "no_video_stream")
      stream = container.streams.video[0]
      stream.thread_type = "AUTO"   # FFmpeg's own decoding threads
      self.frame_count_hint = int(stream.frames or 0) or None
      it = container.decode(stream)
      while True:
        try:
          f = next(it)
        except StopIteration:
          return
        except Exception as e:  # noqa: BLE001  corrupt packet: keep what decoded so far
          if self.count == 0:
            raise VideoError(path, "open_error", f"cannot decode: {e}") from None
          self._stop(f"decoding failed at frame {self.count}: {e}")
          return
        yield f.to_ndarray(format="rgb24")

  def _stop(self, msg: str):
    self.truncated_at, self.error = self.count, msg

  def __iter__(self) -> Iterator[np.ndarray]:
    shape = None
    for f in self._frames():
      if self.max_frames and self.count >= self.max_frames:
        return
      f = np.asarray(f)
      if shape is None:
        if f.dtype != np.uint8 or f.ndim != 3 or f.shape[-1] != 3 or min(f.shape[:2]) < 1:
          raise VideoError(self.name, "bad_frames", f"expected uint8 (H, W, 3) frames, got {f.dtype} {f.shape}")
        shape = f.shape
      elif f.shape != shape or f.dtype != np.uint8:
        self._stop(f"frame {self.count} is {f.dtype} {f.shape}, the video's frames are {shape}")
        return
      yield f
      self.count += 1
    if self.count == 0:
      raise VideoError(self.name, "no_frames", "no decodable frames")


@dataclasses.dataclass
class _Chunk:
  video: int                # index of its video in the stream
  index: int
  start: int
  canvas: np.ndarray        # uint8 (n, H', W', 3): the frames as gazed
  tiling: VideoTiling       # of this chunk alone (nt = 1)
  results: list             # per tile, filled as its batch is gazed


@dataclasses.dataclass
class _Block:
  """Normalised tiles first .. first+len(tiles)-1 of a chunk: the prefetch thread hands a chunk's tiles
  over in blocks of at most batch_tiles, so only about one batch of float32 tiles waits at a time."""
  chunk: _Chunk
  first: int
  tiles: np.ndarray         # float32 (k, clip_len, 3, tile, tile)


@dataclasses.dataclass
class VideoEnd:
  """The end of one video of a stream, after all its chunks: what was gazed, or why nothing was."""
  index: int                          # position in the stream's videos
  key: str
  reader: FrameReader | None = None
  frames: int = 0                     # real frames gazed
  tiling: VideoTiling | None = None   # of the whole video
  input_size: tuple | None = None
  canvas_size: tuple | None = None
  failure: Exception | None = None    # VideoError (unreadable) or whatever else stopped this video

  @property
  def truncated_at(self):
    return None if self.reader is None else self.reader.truncated_at

  @property
  def error(self):
    return None if self.reader is None else self.reader.error


def _prefetched(gen: Iterator, depth: int) -> Iterator:
  """Run `gen` on a thread so that the next items are produced while the consumer works on this one.
  At most `depth` items are alive at once, counting the one the consumer holds: a slot is freed when
  the consumer asks for the next item (a chunk, a block of tiles or a video end). Exceptions
  are re-raised here; closing this generator stops the thread."""
  if depth <= 1:
    yield from gen
    return
  q: queue.Queue = queue.Queue()
  slots = threading.Semaphore(depth)
  stop = threading.Event()
  done = object()

  def acquire():
    while not stop.is_set():
      if slots.acquire(timeout=0.1):
        return True
    return False

  def work():
    try:
      while acquire():
        try:
          item = next(gen)
        except StopIteration:
          q.put((done, None))
          return
        q.put((item, None))
    except BaseException as e:  # noqa: BLE001  handed to the consumer
      q.put((done, e))

  th = threading.Thread(target=work, daemon=True, name="gaze-prefetch")
  th.start()
  try:
    first = True
    while True:
      if not first:
        slots.release()       # the consumer is done with the previous item
      first = False
      item, err = q.get()
      if item is done:
        if err is not None:
          raise err
        return
      yield item
      del item
  finally:
    stop.set()
    th.join(timeout=5)


def normalize_table(processor) -> np.ndarray:
  """float32 (3, 256): the processor's normalisation of every uint8 value per channel. Normalising is
  per value and channel, so a table lookup gives exactly `processor.normalize`'s floats, without its
  float64 pass over every pixel (the host's biggest cost per chunk of a large video)."""
  v = np.repeat(np.arange(256, dtype=np.uint8)[None, :, None], 3, axis=2)   # (H=1, W=256, 3)
  return np.ascontiguousarray(processor.normalize(v)[:, 0, :])


def native_tiles(frames: np.ndarray, processor, clip_len: int, tile: int, table: np.ndarray | None = None,
                 first: int = 0, count: int | None = None):
  """uint8 (n, H, W, 3), n <= clip_len -> normalised tiles first .. first+count-1 (row-major; default all
  nh*nw) as (count, clip_len, 3, tile, tile) and the chunk's tiling: equal to those of
  `tiling.tile_video(processor.normalize(frames))` (zero padding in normalised space, the last frame
  repeated) but normalised tile by tile into the output through `normalize_table`, without
  whole-chunk float32 copies."""
  table = normalize_table(processor) if table is None else table
  n, h, w, _ = frames.shape
  nh, nw = -(-h // tile), -(-w // tile)
  count = nh * nw - first if count is None else count
  out = np.zeros((count, clip_len, 3, tile, tile), np.float32)
  for j in range(count):
    r, c = divmod(first + j, nw)
    sub = frames[:, r * tile:(r + 1) * tile, c * tile:(c + 1) * tile]
    th, tw = sub.shape[1:3]
    for ch in range(3):
      out[j, :n, ch, :th, :tw] = table[ch][sub[..., ch]]
  if n < clip_len:
    out[:, n:] = out[:, n - 1:n]
  return out, VideoTiling(n, h, w, clip_len, tile, 1, nh, nw)


class GazeEngine:
  """Gazes a sequence of videos as one stream of chunks: tiles are batched `batch_tiles` at a time
  across chunk and video boundaries (one program shape; a batch is cut short and padded only at the
  end or where the tile shape changes, as between videos of different aspect with
  resize="shortest_edge_224"). Uncoupled tiles do not depend on their batch mates, so a tile's result
  is the same whichever tiles share its batch. `run` yields each chunk's dict (see VideoGazeStream),
  with "video": its index, and a `VideoEnd` after each video's last chunk, in order."""

  def __init__(self, model, gazing_ratio=0.75, task_loss_requirement=0.7, *, resize: str = "native",
               clip_len: int | None = None, batch_tiles: int | None = None, max_frames: int | None = None,
               prefetch: int = 3, sharding=None, **gen_kw):
    self.model = model
    self.gazing_ratio, self.task_loss_requirement = gazing_ratio, task_loss_requirement
    self.resize, self.clip_len, self.max_frames = resize, int(clip_len or model.cfg.max_num_frames), max_frames
    if batch_tiles is not None and batch_tiles < 1:
      raise ValueError(f"batch_tiles must be >= 1, got {batch_tiles}")
    self.batch_tiles, self.prefetch, self.sharding, self.gen_kw = batch_tiles, prefetch, sharding, gen_kw
    self.tiles_done = 0
    self.on_batch = None      # optional hook (seconds, tiles) after each compiled call (progress)

  # -- host side: decode + prepare (runs on the prefetch thread)
  def _raw_chunks(self, reader) -> Iterator[np.ndarray]:
    buf = []
    for f in reader:
      buf.append(f)
      if len(buf) == self.clip_len:
        yield np.stack(buf)
        buf = []
    if buf:
      yield np.stack(buf)

  def _prepared(self, videos) -> Iterator:
    tile = self.model.cfg.input_img_size
    table = normalize_table(self.model.processor)
    for vi, (key, src) in enumerate(videos):
      end = VideoEnd(vi, key)
      try:
        src = src() if callable(src) else src
        end.reader = src if isinstance(src, FrameReader) else FrameReader(src, self.max_frames)
        start = 0
        for k, raw in enumerate(self._raw_chunks(end.reader)):
          if k == 0:
            end.input_size = tuple(raw.shape[1:3])
          model_in, canvas = prepare_frames(check_frames(raw), self.model.processor, self.resize, tile)
          del raw
          if self.resize == "native":
            n, h, w = model_in.shape[:3]
            tl = VideoTiling(n, h, w, self.clip_len, tile, 1, -(-h // tile), -(-w // tile))
            chunk = _Chunk(vi, k, start, canvas, tl, [None] * (tl.nh * tl.nw))
            yield chunk
            block = self.batch_tiles or tl.nh * tl.nw
            for b0 in range(0, tl.nh * tl.nw, block):
              count = min(block, tl.nh * tl.nw - b0)
              yield _Block(chunk, b0, native_tiles(model_in, self.model.processor, self.clip_len, tile, table,
                                                   b0, count)[0])
          else:
            tiles, tl = clip_video(self.model.processor.normalize(model_in), self.clip_len, tile)
            chunk = _Chunk(vi, k, start, canvas, tl, [None])
            yield chunk
            yield _Block(chunk, 0, tiles[:1])
          del model_in
          start += tl.frames
      except Exception as e:  # noqa: BLE001  this video's failure, reported in its VideoEnd
        end.failure = e
      yield end

  # -- device side
  def _run(self, batch: list[tuple[_Block, int]], bt: int):
    b0, i0 = batch[0]
    if all(b is b0 and i == i0 + j for j, (b, i) in enumerate(batch)):
      x = b0.tiles[i0:i0 + len(batch)]        # no host copy: the device transfer is the only one
    else:
      x = np.stack([b.tiles[i] for b, i in batch])
    real = x.shape[0]
    if real < bt:   # one program shape: pad with repeats, drop their outputs
      x = np.concatenate([x, np.repeat(x[-1:], bt - real, axis=0)])
    if self.sharding is not None:
      import jax
      x = jax.device_put(x, self.sharding)
    t0 = time.perf_counter()
    out = generate(self.model, x, self.gazing_ratio, self.task_loss_requirement, **self.gen_kw)
    for j, (b, i) in enumerate(batch):
      b.chunk.results[b.first + i] = take_sample(out, j)
    self.tiles_done += real
    if self.on_batch is not None:
      self.on_batch(time.perf_counter() - t0, real)

  def _finish(self, c: _Chunk, acc: dict) -> dict:
    tl = c.tiling
    n = tl.frames
    tiles = []
    for i, r in enumerate(c.results):
      r = first_frames(r, n) if n < tl.clip_len else r
      r["tile_pos"] = (c.index, i // tl.nw, i % tl.nw)
      tiles.append(r)
    masks = merge_tile_masks([np.concatenate([t["gazing_mask"][s] for t in tiles])
                              for s in range(len(self.model.cfg.scales))], dataclasses.replace(tl, clip_len=n))
    masks = [m.astype(bool) for m in masks]
    kept = kept_ratio_per_frame(masks, tl)
    acc["frames"] = acc.get("frames", 0) + n
    acc["tiling"] = dataclasses.replace(tl, frames=acc["frames"], nt=c.index + 1)
    acc["canvas_size"] = tuple(c.canvas.shape[1:3])
    return {"video": c.video, "chunk": c.index, "frame_start": c.start, "num_frames": n, "tiles": tiles,
            "kept_ratio_per_frame": kept, "masks": masks, "frames": c.canvas, "tiling": tl}

  def run(self, videos: Iterable[tuple[str, object]]) -> Iterator:
    """videos: (key, source) pairs; a source is what FrameReader takes, a FrameReader, or a callable
    returning one of those (called on the prefetch thread: opening a file overlaps the device too)."""
    pending: list[tuple[_Block, int]] = []
    queue_out: list = []          # chunks and VideoEnds in stream order, handed out once complete
    acc: dict[int, dict] = {}     # per video: frames, tiling, canvas size of its finished chunks
    bt = self.batch_tiles
    for item in _prefetched(self._prepared(videos), self.prefetch):
      if isinstance(item, _Block):
        if pending and pending[0][0].tiles.shape[1:] != item.tiles.shape[1:]:
          self._run(pending, bt)   # tiles of another shape cannot share a program: flush, padded
          pending = []
        bt = bt or len(item.chunk.results)
        pending += [(item, i) for i in range(item.tiles.shape[0])]
        while len(pending) >= bt:
          self._run(pending[:bt], bt)
          pending = pending[bt:]
      else:
        queue_out.append(item)
      del item
      yield from self._ready(queue_out, acc)
    if pending:
      self._run(pending, bt)
    yield from self._ready(queue_out, acc)

  def _ready(self, queue_out: list, acc: dict) -> Iterator:
    """Hand out the complete head of the stream: chunks whose tiles are all gazed, and a VideoEnd
    once its chunks are out (it always follows them)."""
    while queue_out:
      head = queue_out[0]
      if isinstance(head, VideoEnd):
        queue_out.pop(0)
        a = acc.pop(head.index, {})
        head.frames, head.tiling, head.canvas_size = a.get("frames", 0), a.get("tiling"), a.get("canvas_size")
        yield head
      elif all(r is not None for r in head.results):
        queue_out.pop(0)
        yield self._finish(head, acc.setdefault(head.video, {}))
      else:
        return


class VideoGazeStream(GazeEngine):
  """Iterate to gaze `source` chunk by chunk (see the module docstring). Each item is one chunk:

    {"chunk": k, "frame_start": first frame, "num_frames": n real frames (clip_len except the last),
     "tiles": [per tile: the official single-sample dict of `AutoGaze.gaze` (first n frames) plus
               "tile_pos" (k, row, col)], "kept_ratio_per_frame": (n,), "masks": per scale (n, nh*g, nw*g)
     bool, "frames": uint8 (n, H', W', 3) canvas, "tiling": VideoTiling of the chunk (nt = 1), "video": 0}

  After iteration: `frames` (real frames gazed), `tiling` (of the whole video), `input_size`,
  `canvas_size`, `truncated_at` / `error` (from the reader), `tiles_done`. An unreadable video raises
  its VideoError.
  """

  def __init__(self, model, source, gazing_ratio=0.75, task_loss_requirement=0.7, *, max_frames: int | None = None,
               **kw):
    super().__init__(model, gazing_ratio, task_loss_requirement, max_frames=max_frames, **kw)
    self.reader = source if isinstance(source, FrameReader) else FrameReader(source, max_frames)
    self.end = VideoEnd(0, self.reader.name, self.reader)

  def __getattr__(self, name):
    if name in ("frames", "tiling", "input_size", "canvas_size", "truncated_at", "error"):
      return getattr(self.__dict__["end"], name)
    raise AttributeError(name)

  def __iter__(self) -> Iterator[dict]:
    for item in self.run([(self.reader.name, self.reader)]):
      if isinstance(item, VideoEnd):
        self.end = item
        if item.failure is not None:
          raise item.failure
      else:
        yield item


def take_sample(out: dict, i: int) -> dict:
  """Sample i of a batched official-format dict, with its own slot counts (`sample_num_gazing_each_frame`):
  the trailing pad slots of a frame that only its batch mates needed are dropped."""
  n_t = np.asarray(out["num_gazing_each_frame"])
  own = np.asarray(out["sample_num_gazing_each_frame"])[i]
  starts = np.concatenate([[0], np.cumsum(n_t)[:-1]])
  idx = np.concatenate([s + np.arange(n) for s, n in zip(starts, own)]).astype(np.int64)
  res = {k: (None if out.get(k) is None else np.asarray(out[k])[i:i + 1, idx])
         for k in ("gazing_pos", "if_padded_gazing", "log_action_probs", "task_loss_prediction")}
  res.update(num_gazing_each_frame=own.astype(np.int64), sample_num_gazing_each_frame=own[None],
             num_real_gazing_each_frame=np.asarray(out["num_real_gazing_each_frame"])[i:i + 1],
             gazing_mask=[np.asarray(m)[i:i + 1] for m in out["gazing_mask"]])
  for k in ("scales", "frame_sampling_rate", "num_vision_tokens_each_frame", "has_task_loss_requirement"):
    res[k] = out[k]
  res["task_loss_requirement"] = None if out.get("task_loss_requirement") is None else out["task_loss_requirement"][i:i + 1]
  return res


def first_frames(res: dict, n: int) -> dict:
  """A single-sample dict restricted to its first n frames (drops the repeat-padding of a partial tile)."""
  counts = np.asarray(res["num_gazing_each_frame"])
  keep = int(counts[:n].sum())
  out = dict(res, num_gazing_each_frame=counts[:n], sample_num_gazing_each_frame=res["sample_num_gazing_each_frame"][:, :n],
             num_real_gazing_each_frame=res["num_real_gazing_each_frame"][:, :n],
             gazing_mask=[m[:, :n] for m in res["gazing_mask"]])
  for k in ("gazing_pos", "if_padded_gazing", "log_action_probs", "task_loss_prediction"):
    out[k] = None if res.get(k) is None else res[k][:, :keep]
  if res.get("task_loss_requirement") is not None:
    out["task_loss_requirement"] = res["task_loss_requirement"][:, :n]
  return out


def list_video_files(root: str, exts: Iterable[str] = VIDEO_EXTS + (".npz",)) -> list[str]:
  """Video files under `root` (recursive), as paths relative to it, sorted: the dataset's order."""
  exts = tuple(e.lower() for e in exts)
  out = []
  for d, dirs, files in os.walk(root):
    dirs.sort()
    out += [os.path.relpath(os.path.join(d, f), root) for f in files if f.lower().endswith(exts)]
  return sorted(out)
