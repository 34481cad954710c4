"""Builds small (good and bad) video files on the fly for the data tests.

Each frame t of a "good" clip is a flat color whose value encodes t (value = 20 + 10*t), so tests can
tell which source frames were sampled even through lossy codecs (tolerance ~3 levels).
"""
from __future__ import annotations

import os

import numpy as np


def frame_value(t: int) -> int:
  return 20 + 10 * t


def ramp_frames(n: int, h: int = 32, w: int = 32) -> np.ndarray:
  """uint8 (n, h, w, 3): frame t is flat `frame_value(t)` (with a small per-channel offset)."""
  v = np.asarray([frame_value(t) for t in range(n)], np.uint8)
  f = np.broadcast_to(v[:, None, None, None], (n, h, w, 3)).copy()
  f[..., 1] = np.clip(f[..., 1].astype(int) + 5, 0, 255)
  return f


def write_video(path: str, frames: np.ndarray, codec: str = "libx264", pix_fmt: str = "yuv420p",
                in_format: str = "rgb24", fps: int = 24, faststart: bool = False) -> str:
  import av
  with av.open(path, "w", options={"movflags": "faststart"} if faststart else None) as c:
    s = c.add_stream(codec, rate=fps)
    s.width, s.height, s.pix_fmt = frames.shape[2], frames.shape[1], pix_fmt
    if codec == "libx264":
      s.options = {"preset": "ultrafast", "crf": "10", "threads": "1"}
    for f in frames:
      for p in s.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format=in_format)):
        c.mux(p)
    for p in s.encode():
      c.mux(p)
  return path


def write_audio_only(path: str) -> str:
  import av
  with av.open(path, "w") as c:
    s = c.add_stream("aac", rate=16000)
    s.layout = "mono"
    samples = (np.sin(np.arange(16000) / 10) * 3000).astype(np.float32)[None]
    for i in range(0, 16000, 1024):
      fr = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples[:, i:i + 1024]), format="fltp", layout="mono")
      fr.sample_rate = 16000
      for p in s.encode(fr):
        c.mux(p)
    for p in s.encode():
      c.mux(p)
  return path


def make_bad_zoo(d: str) -> dict[str, str]:
  """One file per bad-input kind (and a good one) in directory `d`; returns {kind: path}."""
  os.makedirs(d, exist_ok=True)
  p = lambda n: os.path.join(d, n)  # noqa: E731
  zoo = {"good": write_video(p("a_good.mp4"), ramp_frames(20))}
  zoo["short"] = write_video(p("b_short.mp4"), ramp_frames(5))
  # Odd, non-square: x264/yuv420p needs even sizes, FFV1 in Matroska takes any size.
  zoo["odd_nonsquare"] = write_video(p("c_odd.mkv"), ramp_frames(18, 225, 301), codec="ffv1", pix_fmt="bgr0")
  gray = ramp_frames(17)[..., 0]
  zoo["gray"] = write_video(p("d_gray.mkv"), gray, codec="ffv1", pix_fmt="gray", in_format="gray")
  rgba = np.concatenate([ramp_frames(17), np.full((17, 32, 32, 1), 128, np.uint8)], -1)
  zoo["alpha"] = write_video(p("e_alpha.mkv"), rgba, codec="ffv1", pix_fmt="yuva420p", in_format="rgba")
  zoo["webm"] = write_video(p("f_vp9.webm"), ramp_frames(17), codec="libvpx-vp9", pix_fmt="yuv420p")
  with open(p("g_zero.mp4"), "wb"):
    pass
  zoo["zero_length"] = p("g_zero.mp4")
  with open(p("h_corrupt.mp4"), "wb") as f:
    f.write(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
  zoo["corrupt"] = p("h_corrupt.mp4")
  good = open(zoo["good"], "rb").read()
  with open(p("i_truncated.mp4"), "wb") as f:
    f.write(good[: len(good) // 2])
  zoo["truncated"] = p("i_truncated.mp4")
  # Index at the front (faststart), media data cut: opens, then the decoder hits the cut.
  fs = open(write_video(p("k_src.mp4"), ramp_frames(20), faststart=True), "rb").read()
  os.remove(p("k_src.mp4"))
  with open(p("k_truncated_faststart.mp4"), "wb") as f:
    f.write(fs[: int(len(fs) * 0.6)])
  zoo["truncated_faststart"] = p("k_truncated_faststart.mp4")
  zoo["audio_only"] = write_audio_only(p("j_audio.mp4"))
  return zoo
