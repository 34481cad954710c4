"""Gaze a video, or a whole dataset, in bounded memory; draw what the model looks at.

  python -m launch.gaze --checkpoint=DIR_OR_HUB_ID --video=FILE --out=OUTDIR [--gazing_ratio=0.75]
                        [--task_loss_requirement=0.7] [--resize=native|shortest_edge_224]
                        [--batch_tiles=N] [--max_frames=N] [--vit=tiny|base|PATH]
  python -m launch.gaze --checkpoint=... --videos=DIR_OR_ARRAYRECORD --out=OUTDIR [same options]
                        [--coordinator=host:port --num_processes=N --process_id=I]

--checkpoint: an official-format dir or a hub id ("nvidia/AutoGaze", "org/name@revision") fetched
through huggingface_hub's cache (HF_HOME, HF_HUB_OFFLINE honoured).
FILE: .mp4/.mov/.webm/.mkv/.avi (decoded with PyAV frame by frame) or .npz with uint8 frames (T, H, W, 3)
under `frames` (loaded whole); --max_frames keeps the first N frames. The video is streamed
(`AutoGaze.gaze_stream`): 16-frame chunks are decoded and tiled on a thread while the previous tiles are
gazed, --batch_tiles tiles per compiled call (default: one chunk's tiles; the last call padded), and each
chunk's results are written as they come, so memory does not grow with the video. A video whose decoding
fails after some frames keeps them (a warning names the frame; "truncated_at_frame" in gaze.json).
--resize=native (default): the video keeps its resolution and is cut into 16x224x224 tiles; a video
smaller than a tile is first resized to 224 on its shortest edge. --resize=shortest_edge_224: the
official QUICK_START basic path: shortest edge to 224, squashed to 224x224 by the model, one tile per 16
frames.
Writes OUTDIR/records/ (the gaze records, docs/gaze_format.md: chunk-*.npz per 16 frames as they are
gazed, index.json last; read with autogaze_jax.gaze.records.read_gaze), OUTDIR/gaze.json (video size,
tiling, kept-token ratio per frame and overall over real pixels), OUTDIR/gaze.png (the first 16 frames:
original + overlay) and OUTDIR/gaze.gif (at most 64 evenly spaced frames), both scaled to 640 px at most.
OUTDIR is checked for writability and free space before anything is computed; a write that fails later
(full disk) stops with an error that says which chunk files are kept; gaze.json/png/gif appear together
or not at all.
--videos: every video file under DIR (recursive; names relative to DIR are the keys) or every clip of
an ArrayRecord dataset written by launch.build_dataset (--split), each into OUTDIR/videos/<key>/ as
above (no pictures). Host h of n gazes videos h, h+n, ...; each finished or unreadable video commits a
line to OUTDIR/shards/gaze-h-of-n.jsonl, so a restart with the same OUTDIR skips finished videos and redoes
the one in flight. Unreadable videos are counted and named in OUTDIR/summary.json (written by the last
host to finish), never a crash. Multi-process: --coordinator/--num_processes/--process_id (or the JAX
coordinator variables / --distributed); tiles are data-parallel over this host's accelerators.
Without --checkpoint it uses randomly initialised weights (with a warning); without --video/--videos it
gazes a generated clip. With --vit each chunk's gazed patches also go through a SigLIP-style ViT (a named
random-init config, or HF SigLIP weights: .safetensors/.npz file, dir or hub id) in the same stream; the
embeddings are written beside the records (vit-*.npz) and OUTDIR/vit.json has the token counts and time.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile

import numpy as np

# free space asked of --out before anything runs: the bounded pictures and the first chunks
MIN_FREE = 4 << 20


def read_video(path: str, max_frames: int | None = None) -> tuple[np.ndarray, int | None]:
  """uint8 (T, H, W, 3) from a video file or an .npz (`frames`), at most `max_frames` of them, and the
  index of the frame where decoding failed (None when the whole file decoded). Clear errors for
  unreadable input; a file that fails after some frames keeps those frames, with a warning."""
  if os.path.isdir(path):
    raise SystemExit(f"error: --video {path!r} is a directory, not a video file (pass one .mp4/.npz file)")
  if not os.path.isfile(path):
    raise SystemExit(f"error: video file {path!r} does not exist")
  truncated = None
  if path.endswith(".npz"):
    try:
      with np.load(path) as d:
        if "frames" not in d.files:
          raise SystemExit(f"error: {path} has no array 'frames' (found {d.files})")
        frames = d["frames"]
    except (OSError, ValueError) as e:
      raise SystemExit(f"error: cannot read {path} as .npz: {e}")
    if max_frames and frames.ndim >= 1:
      frames = frames[:max_frames]
  else:
    import av
    frames = []
    try:
      with av.open(path) as c:
        if not c.streams.video:
          raise SystemExit(f"error: {path} has no video stream")
        for f in c.decode(video=0):
          frames.append(f.to_ndarray(format="rgb24"))
          if max_frames and len(frames) >= max_frames:
            break
    except av.FFmpegError as e:
      if not frames:
        raise SystemExit(f"error: cannot decode {path}: {e}")
      truncated = len(frames)  # keep what decoded: a cut/corrupt tail is common in real recordings
      logging.warning(f"WARNING: {path}: decoding failed at frame {truncated} ({e}); gazing the {truncated} frames "
                      "decoded before it")
    frames = np.stack(frames) if frames else np.zeros((0, 1, 1, 3), np.uint8)
  if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
    raise SystemExit(f"error: {path}: expected uint8 frames (T, H, W, 3), got {frames.dtype} {frames.shape}")
  if frames.shape[0] == 0:
    raise SystemExit(f"error: {path} has no decodable frames")
  return frames, truncated


def check_out_dir(out: str, need_bytes: int) -> None:
  """Fail before any compute if OUTDIR cannot be created, written, or lacks `need_bytes` free."""
  try:
    os.makedirs(out, exist_ok=True)
    fd, probe = tempfile.mkstemp(prefix=".write_probe", dir=out)
    os.close(fd)
    os.remove(probe)
  except OSError as e:
    raise SystemExit(f"error: --out {out!r} is not writable: {e.strerror or e}")
  free = shutil.disk_usage(out).free
  if free < need_bytes:
    raise SystemExit(f"error: --out {out!r} has {free / 2**20:.1f} MiB free, the outputs need about "
                     f"{need_bytes / 2**20:.1f} MiB")


def write_outputs(out: str, writers: dict) -> None:
  """{name: write(path)}: every file is written under a temporary name in `out`, then all are renamed,
  so a full disk or a crash leaves none of them rather than a gaze.json without its pictures (the
  records, written chunk by chunk before, stay)."""
  tmp = {name: os.path.join(out, f".{name}.partial") for name in writers}
  try:
    for name, write in writers.items():
      write(tmp[name])
    for name in writers:
      os.replace(tmp[name], os.path.join(out, name))
  except OSError as e:
    free = shutil.disk_usage(out).free if os.path.isdir(out) else 0
    raise SystemExit(f"error: writing {out}: {e.strerror or e} ({free / 2**20:.1f} MiB free); none of "
                     f"{', '.join(writers)} was written")
  finally:
    for p in tmp.values():
      if os.path.exists(p):
        os.remove(p)


def _write_json(obj):
  def write(path):
    with open(path, "w") as f:
      json.dump(_jsonable(obj), f, allow_nan=False)
  return write


def _jsonable(x):
  if isinstance(x, np.ndarray):
    return x.tolist()
  if isinstance(x, (np.integer, np.floating, np.bool_)):
    return x.item()
  if isinstance(x, (list, tuple)):
    return [_jsonable(v) for v in x]
  if isinstance(x, dict):
    return {k: _jsonable(v) for k, v in x.items() if k != "trace"}
  return x


def _video_error(e) -> SystemExit:
  """A VideoError as the one-line message the CLI has always printed for each kind."""
  p, why = e.path, e.reason
  msgs = {"missing": f"video file {p!r} does not exist",
          "directory": f"--video {p!r} is a directory, not a video file (pass one .mp4/.npz file)",
          "no_frames": f"{p} has no decodable frames", "no_video_stream": f"{p} has no video stream",
          "open_error": f"cannot decode {p}: {str(e).split('(', 1)[-1].rstrip(')')}",
          "bad_frames": str(e)}
  return SystemExit(f"error: {msgs[why]}")


def record_bytes(frames: int, height: int, width: int, resize: str) -> int:
  """About the records' size: 265 slots a frame and tile at 5 bytes (int32 id + flag) plus the per-chunk
  fixed part; the bounded pictures on top (MIN_FREE)."""
  if resize == "shortest_edge_224":
    height = width = 224
  elif min(height, width) < 224:
    height, width = (224, int(224 * width / height)) if height <= width else (int(224 * height / width), 224)
  return int(frames * -(-height // 224) * -(-width // 224) * 265 * 5 + MIN_FREE)


def _probe(path: str):
  """(frames or None, height, width) of a video file from its header, without decoding; None if unknown."""
  if not path or not os.path.isfile(path) or path.endswith(".npz"):
    return None
  try:
    import av
    with av.open(path) as c:
      s = c.streams.video[0]
      return int(s.frames or 0) or None, int(s.height), int(s.width)
  except Exception:  # noqa: BLE001  the stream reports unreadable files with their reason
    return None


def build_parser():
  ap = argparse.ArgumentParser(prog="python -m launch.gaze", description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--checkpoint", help="official-format checkpoint dir (config.json + model.safetensors) or a hub "
                                       "id (nvidia/AutoGaze, org/name@revision)")
  ap.add_argument("--video", help="video file or .npz with uint8 `frames` (default: a generated clip)")
  ap.add_argument("--videos", help="a dataset: a directory of video files (recursive) or a launch.build_dataset "
                                   "ArrayRecord dir; one records dir per video under OUTDIR/videos/")
  ap.add_argument("--split", default="train", help="split of an ArrayRecord --videos dataset")
  ap.add_argument("--out", required=True, help="output directory")
  ap.add_argument("--gazing_ratio", type=float, default=0.75, help="max fraction of the 265 patches per frame")
  ap.add_argument("--task_loss_requirement", type=float, default=0.7,
                  help="stop a frame when the predicted reconstruction loss is <= this; 'nan' disables")
  ap.add_argument("--resize", choices=("native", "shortest_edge_224"), default="native",
                  help="native: 224x224 tiles at the video's resolution (small videos brought up to 224); "
                       "shortest_edge_224: the official basic path (shortest edge 224, squashed to 224x224)")
  ap.add_argument("--batch_tiles", type=int, default=None,
                  help="tiles per compiled call, one program shape (default: the tiles of one 16-frame chunk)")
  ap.add_argument("--max_frames", type=int, default=None, help="use at most this many (first) frames")
  ap.add_argument("--coupled", action="store_true", help="official batch coupling of tiles (parity mode)")
  ap.add_argument("--generate_only", action="store_true",
                  help="skip the teacher-forced scoring pass (about 3x faster on CPU): the records then hold no "
                       "log_action_probs / task_loss_prediction")
  ap.add_argument("--seed", type=int, default=0, help="init seed without --checkpoint")
  ap.add_argument("--vit", help="gazed ViT in the same stream: tiny | base | so400m (random init) or SigLIP weights: "
                                "a file/dir (HF names) or a hub id (google/siglip2-base-patch16-224); embeddings "
                                "written beside the records")
  ap.add_argument("--distributed", action="store_true", help="call jax.distributed.initialize() (auto-detected)")
  ap.add_argument("--coordinator", help="host:port of process 0 (multi-process --videos without auto-detection)")
  ap.add_argument("--num_processes", type=int, help="number of processes (with --coordinator)")
  ap.add_argument("--process_id", type=int, help="this process's index (with --coordinator)")
  ap.add_argument("--stop_after_chunks", type=int, help=argparse.SUPPRESS)   # test hook: simulate a kill
  return ap


def main(argv=None):
  args = build_parser().parse_args(argv)
  logging.basicConfig(level=logging.INFO, format="%(message)s")
  if args.max_frames is not None and args.max_frames < 1:
    raise SystemExit(f"error: --max_frames must be >= 1, got {args.max_frames}")
  if args.batch_tiles is not None and args.batch_tiles < 1:
    raise SystemExit(f"error: --batch_tiles must be >= 1, got {args.batch_tiles}")
  if args.video and args.videos:
    raise SystemExit("error: pass --video (one video) or --videos (a dataset), not both")
  if args.coordinator or args.distributed:
    from launch.runtime import init_runtime
    init_runtime(args.distributed, args.coordinator, args.num_processes, args.process_id)

  check_out_dir(args.out, 0)             # unwritable: found before decoding or loading anything
  probe = _probe(args.video)
  need = record_bytes(*probe, args.resize) if probe and probe[0] else MIN_FREE
  check_out_dir(args.out, need)          # too little space: found before gazing
  if args.videos:
    keys, source = dataset_items(args)

  from autogaze_jax import AutoGaze, GazeConfig
  from autogaze_jax.interop.common import CheckpointError
  if args.checkpoint:
    try:
      model = AutoGaze.from_pretrained(args.checkpoint)
    except CheckpointError as e:   # a user-facing problem with the file or id: one line, not a traceback
      raise SystemExit(f"error: --checkpoint: {e}") from None
  else:
    logging.warning("WARNING: no --checkpoint given: using RANDOMLY INITIALISED weights (gaze is meaningless)")
    model = AutoGaze(GazeConfig(), seed=args.seed)
  thr = None if np.isnan(args.task_loss_requirement) else args.task_loss_requirement
  vit = make_vit(args, model) if args.vit else None
  if args.videos:
    return run_dataset(args, model, thr, vit, keys, source)
  return run_video(args, model, thr, vit)


def _settings(args, thr) -> dict:
  import jax
  from autogaze_jax.gaze_dataset import local_sharding
  sharding = local_sharding(args.batch_tiles)
  devs = jax.local_devices()
  if sharding is None and len(devs) > 1 and devs[0].platform != "cpu":
    logging.warning(f"WARNING: {len(devs)} local devices but --batch_tiles={args.batch_tiles} is not a multiple of "
                    f"{len(devs)}: tiles run on one device (pass e.g. --batch_tiles={4 * len(devs)})")
  return dict(gazing_ratio=args.gazing_ratio, task_loss_requirement=thr, resize=args.resize,
              batch_tiles=args.batch_tiles, max_frames=args.max_frames, coupled=args.coupled,
              generate_only=args.generate_only,
              sharding=sharding)


def run_video(args, model, thr, vit):
  from autogaze_jax.evaluation.writers import _fmt
  from autogaze_jax.gaze.stream_video import FrameReader, VideoError
  from autogaze_jax.gaze_dataset import GazeOutputError, Overview, gaze_video
  if args.video:
    name = args.video
    try:
      reader = FrameReader(args.video, args.max_frames)
    except VideoError as e:
      raise _video_error(e) from None
  else:
    from data_pipelines.synthetic import make_clip
    name = "<generated clip>"
    reader = FrameReader(make_clip(0, 0), args.max_frames)
  overview, kept = Overview(), []
  stop = None
  if args.stop_after_chunks:
    n = [0]
    stop = lambda: (n.__setitem__(0, n[0] + 1), n[0] >= args.stop_after_chunks)[1]  # noqa: E731
  try:
    meta = gaze_video(model, reader, os.path.join(args.out, "records"), name=name, vit=vit, overview=overview,
                      kept_per_frame=kept, stop_after_chunks=stop, **_settings(args, thr))
  except VideoError as e:
    raise _video_error(e) from None
  except GazeOutputError as e:
    raise SystemExit(f"error: {e}") from None
  except ValueError as e:
    raise SystemExit(f"error: {e}") from None
  if meta["truncated_at_frame"] is not None:
    logging.warning(f"WARNING: {name}: {meta['decode_error']}; gazed the {meta['frames']} frames decoded before it")
  h, w = meta["input_size"]
  summary = {"video": name, "frames": meta["frames"], "height": h, "width": w, "resize": args.resize,
             "gazed_height": meta["canvas_size"][0], "gazed_width": meta["canvas_size"][1],
             "truncated_at_frame": meta["truncated_at_frame"],
             "tiling": {"clip_len": meta["clip_len"], "tile": meta["tile"], "temporal": meta["temporal"],
                        "rows": meta["rows"], "cols": meta["cols"]},
             "num_tiles": meta["num_tiles"], "gazing_ratio": args.gazing_ratio, "task_loss_requirement": thr,
             "kept_ratio": meta["kept_ratio"], "kept_ratio_per_frame": kept, "records": "records",
             "seconds": meta["seconds"], "tiles_per_s": meta["tiles_per_s"]}
  write_outputs(args.out, {"gaze.json": _write_json(summary),
                           "gaze.png": lambda p: overview.write(p, None),
                           "gaze.gif": lambda p: overview.write(None, p)})
  cut = f" (decoding stopped at frame {meta['truncated_at_frame']})" if meta["truncated_at_frame"] is not None else ""
  print(f"gazed {meta['frames']} frames{cut} of {w}x{h} in {meta['num_tiles']} tiles ({args.resize}): kept "
        f"{100 * meta['kept_ratio']:.1f}% of patches ({_fmt(meta['seconds'])}, {meta['tiles_per_s']:.1f} tiles/s) -> "
        f"{args.out}/records, gaze.json, gaze.png, gaze.gif")
  if vit is not None:
    report_vit(args, vit)
  return 0


def make_vit(args, model):
  """--vit: a named random-init ViT or SigLIP weights, wrapped to embed each chunk in the stream."""
  from autogaze_jax.gaze_dataset import VitEmbedder
  from autogaze_jax.vit import model as gv
  from autogaze_jax.vit import pipeline as vp
  if args.vit in gv.NAMED:
    logging.warning(f"WARNING: --vit={args.vit}: RANDOMLY INITIALISED SigLIP-style ViT (timings only)")
    handle = vp.GazedViT.named(args.vit, seed=args.seed)
  else:
    try:
      handle = vp.GazedViT.from_pretrained(args.vit)
    except (ValueError, OSError) as e:   # CheckpointError is a ValueError: one line
      raise SystemExit(f"error: --vit={args.vit}: {e}")
  try:
    return VitEmbedder(handle, model.cfg, args.gazing_ratio, batch_tiles=args.batch_tiles)
  except ValueError as e:
    raise SystemExit(f"error: --vit: {e}")


def report_vit(args, vit):
  rep = {"vit": args.vit, "capacity": vit.capacity, "tiles": vit.tiles, "kept_tokens": vit.kept_tokens,
         "vit_tokens": vit.vit_tokens, "full_tokens": vit.full_tokens, "timings": {"vit_s": vit.seconds},
         "embeddings": "records/vit-*.npz"}
  write_outputs(args.out, {"vit.json": _write_json(rep)})
  print(f"vit {args.vit}: {vit.kept_tokens} gazed tokens ({vit.capacity} slots/frame) vs {vit.full_tokens} tokens "
        f"of the full-token ViT on the same {vit.tiles} tiles; gazed ViT {vit.seconds:.3f}s in the stream -> "
        f"{args.out}/records/vit-*.npz, vit.json")


def dataset_items(args):
  """--videos -> (keys, source(i)): the files under a dir (keys: paths relative to it), or the clips of an
  ArrayRecord dataset (keys: their video_path)."""
  root = args.videos
  if not os.path.isdir(root):
    raise SystemExit(f"error: --videos {root!r} is not a directory (a folder of videos or an ArrayRecord dataset)")
  from data_pipelines.sources import DATASET_NAME
  if os.path.isdir(os.path.join(root, DATASET_NAME)):
    from data_pipelines.sources import ArrayRecordSource
    try:
      src = ArrayRecordSource(root, args.split)
    except ValueError as e:
      raise SystemExit(f"error: --videos {root!r}: {e}")
    keys = src.paths()
    if len(set(keys)) != len(keys):   # a video split into several records: keep them apart
      keys = [f"{k}#{i}" for i, k in enumerate(keys)]
    def record(i):
      from autogaze_jax.gaze.stream_video import VideoError
      try:
        return src[i]["frames"]
      except Exception as e:  # noqa: BLE001  an unreadable record is a counted skip like an unreadable file
        raise VideoError(keys[i], "open_error", f"cannot read record {i} of {root}: {e}") from None
    return keys, record
  from autogaze_jax.gaze.stream_video import list_video_files
  keys = list_video_files(root)
  if not keys:
    raise SystemExit(f"error: --videos {root!r} holds no video files (.mp4/.mov/.webm/.mkv/.avi/.npz)")
  return keys, lambda i: os.path.join(root, keys[i])


def run_dataset(args, model, thr, vit, keys, source):
  from autogaze_jax.gaze_dataset import GazeOutputError, gaze_dataset
  try:
    summary = gaze_dataset(model, keys, source, args.out, vit=vit, stop_after_chunks=args.stop_after_chunks,
                           **_settings(args, thr))
  except GazeOutputError as e:
    raise SystemExit(f"error: {e}") from None
  except ValueError as e:
    raise SystemExit(f"error: {e}") from None
  if summary is not None:
    print(json.dumps(summary, indent=1))
  else:
    print(f"this host's videos are done; the last host to finish writes {args.out}/summary.json")
  if vit is not None and vit.tiles:
    report_vit(args, vit)
  return 0


if __name__ == "__main__":
  sys.exit(main())
