"""`python -m launch.gaze`: outputs on a real checkpoint and an .npz / .mp4 video; clear errors on bad input."""
import json
import os

import numpy as np
import pytest

from tests.conftest import FIXTURES
from launch import gaze as cli

TINY = os.path.join(FIXTURES, "gaze_tiny")


def test_gaze_cli_npz_nonsquare(tmp_path, capsys):
  fr = np.load(os.path.join(FIXTURES, "gaze_tiny_extra", "nonsquare_input.npz"))["frames_uint8"][:6]
  np.savez(tmp_path / "v.npz", frames=fr)
  cli.main(["--checkpoint", TINY, "--video", str(tmp_path / "v.npz"), "--out", str(tmp_path / "o"),
            "--gazing_ratio", "0.1", "--task_loss_requirement", "nan"])
  out = json.load(open(tmp_path / "o" / "gaze.json"))
  assert (out["height"], out["width"], out["frames"]) == (180, 320, 6)
  assert out["tiling"] == {"clip_len": 16, "tile": 224, "temporal": 1, "rows": 1, "cols": 2}
  assert len(out["tiles"]) == 2 and len(out["kept_ratio_per_frame"]) == 6
  # ratio 0.1 without threshold: exactly 26 real gazes per frame and tile
  assert all(np.array(t["num_real_gazing_each_frame"]).tolist() == [[26] * 6] for t in out["tiles"])
  np.testing.assert_allclose(out["kept_ratio"], 26 / 265)
  from PIL import Image
  assert Image.open(tmp_path / "o" / "gaze.png").size[1] > 180
  gif = Image.open(tmp_path / "o" / "gaze.gif")
  assert gif.size == (640, 180)
  assert "kept 9.8% of patches" in capsys.readouterr().out


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
  cli.main(["--checkpoint", TINY, "--video", path, "--out", str(tmp_path / "o"), "--gazing_ratio", "0.05",
            "--task_loss_requirement", "nan"])
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
