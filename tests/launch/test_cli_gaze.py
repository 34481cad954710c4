"""`python -m launch.gaze`: outputs on a real checkpoint and an .npz / .mp4 video; clear errors on bad input."""
import json
import os

import numpy as np
import pytest

from tests.conftest import FIXTURES
from autogaze_jax.gaze.records import read_gaze
from launch import gaze as cli

TINY = os.path.join(FIXTURES, "gaze_tiny")


def test_gaze_cli_npz_nonsquare(tmp_path, capsys):
  fr = np.load(os.path.join(FIXTURES, "gaze_tiny_extra", "nonsquare_input.npz"))["frames_uint8"][:8]
  np.savez(tmp_path / "v.npz", frames=fr)
  cli.main(["--checkpoint", TINY, "--video", str(tmp_path / "v.npz"), "--out", str(tmp_path / "o"),
            "--gazing_ratio", "0.1", "--task_loss_requirement", "nan", "--max_frames", "6"])
  out = json.load(open(tmp_path / "o" / "gaze.json"))
  # --max_frames applies to .npz too; 180 px < one tile: shortest edge brought up to 224 (320 -> 398)
  assert (out["height"], out["width"], out["frames"]) == (180, 320, 6)
  assert (out["gazed_height"], out["gazed_width"], out["resize"], out["truncated_at_frame"]) == (224, 398, "native", None)
  assert out["tiling"] == {"clip_len": 16, "tile": 224, "temporal": 1, "rows": 1, "cols": 2}
  tiles = list(read_gaze(str(tmp_path / "o" / "records")).tiles())   # per-tile results: the streamed records
  assert len(tiles) == 2 == out["num_tiles"] and len(out["kept_ratio_per_frame"]) == 6
  # ratio 0.1 without threshold: exactly 26 real gazes per frame and tile
  assert all(np.array(t["num_real_gazing_each_frame"]).tolist() == [[26] * 6] for t in tiles)
  # kept ratio over real pixels: tile 2 holds 398 - 224 = 174 real columns, i.e. 2/4/6/11 of the 2/4/7/14
  # columns per scale: 265 + 216 = 481 real patches; its gazes on the padding count in neither
  kept = np.array(out["kept_ratio_per_frame"]) * 481
  np.testing.assert_allclose(kept, np.round(kept), atol=1e-9)
  assert ((26 < kept) & (kept <= 52)).all()
  from PIL import Image
  assert Image.open(tmp_path / "o" / "gaze.png").size[1] > 224
  gif = Image.open(tmp_path / "o" / "gaze.gif")
  assert gif.size == (796, 224)   # the frames as gazed: original | overlay
  assert sorted(os.listdir(tmp_path / "o")) == ["gaze.gif", "gaze.json", "gaze.png", "records"]   # no temporaries left
  assert "(native): kept" in capsys.readouterr().out


def test_gaze_cli_mp4(tmp_path):
  import av
  path = str(tmp_path / "v.mp4")
  with av.open(path, "w") as c:
    s = c.add_stream("mpeg4", rate=8)
    s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
    for t in range(5):
      img = np.full((48, 64, 3), 40 * t, np.uint8)
      for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
        c.mux(p)
    for p in s.encode():
      c.mux(p)
  cli.main(["--checkpoint", TINY, "--video", path, "--out", str(tmp_path / "o"), "--gazing_ratio", "0.1",
            "--task_loss_requirement", "nan"])   # the ratio of the other tests: one compiled program
  out = json.load(open(tmp_path / "o" / "gaze.json"))
  assert (out["frames"], out["height"], out["width"]) == (5, 48, 64)


@pytest.mark.parametrize("content,match", [(b"", "cannot decode|no decodable"), (b"not a video at all" * 50, "cannot decode")])
def test_gaze_cli_unreadable_video(tmp_path, content, match):
  p = tmp_path / "bad.mp4"
  p.write_bytes(content)
  with pytest.raises(SystemExit, match=match):
    cli.main(["--checkpoint", TINY, "--video", str(p), "--out", str(tmp_path / "o")])


def test_gaze_cli_bad_npz_and_ratio(tmp_path):
  np.savez(tmp_path / "z.npz", frames=np.zeros((0, 8, 8, 3), np.uint8))
  with pytest.raises(SystemExit, match="no decodable frames"):
    cli.main(["--checkpoint", TINY, "--video", str(tmp_path / "z.npz"), "--out", str(tmp_path / "o")])
  np.savez(tmp_path / "f.npz", frames=np.zeros((2, 8, 8, 3), np.float32))
  with pytest.raises(SystemExit, match="uint8"):
    cli.main(["--checkpoint", TINY, "--video", str(tmp_path / "f.npz"), "--out", str(tmp_path / "o")])
  np.savez(tmp_path / "g.npz", frames=np.zeros((2, 8, 8, 3), np.uint8))
  with pytest.raises(SystemExit, match=r"\(0, 1\]"):
    cli.main(["--checkpoint", TINY, "--video", str(tmp_path / "g.npz"), "--out", str(tmp_path / "o"),
              "--gazing_ratio", "1.5"])
  with pytest.raises(SystemExit, match="does not exist"):
    cli.main(["--checkpoint", TINY, "--video", str(tmp_path / "missing.mp4"), "--out", str(tmp_path / "o")])


# ---------------------------------------------------------------- issue 20, items 3, 4, 11
def test_max_frames_npz_and_directory_video(tmp_path):
  """Item 3: --max_frames cuts an .npz as it cuts a decoded file; a directory is named as one."""
  fr = np.arange(5 * 4 * 6 * 3, dtype=np.uint8).reshape(5, 4, 6, 3)
  np.savez(tmp_path / "v.npz", frames=fr)
  got, cut = cli.read_video(str(tmp_path / "v.npz"), max_frames=2)
  np.testing.assert_array_equal(got, fr[:2])
  assert cut is None and cli.read_video(str(tmp_path / "v.npz"))[0].shape[0] == 5
  with pytest.raises(SystemExit, match=r"is a directory, not a video file"):
    cli.main(["--checkpoint", TINY, "--video", str(tmp_path), "--out", str(tmp_path / "o")])


# the 2 x 4 x 7 x 14 grids of a 224 x 408 canvas (17 x 31 brought up to 224): columns over real pixels
REAL_COLS, REAL_PATCHES = (4, 8, 13, 26), 2 * 4 + 4 * 8 + 7 * 13 + 14 * 26


def test_small_video_is_resized_not_padded():
  """Item 4: a 17 x 31 video is brought up to 224 on its shortest edge (not zero-padded into one tile),
  and kept_ratio counts only patches over real pixels."""
  from autogaze_jax import AutoGaze
  fr = np.random.default_rng(0).integers(0, 256, (3, 17, 31, 3), dtype=np.uint8)
  res = AutoGaze.from_pretrained(TINY).gaze(fr, 0.1, None)
  assert res["frames"].shape == (3, 224, 408, 3) and res["input_size"] == (17, 31)
  t = res["tiling"]
  assert (t.height, t.width, t.nh, t.nw) == (224, 408, 1, 2)
  real = sum(m[:, :, :c].reshape(3, -1).sum(1) for m, c in zip(res["masks"], REAL_COLS))
  padded = sum(m[:, :, c:].reshape(3, -1).sum(1) for m, c in zip(res["masks"], REAL_COLS))
  assert (real + padded == 52).all()   # 26 real gazes per tile and frame, wherever they land
  np.testing.assert_allclose(res["kept_ratio_per_frame"], real / REAL_PATCHES)


def _png_mov(path, n=8, h=16, w=32):
  """A lossless (PNG-coded) .mov of n noise frames; returns the frames."""
  import av
  fr = np.random.default_rng(1).integers(0, 256, (n, h, w, 3), dtype=np.uint8)
  with av.open(path, "w") as c:
    s = c.add_stream("png", rate=8)
    s.width, s.height, s.pix_fmt = w, h, "rgb24"
    for f in fr:
      for p in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
        c.mux(p)
    for p in s.encode():
      c.mux(p)
  return fr


def test_out_checked_first_atomic_outputs_one_line_errors_and_cut_video(tmp_path, monkeypatch, caplog):
  """Item 11: an unwritable or full --out stops before any compute; a failed write leaves no output;
  a CheckpointError is one line; a video cut after N good frames gazes those N and says so."""
  import errno
  from autogaze_jax import AutoGaze
  from autogaze_jax.evaluation import viz
  np.savez(tmp_path / "v.npz", frames=np.zeros((2, 8, 8, 3), np.uint8))
  computed = []
  real_gaze = AutoGaze.gaze_stream
  monkeypatch.setattr(AutoGaze, "gaze_stream", lambda self, *a, **k: computed.append(1) or real_gaze(self, *a, **k))
  (tmp_path / "file").write_text("x")
  with pytest.raises(SystemExit, match=r"--out '.*file/o' is not writable"):
    cli.main(["--checkpoint", TINY, "--video", str(tmp_path / "v.npz"), "--out", str(tmp_path / "file" / "o")])
  monkeypatch.setattr(cli.shutil, "disk_usage", lambda p: shutil_usage(free=4096))
  with pytest.raises(SystemExit, match=r"has 0.0 MiB free, the outputs need about"):
    cli.main(["--checkpoint", TINY, "--video", str(tmp_path / "v.npz"), "--out", str(tmp_path / "full")])
  monkeypatch.undo()
  monkeypatch.setattr(AutoGaze, "gaze_stream", lambda self, *a, **k: computed.append(1) or real_gaze(self, *a, **k))
  assert computed == []
  (tmp_path / "bad").mkdir()
  (tmp_path / "bad" / "config.json").write_text("{not json")
  with pytest.raises(SystemExit) as e:
    cli.main(["--checkpoint", str(tmp_path / "bad"), "--video", str(tmp_path / "v.npz"), "--out", str(tmp_path / "o")])
  assert str(e.value).startswith("error: --checkpoint:") and "not valid JSON" in str(e.value) and "\n" not in str(e.value)

  # a video whose 60% mark is zeroed: PNG packets after it fail to decode
  fr = _png_mov(str(tmp_path / "v.mov"))
  data = bytearray((tmp_path / "v.mov").read_bytes())
  k = int(len(data) * 0.6)
  data[k:k + 64] = bytes(64)
  (tmp_path / "cut.mov").write_bytes(bytes(data))
  def no_space(path, frames, **kw):
    raise OSError(errno.ENOSPC, "No space left on device")
  monkeypatch.setattr(viz, "save_gif", no_space)
  with pytest.raises(SystemExit, match=r"No space left on device .* MiB free\); none of gaze.json, gaze.png, "
                                       r"gaze.gif was written"):
    cli.main(["--checkpoint", TINY, "--video", str(tmp_path / "cut.mov"), "--out", str(tmp_path / "o"),
              "--gazing_ratio", "0.1", "--task_loss_requirement", "nan"])
  # not gaze.json without its pictures; the streamed records stay, complete
  assert os.listdir(tmp_path / "o") == ["records"] and computed == [1]
  assert read_gaze(str(tmp_path / "o" / "records")).meta["frames"] < 8
  monkeypatch.undo()
  with caplog.at_level("WARNING"):
    cli.main(["--checkpoint", TINY, "--video", str(tmp_path / "cut.mov"), "--out", str(tmp_path / "o"),
              "--gazing_ratio", "0.1", "--task_loss_requirement", "nan"])
  out = json.load(open(tmp_path / "o" / "gaze.json"))
  n = out["truncated_at_frame"]
  assert 0 < n < 8 and out["frames"] == n and f"decoding failed at frame {n}" in caplog.text
  got, cut = cli.read_video(str(tmp_path / "cut.mov"))
  assert cut == n
  np.testing.assert_array_equal(got, fr[:n])   # the frames before the cut, exactly


def shutil_usage(free):
  import collections
  return collections.namedtuple("usage", "total used free")(1 << 30, (1 << 30) - free, free)


# ---------------------------------------------------------------- issue 17: datasets across hosts
@pytest.mark.multiprocess
def test_videos_two_processes_cover_every_video_once(tmp_path):
  """--videos under jax.distributed (2 processes on localhost): host h gazes videos h, h+2, ...; every
  video is committed exactly once across the shards, the unreadable one as a named skip, and the last
  host to finish writes summary.json."""
  import socket
  import subprocess
  import sys
  src = tmp_path / "v"
  src.mkdir()
  rng = np.random.default_rng(0)
  for name in ("a", "b", "c"):
    np.savez(src / f"{name}.npz", frames=rng.integers(0, 256, (5, 16, 16, 3), dtype=np.uint8))
  (src / "d.mp4").write_bytes(b"junk" * 100)
  with socket.socket() as s:
    s.bind(("localhost", 0))
    port = s.getsockname()[1]
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1", JAX_PLATFORMS="cpu")
  procs = [subprocess.Popen([sys.executable, "-m", "launch.gaze", "--checkpoint", TINY, "--videos", str(src),
                             "--out", str(tmp_path / "o"), "--gazing_ratio", "0.1", "--task_loss_requirement", "nan",
                             f"--coordinator=localhost:{port}", "--num_processes=2", f"--process_id={i}"],
                            cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
           for i in range(2)]
  outs = [p.communicate(timeout=600)[0] for p in procs]
  for p, out in zip(procs, outs):
    assert p.returncode == 0, out[-3000:]
  from autogaze_jax.labels.shards import read_shard
  from autogaze_jax.gaze_dataset import shard_file
  recs = [read_shard(shard_file(str(tmp_path / "o"), h, 2)) for h in range(2)]
  assert [sorted(r["key"] for r in rs) for rs in recs] == [["a.npz", "c.npz"], ["b.npz", "d.mp4"]]
  summary = json.load(open(tmp_path / "o" / "summary.json"))
  assert (summary["gazed"], summary["skipped"], summary["missing"], summary["frames"]) == (3, 1, 0, 15)
  assert list(summary["skipped_videos"]) == ["d.mp4"]
  assert all(read_gaze(str(tmp_path / "o" / "videos" / f"{n}.npz")).meta["frames"] == 5 for n in "abc")
  assert any("host 1/2: 2 videos, 0 already done, 2 to go" in o for o in outs)


def test_videos_dataset_errors(tmp_path):
  """--videos: not a directory, no videos in it, an unwritable --out: one-line errors before any compute."""
  with pytest.raises(SystemExit, match="is not a directory"):
    cli.main(["--checkpoint", TINY, "--videos", str(tmp_path / "nope"), "--out", str(tmp_path / "o")])
  (tmp_path / "empty").mkdir()
  with pytest.raises(SystemExit, match="holds no video files"):
    cli.main(["--checkpoint", TINY, "--videos", str(tmp_path / "empty"), "--out", str(tmp_path / "o")])
  (tmp_path / "file").write_text("x")
  with pytest.raises(SystemExit, match="is not writable"):
    cli.main(["--checkpoint", TINY, "--videos", str(tmp_path / "empty"), "--out", str(tmp_path / "file" / "o")])
  with pytest.raises(SystemExit, match="not both"):
    cli.main(["--video", "x.mp4", "--videos", str(tmp_path), "--out", str(tmp_path / "o")])
