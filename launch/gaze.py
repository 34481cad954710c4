"""Gaze a video and draw what the model looks at.

  python -m launch.gaze --checkpoint=DIR --video=FILE --out=OUTDIR [--gazing_ratio=0.75]
                        [--task_loss_requirement=0.7] [--batch_tiles=N] [--vit=tiny|base|PATH]

FILE: .mp4/.mov/.webm/.mkv (decoded with PyAV) or .npz with uint8 frames (T, H, W, 3) under `frames`.
Videos of any size/length are cut into 16x224x224 tiles, gazed in batches of tiles, and merged.
Writes OUTDIR/gaze.json (per-tile outputs as lists, video size, tiling, kept-token ratio per frame and
overall), OUTDIR/gaze.png (original + overlay rows) and OUTDIR/gaze.gif, and prints a one-line summary.
Without --checkpoint it uses randomly initialised weights (with a warning); without --video it gazes a
generated clip. With --vit the gazed tiles also go through a SigLIP-style ViT (a named random-init
config, or local HF SigLIP weights: .safetensors/.npz file or dir) that embeds only the gazed patches,
timed against the full-token ViT on the same tiles; writes OUTDIR/vit.json and prints kept tokens + times.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time

import numpy as np


def read_video(path: str, max_frames: int | None = None) -> np.ndarray:
  """uint8 (T, H, W, 3) from a video file or an .npz (`frames`); clear errors for unreadable input."""
  if not os.path.isfile(path):
    raise SystemExit(f"error: video file {path!r} does not exist")
  if path.endswith(".npz"):
    try:
      with np.load(path) as d:
        if "frames" not in d.files:
          raise SystemExit(f"error: {path} has no array 'frames' (found {d.files})")
        frames = d["frames"]
    except (OSError, ValueError) as e:
      raise SystemExit(f"error: cannot read {path} as .npz: {e}")
  else:
    import av
    try:
      with av.open(path) as c:
        if not c.streams.video:
          raise SystemExit(f"error: {path} has no video stream")
        frames = []
        for f in c.decode(video=0):
          frames.append(f.to_ndarray(format="rgb24"))
          if max_frames and len(frames) >= max_frames:
            break
    except av.FFmpegError as e:
      raise SystemExit(f"error: cannot decode {path}: {e}")
    frames = np.stack(frames) if frames else np.zeros((0, 1, 1, 3), np.uint8)
  if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
    raise SystemExit(f"error: {path}: expected uint8 frames (T, H, W, 3), got {frames.dtype} {frames.shape}")
  if frames.shape[0] == 0:
    raise SystemExit(f"error: {path} has no decodable frames")
  return frames


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
  ap.add_argument("--checkpoint", help="official-format checkpoint dir (config.json + model.safetensors)")
  ap.add_argument("--video", help="video file or .npz with uint8 `frames` (default: a generated clip)")
  ap.add_argument("--out", required=True, help="output directory")
  ap.add_argument("--gazing_ratio", type=float, default=0.75, help="max fraction of the 265 patches per frame")
  ap.add_argument("--task_loss_requirement", type=float, default=0.7,
                  help="stop a frame when the predicted reconstruction loss is <= this; 'nan' disables")
  ap.add_argument("--batch_tiles", type=int, default=None, help="tiles per compiled batch (default: all)")
  ap.add_argument("--max_frames", type=int, default=None, help="decode at most this many frames")
  ap.add_argument("--coupled", action="store_true", help="official batch coupling of tiles (parity mode)")
  ap.add_argument("--seed", type=int, default=0, help="init seed without --checkpoint")
  ap.add_argument("--vit", help="gazed ViT after the gaze: tiny | base | so400m (random init) or a SigLIP "
                                "weights file/dir (HF names); prints kept tokens and time vs the full-token ViT")
  args = ap.parse_args(argv)
  logging.basicConfig(level=logging.INFO, format="%(message)s")

  from autogaze_jax import AutoGaze, GazeConfig
  from autogaze_jax.evaluation import viz
  from autogaze_jax.core.patches import ScaleLayout
  if args.checkpoint:
    model = AutoGaze.from_pretrained(args.checkpoint)
  else:
    logging.warning("WARNING: no --checkpoint given: using RANDOMLY INITIALISED weights (gaze is meaningless)")
    model = AutoGaze(GazeConfig(), seed=args.seed)
  if args.video:
    frames = read_video(args.video, args.max_frames)
  else:
    from data_pipelines.synthetic import make_clip
    frames = make_clip(0, 0)
  thr = None if np.isnan(args.task_loss_requirement) else args.task_loss_requirement
  t0 = time.perf_counter()
  try:
    res = model.gaze(frames, args.gazing_ratio, thr, batch_tiles=args.batch_tiles, coupled=args.coupled)
  except ValueError as e:
    raise SystemExit(f"error: {e}")
  dt = time.perf_counter() - t0
  os.makedirs(args.out, exist_ok=True)
  tl = res["tiling"]
  summary = {"video": args.video or "<generated clip>", "frames": int(frames.shape[0]),
             "height": int(frames.shape[1]), "width": int(frames.shape[2]),
             "tiling": {"clip_len": tl.clip_len, "tile": tl.tile, "temporal": tl.nt, "rows": tl.nh, "cols": tl.nw},
             "gazing_ratio": args.gazing_ratio, "task_loss_requirement": thr,
             "kept_ratio": res["kept_ratio"], "kept_ratio_per_frame": res["kept_ratio_per_frame"],
             "seconds": dt, "tiles": res["tiles"]}
  with open(os.path.join(args.out, "gaze.json"), "w") as f:
    json.dump(_jsonable(summary), f, allow_nan=False)
  overlay = viz_overlay(frames, res, model, ScaleLayout.from_gaze_config(model.cfg), viz)
  viz.save_png_grid(os.path.join(args.out, "gaze.png"), [frames[:16], overlay[:16]], ["original", "gaze"])
  viz.save_gif(os.path.join(args.out, "gaze.gif"), np.concatenate([frames, overlay], axis=2))
  print(f"gazed {frames.shape[0]} frames of {frames.shape[2]}x{frames.shape[1]} in {tl.num_tiles} tiles: "
        f"kept {100 * res['kept_ratio']:.1f}% of patches ({dt:.1f}s) -> {args.out}/gaze.json, gaze.png, gaze.gif")
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
    except (ValueError, OSError) as e:
      raise SystemExit(f"error: --vit={args.vit}: {e}")
  thr = None if np.isnan(args.task_loss_requirement) else args.task_loss_requirement
  try:
    rep = vp.gaze_then_vit(model, vit, frames, args.gazing_ratio, thr, batch_tiles=args.batch_tiles, gaze_result=res)
  except ValueError as e:
    raise SystemExit(f"error: --vit: {e}")
  tm = rep["timings"]
  with open(os.path.join(args.out, "vit.json"), "w") as f:
    json.dump(_jsonable({k: rep[k] for k in ("capacity", "tiles", "kept_tokens", "vit_tokens", "full_tokens")}
                        | {"vit": args.vit, "timings": tm}), f, allow_nan=False)
  print(f"vit {args.vit}: {rep['kept_tokens']} gazed tokens ({rep['capacity']} slots/frame) vs {rep['full_tokens']} "
        f"tokens of the full-token ViT on the same {rep['tiles']} tiles; gazed ViT {tm['vit_s']:.3f}s vs full-token "
        f"ViT {tm['full_vit_s']:.3f}s -> {tm['speedup']:.2f}x")


def viz_overlay(frames, res, model, layout, viz):
  """Draw the stitched video-level masks: every tile's gazing_pos, tile by tile, at its place."""
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
