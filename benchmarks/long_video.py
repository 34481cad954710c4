"""Long, large videos: streaming gaze (`launch.gaze --video`'s engine) vs today's in-memory `gaze()`.

  python benchmarks/long_video.py [--cases 1080p:64,1080p:256,1080p:1024,2160p:64] [--checkpoint DIR]
                                  [--batch_tiles N] [--generate_only] [--out FILE]

Videos (moving gradients + drifting squares, MPEG-4 at 8 Mbit/s per 1080p) are encoded once with PyAV and
cached in ~/.cache/autogaze_jax/bench. Each case runs in its own subprocess (a fresh peak RSS):
  stream: `autogaze_jax.gaze_dataset.gaze_video` on the file (PyAV decoding frame by frame, 16-frame
          chunks tiled on a prefetch thread, `--batch_tiles` tiles per compiled call, records written per
          chunk, the bounded overview drawn), timed end to end: decoding included;
  memory: `launch.gaze.read_video` (the whole video decoded) then `AutoGaze.gaze(batch_tiles=...)`,
          only where it fits: its estimated peak (uint8 video + float32 copy + float32 tiles) must be
          under half of MemAvailable; `gaze_s` is the gaze alone (decoding excluded), the strictest
          baseline for "decoding is hidden behind compute".
Both compile first on a dummy batch of the same shape (compile time excluded). Reported per case: peak
RSS (ru_maxrss of the child, and its RSS after the model and compile, before the video), tiles, tiles/s,
seconds per 1,000 frames; the load average before and after (a shared 2-core machine is noisy).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

CACHE = os.path.join(os.path.expanduser("~"), ".cache", "autogaze_jax", "bench")
SIZES = {"1080p": (1080, 1920), "2160p": (2160, 3840), "720p": (720, 1280), "480p": (480, 854)}
DEFAULT_CASES = "1080p:64,1080p:256,1080p:1024,2160p:64"


def make_video(size: str, frames: int) -> str:
  """The cached test video (encoded once): smooth gradients moving over time plus bright squares."""
  h, w = SIZES[size]
  path = os.path.join(CACHE, f"{size}_{frames}.mp4")
  if os.path.isfile(path):
    return path
  import av
  os.makedirs(CACHE, exist_ok=True)
  tmp = path + ".partial.mp4"
  yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
  with av.open(tmp, "w") as c:
    s = c.add_stream("mpeg4", rate=30)
    s.width, s.height, s.pix_fmt = w, h, "yuv420p"
    s.bit_rate = int(8e6 * (h * w) / (1080 * 1920))
    for t in range(frames):
      img = np.empty((h, w, 3), np.uint8)
      img[..., 0] = (128 + 127 * np.sin(xx / 97 + t / 9)).astype(np.uint8)
      img[..., 1] = (128 + 127 * np.sin(yy / 61 - t / 13)).astype(np.uint8)
      img[..., 2] = ((xx + yy + 4 * t) % 256).astype(np.uint8)
      for k in range(6):   # squares drifting across the frame: something to gaze at
        cy, cx = int((h * (k + 1) / 7 + 5 * t) % (h - 64)), int((w * ((k * 3) % 7 + 1) / 8 + 9 * t) % (w - 64))
        img[cy:cy + 64, cx:cx + 64] = 255 - 40 * k
      for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
        c.mux(p)
    for p in s.encode():
      c.mux(p)
  os.replace(tmp, path)
  return path


def mem_available() -> int:
  with open("/proc/meminfo") as f:
    for line in f:
      if line.startswith("MemAvailable:"):
        return int(line.split()[1]) * 1024
  return 0


def in_memory_bytes(size: str, frames: int) -> int:
  """uint8 video + its float32 normalised copy + the float32 tiles (padded to whole tiles)."""
  h, w = SIZES[size]
  tiles = -(-frames // 16) * 16 * -(-h // 224) * 224 * -(-w // 224) * 224
  return int(frames * h * w * 3 * (1 + 4) + tiles * 3 * 4)


def rss_now() -> int:
  with open("/proc/self/status") as f:
    for line in f:
      if line.startswith("VmRSS:"):
        return int(line.split()[1]) * 1024
  return 0


# ---------------------------------------------------------------- child: one case
def child(spec: dict) -> dict:
  import jax
  jax.config.update("jax_default_matmul_precision", "highest")
  from autogaze_jax import AutoGaze, GazeConfig
  from autogaze_jax.gaze.generate import generate
  model = AutoGaze.from_pretrained(spec["checkpoint"]) if spec["checkpoint"] else AutoGaze(GazeConfig(), seed=0)
  kw = dict(generate_only=spec["generate_only"])
  h, w = SIZES[spec["size"]]
  bt = spec["batch_tiles"] or -(-h // 224) * -(-w // 224)
  dummy = np.zeros((bt, 16, 3, 224, 224), np.float32)
  t0 = time.perf_counter()
  generate(model, dummy, spec["ratio"], spec["thr"], **kw)     # compile outside the timed part
  compile_s = time.perf_counter() - t0
  del dummy
  base_rss = rss_now()
  out = {"compile_s": round(compile_s, 2), "rss_before_video_mb": round(base_rss / 2**20, 1), "batch_tiles": bt}
  t0 = time.perf_counter()
  if spec["mode"] == "stream":
    from autogaze_jax.gaze_dataset import Overview, gaze_video
    with tempfile.TemporaryDirectory() as d:
      meta = gaze_video(model, spec["path"], d, gazing_ratio=spec["ratio"], task_loss_requirement=spec["thr"],
                        batch_tiles=bt, overview=Overview(), **kw)
    dt = time.perf_counter() - t0
    out.update(frames=meta["frames"], tiles=meta["num_tiles"], seconds=round(dt, 2))
  else:
    from launch.gaze import read_video
    frames, _ = read_video(spec["path"])
    dec = time.perf_counter() - t0
    t1 = time.perf_counter()
    res = model.gaze(frames, spec["ratio"], spec["thr"], batch_tiles=bt, **kw)
    g = time.perf_counter() - t1
    out.update(frames=int(frames.shape[0]), tiles=res["tiling"].num_tiles, decode_s=round(dec, 2),
               gaze_s=round(g, 2), seconds=round(dec + g, 2))
    dt = g
  out["tiles_per_s"] = round(out["tiles"] / dt, 3)
  out["s_per_1000_frames"] = round(1000 * dt / out["frames"], 1)
  out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
  return out


def run_case(spec: dict, timeout: int) -> dict:
  env = dict(os.environ, JAX_PLATFORMS=os.environ.get("JAX_PLATFORMS", "cpu"))
  try:
    p = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", json.dumps(spec)], capture_output=True,
                       text=True, timeout=timeout, env=env)
  except subprocess.TimeoutExpired:
    return {"error": f"timed out after {timeout}s"}
  lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
  if p.returncode != 0 or not lines:
    return {"error": (p.stderr or p.stdout)[-800:]}
  return json.loads(lines[-1])


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--cases", default=DEFAULT_CASES, help="comma-separated SIZE:FRAMES (sizes: %s)" % ", ".join(SIZES))
  ap.add_argument("--checkpoint", default=None, help="gaze checkpoint (default: random-init full-size GazeConfig)")
  ap.add_argument("--batch_tiles", type=int, default=None, help="tiles per call (default: one chunk's tiles)")
  ap.add_argument("--gazing_ratio", type=float, default=0.75)
  ap.add_argument("--task_loss_requirement", type=float, default=0.7)
  ap.add_argument("--generate_only", action="store_true", help="skip the teacher-forced pass (both paths)")
  ap.add_argument("--no_memory", action="store_true", help="skip the in-memory baseline")
  ap.add_argument("--timeout", type=int, default=3600, help="seconds per case")
  ap.add_argument("--out", default=None, help="also write the JSON here")
  ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
  args = ap.parse_args(argv)
  if args.child:
    print(json.dumps(child(json.loads(args.child))))
    return 0
  from benchmarks.common import cpu_model, loadavg
  report = {"benchmark": "long_video", "cpu": cpu_model(), "cores": os.cpu_count(), "loadavg_before": loadavg(),
            "checkpoint": args.checkpoint or "random-init GazeConfig()", "gazing_ratio": args.gazing_ratio,
            "task_loss_requirement": args.task_loss_requirement, "generate_only": args.generate_only,
            "mem_available_mb": round(mem_available() / 2**20), "cases": []}
  thr = None if np.isnan(args.task_loss_requirement) else args.task_loss_requirement
  for case in args.cases.split(","):
    size, frames = case.split(":")
    frames = int(frames)
    t0 = time.perf_counter()
    path = make_video(size, frames)
    spec = {"path": path, "size": size, "checkpoint": args.checkpoint, "batch_tiles": args.batch_tiles,
            "ratio": args.gazing_ratio, "thr": thr, "generate_only": args.generate_only}
    row = {"case": case, "video": path, "encode_s": round(time.perf_counter() - t0, 1), "loadavg": loadavg(),
           "stream": run_case({**spec, "mode": "stream"}, args.timeout)}
    need = in_memory_bytes(size, frames)
    row["memory_estimate_mb"] = round(need / 2**20)
    if args.no_memory:
      row["memory"] = {"skipped": "--no_memory"}
    elif need > mem_available() // 2:
      row["memory"] = {"skipped": f"needs about {need / 2**30:.1f} GiB, over half of the "
                                  f"{mem_available() / 2**30:.1f} GiB available"}
    else:
      row["memory"] = run_case({**spec, "mode": "memory"}, args.timeout)
    s, m = row["stream"], row["memory"]
    if "tiles_per_s" in s and "tiles_per_s" in m:
      row["stream_vs_memory_throughput"] = round(s["tiles_per_s"] / m["tiles_per_s"], 3)
    report["cases"].append(row)
    print(json.dumps(row), file=sys.stderr, flush=True)
  report["loadavg_after"] = loadavg()
  text = json.dumps(report, indent=1)
  print(text)
  if args.out:
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
      f.write(text + "\n")
  return 0


if __name__ == "__main__":
  sys.exit(main())
