"""Gaze a video and draw what the model looks at.

  python -m launch.gaze --checkpoint=DIR_OR_HUB_ID --video=FILE --out=OUTDIR [--gazing_ratio=0.75]
                        [--task_loss_requirement=0.7] [--resize=native|shortest_edge_224]
                        [--batch_tiles=N] [--max_frames=N] [--vit=tiny|base|PATH]

--checkpoint: an official-format dir or a hub id ("nvidia/AutoGaze", "org/name@revision") fetched
through huggingface_hub's cache (HF_HOME, HF_HUB_OFFLINE honoured).
FILE: .mp4/.mov/.webm/.mkv (decoded with PyAV) or .npz with uint8 frames (T, H, W, 3) under `frames`;
--max_frames keeps the first N frames of either. A video whose decoding fails after some frames keeps
the frames decoded before the error (a warning names the frame; gaze.json says "truncated_at_frame").
--resize=native (default): the video keeps its resolution and is cut into 16x224x224 tiles, gazed in
batches of tiles, and merged; a video smaller than a tile is first resized to 224 on its shortest edge.
--resize=shortest_edge_224: the official QUICK_START basic path: shortest edge to 224, the model
squashes each frame to 224x224, one tile per 16 frames.
Writes OUTDIR/gaze.json (per-tile outputs as lists, video size, tiling, kept-token ratio per frame and
overall, counting only patches over real pixels), OUTDIR/gaze.png (original + overlay rows, on the
frames as gazed) and OUTDIR/gaze.gif, and prints a one-line summary. OUTDIR is checked for
writability and free space before anything is computed, and each output appears whole or not at all
(written to a temporary name, renamed once all three are written).
Without --checkpoint it uses randomly initialised weights (with a warning); without --video it gazes a
generated clip. With --vit the gazed tiles also go through a SigLIP-style ViT (a named random-init
config, or HF SigLIP weights: .safetensors/.npz file, dir or hub id) that embeds only the gazed patches,
timed against the full-token ViT on the same tiles; writes OUTDIR/vit.json and prints kept tokens + times.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import time

import numpy as np


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


def output_bytes(frames: np.ndarray, resize: str) -> int:
  """About the size of gaze.json + gaze.png + gaze.gif for these frames: the GIF holds original + overlay
  side by side at one byte a pixel, the PNG 16 frames of each at three, both credited 2x compression
  (dimmed overlays compress well); the JSON ~64 bytes a gaze slot of 265 per frame and tile."""
  t, h, w = frames.shape[:3]
  if resize == "shortest_edge_224":
    h = w = 224
  elif min(h, w) < 224:
    h, w = (224, int(224 * w / h)) if h <= w else (int(224 * h / w), 224)
  tiles_per_frame = -(-h // 224) * -(-w // 224)
  return int((t * h * w * 2 + 2 * min(t, 16) * h * w * 3) // 2 + t * tiles_per_frame * 265 * 64 + (1 << 20))


def write_outputs(out: str, writers: dict) -> None:
  """{name: write(path)}: every file is written under a temporary name in `out`, then all are renamed,
  so a full disk or a crash leaves no output at all rather than a gaze.json without its pictures."""
  tmp = {name: os.path.join(out, f".{name}.partial") for name in writers}
  try:
    for name, write in writers.items():
      write(tmp[name])
    for name in writers:
      os.replace(tmp[name], os.path.join(out, name))
  except OSError as e:
    free = shutil.disk_usage(out).free if os.path.isdir(out) else 0
    raise SystemExit(f"error: writing {out}: {e.strerror or e} ({free / 2**20:.1f} MiB free); nothing was written")
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


def main(argv=None):
  ap = argparse.ArgumentParser(prog="python -m launch.gaze", description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--checkpoint", help="official-format checkpoint dir (config.json + model.safetensors) or a hub "
                                       "id (nvidia/AutoGaze, org/name@revision)")
  ap.add_argument("--video", help="video file or .npz with uint8 `frames` (default: a generated clip)")
  ap.add_argument("--out", required=True, help="output directory")
  ap.add_argument("--gazing_ratio", type=float, default=0.75, help="max fraction of the 265 patches per frame")
  ap.add_argument("--task_loss_requirement", type=float, default=0.7,
                  help="stop a frame when the predicted reconstruction loss is <= this; 'nan' disables")
  ap.add_argument("--resize", choices=("native", "shortest_edge_224"), default="native",
                  help="native: 224x224 tiles at the video's resolution (small videos brought up to 224); "
                       "shortest_edge_224: the official basic path (shortest edge 224, squashed to 224x224)")
  ap.add_argument("--batch_tiles", type=int, default=None, help="tiles per compiled batch (default: all)")
  ap.add_argument("--max_frames", type=int, default=None, help="use at most this many (first) frames")
  ap.add_argument("--coupled", action="store_true", help="official batch coupling of tiles (parity mode)")
  ap.add_argument("--seed", type=int, default=0, help="init seed without --checkpoint")
  ap.add_argument("--vit", help="gazed ViT after the gaze: tiny | base | so400m (random init) or SigLIP weights: "
                                "a file/dir (HF names) or a hub id (google/siglip2-base-patch16-224); prints kept "
                                "tokens and time vs the full-token ViT")
  args = ap.parse_args(argv)
  logging.basicConfig(level=logging.INFO, format="%(message)s")
  if args.max_frames is not None and args.max_frames < 1:
    raise SystemExit(f"error: --max_frames must be >= 1, got {args.max_frames}")

  check_out_dir(args.out, 0)             # unwritable: found before decoding or loading anything
  truncated = None
  if args.video:
    frames, truncated = read_video(args.video, args.max_frames)
  else:
    from data_pipelines.synthetic import make_clip
    frames = make_clip(0, 0)[:args.max_frames]
  check_out_dir(args.out, output_bytes(frames, args.resize))   # too little space: found before gazing

  from autogaze_jax import AutoGaze, GazeConfig
  from autogaze_jax.evaluation import viz
  from autogaze_jax.core.patches import ScaleLayout
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
  t0 = time.perf_counter()
  try:
    res = model.gaze(frames, args.gazing_ratio, thr, resize=args.resize, batch_tiles=args.batch_tiles,
                     coupled=args.coupled)
  except ValueError as e:
    raise SystemExit(f"error: {e}")
  dt = time.perf_counter() - t0
  tl = res["tiling"]
  canvas = res["frames"]   # the frames as gazed (upsized small video, or 224x224 for shortest_edge_224)
  summary = {"video": args.video or "<generated clip>", "frames": int(frames.shape[0]),
             "height": int(frames.shape[1]), "width": int(frames.shape[2]), "resize": args.resize,
             "gazed_height": int(canvas.shape[1]), "gazed_width": int(canvas.shape[2]),
             "truncated_at_frame": truncated,
             "tiling": {"clip_len": tl.clip_len, "tile": tl.tile, "temporal": tl.nt, "rows": tl.nh, "cols": tl.nw},
             "gazing_ratio": args.gazing_ratio, "task_loss_requirement": thr,
             "kept_ratio": res["kept_ratio"], "kept_ratio_per_frame": res["kept_ratio_per_frame"],
             "seconds": dt, "tiles": res["tiles"]}
  overlay = viz_overlay(canvas, res, model, ScaleLayout.from_gaze_config(model.cfg), viz)
  write_outputs(args.out, {
      "gaze.json": _write_json(summary),
      "gaze.png": lambda p: viz.save_png_grid(p, [canvas[:16], overlay[:16]], ["original", "gaze"]),
      "gaze.gif": lambda p: viz.save_gif(p, np.concatenate([canvas, overlay], axis=2))})
  cut = f" (decoding stopped at frame {truncated})" if truncated is not None else ""
  print(f"gazed {frames.shape[0]} frames{cut} of {frames.shape[2]}x{frames.shape[1]} in {tl.num_tiles} tiles "
        f"({args.resize}): kept {100 * res['kept_ratio']:.1f}% of patches ({dt:.1f}s) -> {args.out}/gaze.json, "
        "gaze.png, gaze.gif")
  if args.vit:
    run_vit(args, model, frames, res)
  return 0


def run_vit(args, model, frames, res):
  """--vit: the gazed ViT on this gaze (autogaze_jax.vit.pipeline.gaze_then_vit), timed vs full-token."""
  from autogaze_jax.vit import model as gv
  from autogaze_jax.vit import pipeline as vp
  if args.vit in gv.NAMED:
    logging.warning(f"WARNING: --vit={args.vit}: RANDOMLY INITIALISED SigLIP-style ViT (timings only)")
    vit = vp.GazedViT.named(args.vit, seed=args.seed)
  else:
    try:
      vit = vp.GazedViT.from_pretrained(args.vit)
    except (ValueError, OSError) as e:   # CheckpointError is a ValueError: one line
      raise SystemExit(f"error: --vit={args.vit}: {e}")
  thr = None if np.isnan(args.task_loss_requirement) else args.task_loss_requirement
  try:
    rep = vp.gaze_then_vit(model, vit, frames, args.gazing_ratio, thr, batch_tiles=args.batch_tiles, gaze_result=res)
  except ValueError as e:
    raise SystemExit(f"error: --vit: {e}")
  tm = rep["timings"]
  write_outputs(args.out, {"vit.json": _write_json(
      {k: rep[k] for k in ("capacity", "tiles", "kept_tokens", "vit_tokens", "full_tokens")}
      | {"vit": args.vit, "timings": tm})})
  print(f"vit {args.vit}: {rep['kept_tokens']} gazed tokens ({rep['capacity']} slots/frame) vs {rep['full_tokens']} "
        f"tokens of the full-token ViT on the same {rep['tiles']} tiles; gazed ViT {tm['vit_s']:.3f}s vs full-token "
        f"ViT {tm['full_vit_s']:.3f}s -> {tm['speedup']:.2f}x")


def viz_overlay(frames, res, model, layout, viz):
  """Draw the stitched video-level masks on the canvas the gaze tiled (`res["frames"]`): every tile's
  gazing_pos, tile by tile, at its place."""
  tl = res["tiling"]
  out = np.array(frames)
  for i, tile in enumerate(res["tiles"]):
    ti, r, c = i // (tl.nh * tl.nw), (i // tl.nw) % tl.nh, i % tl.nw
    t0, y0, x0 = ti * tl.clip_len, r * tl.tile, c * tl.tile
    sub = frames[t0:t0 + tl.clip_len, y0:y0 + tl.tile, x0:x0 + tl.tile]
    th, tw = sub.shape[1:3]
    pad = np.zeros((sub.shape[0], tl.tile, tl.tile, 3), np.uint8)
    pad[:, :th, :tw] = sub
    drawn = viz.gaze_overlay(pad, tile["gazing_pos"][0], tile["if_padded_gazing"][0], layout)
    out[t0:t0 + tl.clip_len, y0:y0 + tl.tile, x0:x0 + tl.tile] = drawn[:, :th, :tw]
  return out


if __name__ == "__main__":
  sys.exit(main())
