"""The on-disk gaze records of one video (docs/gaze_format.md): a directory of per-chunk .npz files and
an index.json written last.

  chunk-000000.npz ...   one per clip_len-frame chunk, written as the chunk is gazed (atomically: a
                         temporary name, fsync, rename), so a kill never leaves a torn chunk
  vit-000000.npz ...     the gazed ViT's embeddings of that chunk (with --vit), written before the chunk
  index.json             the video's summary; its presence marks the records complete

The .npz files are written byte-deterministically (fixed zip timestamps, no compression): the same
video and settings give identical bytes, which is what makes an interrupted dataset run resumable to
exactly the output of an uninterrupted one. `read_gaze(dir)` reads them back.
"""
from __future__ import annotations

import dataclasses
import io
import json
import os
import zipfile
from typing import Iterator

import numpy as np

from autogaze_jax.core.atomic_files import atomic_write, write_json

FORMAT, VERSION = "autogaze_jax.gaze_records", 1
INDEX_NAME = "index.json"
# per-tile arrays concatenated over a chunk's tiles (their lengths are the tiles' slot counts)
SLOT_KEYS = ("gazing_pos", "if_padded_gazing", "log_action_probs", "task_loss_prediction")
SLOT_DTYPES = {"gazing_pos": np.int32, "if_padded_gazing": np.bool_, "log_action_probs": np.float32,
               "task_loss_prediction": np.float32}


class GazeRecordsError(ValueError):
  """Records that are missing, incomplete or not in this format; names the directory or file."""


def chunk_name(k: int, kind: str = "chunk") -> str:
  return f"{kind}-{k:06d}.npz"


def write_npz(path: str, arrays: dict) -> None:
  """Deterministic .npz (readable by np.load): stored entries with a fixed timestamp, written atomically
  (`core.atomic_files`), so the file appears whole or not at all."""
  def write(tmp):
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as zf:
      for name, a in arrays.items():
        buf = io.BytesIO()
        np.lib.format.write_array(buf, np.asarray(a), allow_pickle=False)
        zf.writestr(zipfile.ZipInfo(name + ".npy", date_time=(1980, 1, 1, 0, 0, 0)), buf.getvalue())
  atomic_write(path, write)


def chunk_arrays(chunk: dict) -> dict:
  """A `VideoGazeStream` chunk -> the arrays of its chunk file (docs/gaze_format.md)."""
  tiles = chunk["tiles"]
  out = {"frame_start": np.int64(chunk["frame_start"]), "num_frames": np.int64(chunk["num_frames"]),
         "tile_pos": np.asarray([t["tile_pos"] for t in tiles], np.int32).reshape(-1, 3),
         "num_gazing_each_frame": np.stack([np.asarray(t["num_gazing_each_frame"], np.int32) for t in tiles]),
         "num_real_gazing_each_frame": np.stack([np.asarray(t["num_real_gazing_each_frame"][0], np.int32)
                                                 for t in tiles]),
         "kept_ratio_per_frame": np.asarray(chunk["kept_ratio_per_frame"], np.float64)}
  for k in SLOT_KEYS:
    if tiles[0].get(k) is not None:
      out[k] = np.concatenate([np.asarray(t[k][0], SLOT_DTYPES[k]) for t in tiles])
  return out


class GazeWriter:
  """Writes one video's records into `path` (created). Records already there (an earlier run into the
  same dir) are removed first, index.json before the chunks, so they never pass for the new ones."""

  def __init__(self, path: str):
    self.path = path
    os.makedirs(path, exist_ok=True)
    old = os.path.join(path, INDEX_NAME)
    if os.path.exists(old):
      os.remove(old)
    for f in os.listdir(path):
      if f.endswith(".npz") and f.split("-")[0] in ("chunk", "vit"):
        os.remove(os.path.join(path, f))
    self.chunks = 0

  def write_chunk(self, chunk: dict, vit: dict | None = None) -> None:
    if vit is not None:   # embeddings first: a chunk file on disk implies its embeddings are there
      write_npz(os.path.join(self.path, chunk_name(chunk["chunk"], "vit")), vit)
    write_npz(os.path.join(self.path, chunk_name(chunk["chunk"])), chunk_arrays(chunk))
    self.chunks += 1

  def finish(self, meta: dict) -> None:
    write_json(os.path.join(self.path, INDEX_NAME), {"format": FORMAT, "version": VERSION, "chunks": self.chunks,
                                                     **meta}, indent=1)


@dataclasses.dataclass
class GazeRecords:
  """Read side of one video's records. `meta`: index.json; iterate `chunks()` / `tiles()` lazily."""
  path: str
  meta: dict

  @property
  def num_chunks(self) -> int:
    return int(self.meta["chunks"])

  def chunk(self, k: int) -> dict:
    f = os.path.join(self.path, chunk_name(k))
    try:
      with np.load(f) as d:
        return {n: d[n] for n in d.files}
    except (OSError, ValueError) as e:
      raise GazeRecordsError(f"{f}: cannot read chunk {k}: {e}") from None

  def chunks(self) -> Iterator[dict]:
    for k in range(self.num_chunks):
      yield self.chunk(k)

  def tiles(self) -> Iterator[dict]:
    """Per tile, in (chunk, row, col) order: tile_pos, frame_start, num_frames, and the arrays of the
    single-sample official dict: gazing_pos / if_padded_gazing (and log_action_probs /
    task_loss_prediction when recorded) as (1, N), num_gazing_each_frame (n,),
    num_real_gazing_each_frame (1, n)."""
    for c in self.chunks():
      ends = np.cumsum(c["num_gazing_each_frame"].sum(1))
      starts = ends - c["num_gazing_each_frame"].sum(1)
      for i in range(c["tile_pos"].shape[0]):
        t = {"tile_pos": tuple(int(v) for v in c["tile_pos"][i]), "frame_start": int(c["frame_start"]),
             "num_frames": int(c["num_frames"]), "num_gazing_each_frame": c["num_gazing_each_frame"][i].astype(np.int64),
             "num_real_gazing_each_frame": c["num_real_gazing_each_frame"][i][None].astype(np.int64)}
        for k in SLOT_KEYS:
          if k in c:
            t[k] = c[k][starts[i]:ends[i]][None]
        t["gazing_pos"] = t["gazing_pos"].astype(np.int64)
        yield t

  def kept_ratio_per_frame(self) -> np.ndarray:
    return np.concatenate([c["kept_ratio_per_frame"] for c in self.chunks()])

  def embeddings(self) -> Iterator[dict]:
    """Per chunk the gazed ViT's arrays (`vit_tokens` (real gazes, D) in tile order, `vit_num_tokens`
    (tiles,), `vit_pooler` (tiles, D) when the ViT pools); GazeRecordsError without --vit records."""
    if not self.meta.get("vit"):
      raise GazeRecordsError(f"{self.path}: no ViT embeddings were recorded (run with --vit)")
    for k in range(self.num_chunks):
      f = os.path.join(self.path, chunk_name(k, "vit"))
      try:
        with np.load(f) as d:
          yield {n: d[n] for n in d.files}
      except (OSError, ValueError) as e:
        raise GazeRecordsError(f"{f}: cannot read the embeddings of chunk {k}: {e}") from None


def read_gaze(path: str) -> GazeRecords:
  """The records of one video (a dir with index.json). Incomplete records (no index.json: the run was
  stopped or failed) are a GazeRecordsError naming the dir and the chunks present."""
  idx = os.path.join(path, INDEX_NAME)
  if not os.path.isfile(idx):
    n = len([f for f in os.listdir(path) if f.startswith("chunk-")]) if os.path.isdir(path) else 0
    raise GazeRecordsError(f"{path}: no {INDEX_NAME}: the records are incomplete ({n} chunk files) or absent")
  try:
    with open(idx) as f:
      meta = json.load(f)
  except ValueError as e:
    raise GazeRecordsError(f"{idx}: not valid JSON: {e}") from None
  if meta.get("format") != FORMAT or meta.get("version") != VERSION:
    raise GazeRecordsError(f"{idx}: format {meta.get('format')!r} v{meta.get('version')!r}, expected {FORMAT!r} "
                           f"v{VERSION}")
  return GazeRecords(path, meta)
