"""Embedded default dataset: procedurally generated videos, written as real .mp4 files with PyAV.

`ensure_synthetic(...)` returns a folder in the official layout (`<root>/train/*.mp4`,
`<root>/val/*.mp4`), generating it on first use under a cache dir keyed by a hash of the
parameters (deterministic from `seed`, no downloads; ~200 clips in well under a minute).

Content is built so that gaze has structure to learn: a large low-frequency textured canvas seen
through a moving camera (static, pan, zoom, pan+zoom), 1-4 objects with fine textures (checker,
stripes, noise) that move or pause, whole-clip static stretches, and scene cuts (everything
re-drawn mid-clip). Still regions vs motion and fine vs coarse detail are thus all present.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile

import numpy as np

from autogaze_jax.labels.format import NUM_FRAMES, TOKENS_PER_FRAME

GENERATOR_VERSION = 1  # bump when the content changes: it is part of the cache key


@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
  num_clips: int = 200
  val_fraction: float = 0.1
  size: int = 224            # square frames (the official data is square)
  min_frames: int = 20       # >= 16 so a clip never needs padding
  max_frames: int = 32
  fps: int = 24
  seed: int = 0
  crf: int = 18              # x264 quality; visually lossless enough for reconstruction targets

  def key(self) -> str:
    blob = json.dumps({**dataclasses.asdict(self), "v": GENERATOR_VERSION}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def default_cache_dir() -> str:
  return os.environ.get("AUTOGAZE_JAX_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "autogaze_jax"))


def _smooth_noise(rng, h, w, cells, channels=3):
  """Low-frequency color field: a (cells x cells) random grid upsampled bicubically (PIL)."""
  from PIL import Image
  small = rng.integers(0, 256, (cells, cells, channels), dtype=np.uint8)
  return np.asarray(Image.fromarray(small).resize((w, h), Image.BICUBIC)).astype(np.float32)


def _canvas(rng, c):
  """Background canvas (c, c, 3) float32: smooth color blobs, optionally a coarse grating."""
  img = _smooth_noise(rng, c, c, int(rng.integers(3, 9)))
  if rng.random() < 0.5:
    yy, xx = np.mgrid[0:c, 0:c].astype(np.float32)
    theta, period = rng.uniform(0, np.pi), rng.uniform(20, 60)
    g = np.sin((xx * np.cos(theta) + yy * np.sin(theta)) * 2 * np.pi / period)
    img = img * 0.7 + (g[..., None] * 0.5 + 0.5) * rng.uniform(0, 255, 3) * 0.3
  return img


def _object(rng, size):
  r = int(rng.integers(max(3, size // 22), max(4, size * 9 // 56)))  # 10..35 px at 224
  kind = rng.choice(["checker", "stripes", "noise"])
  period = int(rng.integers(2, 7))  # fine detail: 2-6 px
  c1, c2 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
  yy, xx = np.mgrid[-r:r, -r:r]
  if kind == "checker":
    pat = ((xx // period + yy // period) % 2).astype(np.float32)
  elif kind == "stripes":
    pat = ((xx + yy) // period % 2).astype(np.float32)
  else:
    pat = rng.random((2 * r, 2 * r)).astype(np.float32)
  tex = pat[..., None] * c1 + (1 - pat[..., None]) * c2
  mask = (xx ** 2 + yy ** 2 <= r * r) if rng.random() < 0.5 else np.ones_like(xx, bool)
  pos = rng.uniform(r, size - r, 2)
  vel = rng.uniform(-6, 6, 2) * (rng.random() < 0.8)
  pause = sorted(rng.integers(0, 40, 2))  # frames [a, b) standing still
  return {"r": r, "tex": tex, "mask": mask, "pos": pos, "vel": vel, "pause": pause}


def _scene(rng, size, n_frames):
  c = int(size * 1.6)
  mode = rng.choice(["static", "pan", "zoom", "panzoom"])
  z0 = rng.uniform(0.8, 1.5)
  z1 = z0 if mode in ("static", "pan") else np.clip(z0 * rng.uniform(0.6, 1.6), 0.6, 1.55)
  v = rng.uniform(-4, 4, 2) if mode in ("pan", "panzoom") else np.zeros(2)
  return {"canvas": _canvas(rng, c), "c": c, "z": np.linspace(z0, z1, n_frames), "v": v,
          "center": np.full(2, c / 2) + rng.uniform(-c / 8, c / 8, 2),
          "objects": [_object(rng, size) for _ in range(int(rng.integers(1, 5)))]}


def _render(scene, t, size):
  """Frame t of a scene: camera crop of the canvas (nearest sampling) + objects. -> uint8 (size, size, 3)."""
  c, z = scene["c"], scene["z"][t]
  center = np.clip(scene["center"] + scene["v"] * t, size * z / 2, c - size * z / 2 - 1)
  coords = (np.arange(size) - size / 2) * z
  rows = np.clip((center[0] + coords).astype(np.int64), 0, c - 1)
  cols = np.clip((center[1] + coords).astype(np.int64), 0, c - 1)
  img = scene["canvas"][rows[:, None], cols[None, :]].copy()
  for o in scene["objects"]:
    a, b = o["pause"]
    moving_t = min(t, a) + max(0, t - b)  # time spent moving (still during [a, b))
    p = o["pos"] + o["vel"] * moving_t
    # Bounce inside the frame: reflect the unbounded trajectory.
    lo, hi = o["r"], size - o["r"]
    p = lo + np.abs(((p - lo) % (2 * (hi - lo))) - (hi - lo)) if hi > lo else np.full(2, size / 2)
    y0, x0 = int(p[0]) - o["r"], int(p[1]) - o["r"]
    sl = (slice(y0, y0 + 2 * o["r"]), slice(x0, x0 + 2 * o["r"]))
    region = img[sl]
    m = o["mask"][:region.shape[0], :region.shape[1]]
    region[m] = o["tex"][:region.shape[0], :region.shape[1]][m]
  return np.clip(img, 0, 255).astype(np.uint8)


def make_clip(seed: int, index: int, cfg: SyntheticConfig = SyntheticConfig()) -> np.ndarray:
  """Frames of synthetic clip `index`: uint8 (T, size, size, 3), T in [min_frames, max_frames]."""
  rng = np.random.default_rng([seed, index])
  n = int(rng.integers(cfg.min_frames, cfg.max_frames + 1))
  cut = int(rng.integers(6, n - 4)) if rng.random() < 0.3 else n  # scene cut at frame `cut`
  static = rng.random() < 0.15                                     # whole clip frozen
  scenes = [_scene(rng, cfg.size, n), _scene(rng, cfg.size, n)]
  frames = []
  for t in range(n):
    s, tt = (scenes[0], t) if t < cut else (scenes[1], t - cut)
    frames.append(_render(s, 0 if static else tt, cfg.size))
  return np.stack(frames)


def write_mp4(path: str, frames: np.ndarray, fps: int = 24, crf: int = 18) -> None:
  """uint8 (T, H, W, 3) -> H.264 mp4 (yuv420p, single-threaded x264 so the bytes are reproducible)."""
  import av
  with av.open(path, "w") as c:
    s = c.add_stream("libx264", rate=fps)
    s.width, s.height, s.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
    s.options = {"preset": "ultrafast", "crf": str(crf), "threads": "1"}
    for f in frames:
      for p in s.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")):
        c.mux(p)
    for p in s.encode():
      c.mux(p)


def ensure_synthetic(cfg: SyntheticConfig = SyntheticConfig(), cache_dir: str | None = None) -> str:
  """Path of the generated dataset root (`train/`, `val/`, `manifest.json`); generates it if missing.
  Generation writes to a temp dir and renames it, so concurrent or interrupted runs never leave a
  half-written dataset behind."""
  cache_dir = cache_dir or default_cache_dir()
  root = os.path.join(cache_dir, f"synthetic-{cfg.key()}")
  if os.path.isfile(os.path.join(root, "manifest.json")):
    return root
  os.makedirs(cache_dir, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=".synthetic-tmp-", dir=cache_dir)
  try:
    n_val = int(round(cfg.num_clips * cfg.val_fraction))
    names = {"train": [], "val": []}
    for split in names:
      os.makedirs(os.path.join(tmp, split))
    for i in range(cfg.num_clips):
      split = "val" if i >= cfg.num_clips - n_val else "train"
      name = f"clip_{i:05d}.mp4"
      write_mp4(os.path.join(tmp, split, name), make_clip(cfg.seed, i, cfg), cfg.fps, cfg.crf)
      names[split].append(name)
    with open(os.path.join(tmp, "manifest.json"), "w") as f:
      json.dump({"config": dataclasses.asdict(cfg), "generator_version": GENERATOR_VERSION,
                 "splits": {k: len(v) for k, v in names.items()}}, f, indent=1)
    try:
      os.rename(tmp, root)
    except OSError:  # another process won the race; its copy is identical
      if not os.path.isfile(os.path.join(root, "manifest.json")):
        raise
  finally:
    if os.path.isdir(tmp):
      shutil.rmtree(tmp, ignore_errors=True)
  return root


def random_labels(video_keys, *, seed: int = 0, num_frames: int = NUM_FRAMES, max_tokens_per_frame: int = 8,
                  tokens_per_frame: int = TOKENS_PER_FRAME) -> dict[str, dict]:
  """Valid toy labels in the official format (for smoke NTP runs and tests, not for learning):
  1..K unique ids per frame in [265t, 265t+265), losses decreasing from ~1 to ~0.5."""
  out = {}
  for j, k in enumerate(sorted(video_keys)):
    rng = np.random.default_rng([seed, j])
    gp, tl = [], []
    for t in range(num_frames):
      n = int(rng.integers(1, max_tokens_per_frame + 1))
      gp.append([int(x) + tokens_per_frame * t for x in rng.choice(tokens_per_frame, n, replace=False)])
      tl.append([round(float(x), 6) for x in np.sort(rng.uniform(0.5, 1.0, n))[::-1]])
    out[k] = {"gazing_pos": gp, "task_losses": tl}
  return out
