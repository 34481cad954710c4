"""Streaming gaze (issue 17): gaze_stream == gaze() tile for tile, the records round trip, the in-stream
gazed ViT, a dataset killed and restarted gives byte-identical outputs, bad input is an error or a
counted skip that keeps what was written. Every gaze here is ratio 0.1, no threshold, 2 tiles per
compiled call: one program shape shared with tests/launch/test_cli_gaze.py."""
import errno
import json
import os

import numpy as np
import pytest

from autogaze_jax import AutoGaze
from autogaze_jax import gaze_dataset as gd
from autogaze_jax.gaze import records
from autogaze_jax.gaze.records import GazeRecordsError, read_gaze
from autogaze_jax.gaze.stream_video import FrameReader, VideoError
from tests.conftest import FIXTURES

TINY = os.path.join(FIXTURES, "gaze_tiny")
KW = dict(gazing_ratio=0.1, task_loss_requirement=None, batch_tiles=2)
SLOT = ("gazing_pos", "if_padded_gazing", "task_loss_prediction", "log_action_probs")


@pytest.fixture(scope="module")
def model():
  return AutoGaze.from_pretrained(TINY)


def _video(t=35, h=224, w=450, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (t, h, w, 3), dtype=np.uint8)


def _png_mov(path, fr):
  """A lossless (PNG-coded) .mov of the given frames."""
  import av
  with av.open(path, "w") as c:
    s = c.add_stream("png", rate=8)
    s.width, s.height, s.pix_fmt = fr.shape[2], fr.shape[1], "rgb24"
    for f in fr:
      for p in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
        c.mux(p)
    for p in s.encode():
      c.mux(p)


def test_stream_equals_gaze_records_round_trip_and_vit(model, tmp_path):
  """35 frames x 3 tiles a chunk: 3 chunks (the last 3 frames, padding dropped), 9 tiles, batches of 2
  that cross chunk boundaries and a padded last batch; ids, flags, counts, kept ratios equal gaze()."""
  fr = _video()
  ref = model.gaze(fr, 0.1, None, batch_tiles=2)
  frames_fed = []
  stream = model.gaze_stream((frames_fed.append(1) or f for f in fr), 0.1, None, batch_tiles=2)
  chunks = []
  for c in stream:
    chunks.append(c)
    # bounded: the reader is never more than prefetch + one batch of chunks ahead of the results
    assert len(frames_fed) <= (c["chunk"] + 5) * 16
  assert [c["num_frames"] for c in chunks] == [16, 16, 3] and stream.frames == 35
  tiles = [t for c in chunks for t in c["tiles"]]
  assert len(tiles) == len(ref["tiles"]) == 9
  assert [t["tile_pos"] for t in tiles[:4]] == [(0, 0, 0), (0, 0, 1), (0, 0, 2), (1, 0, 0)]
  for a, b in zip(tiles, ref["tiles"]):
    for k in SLOT + ("num_gazing_each_frame", "num_real_gazing_each_frame"):
      np.testing.assert_array_equal(a[k], b[k], err_msg=k)
  assert tiles[-1]["num_gazing_each_frame"].shape == (3,)
  np.testing.assert_array_equal(np.concatenate([c["kept_ratio_per_frame"] for c in chunks]), ref["kept_ratio_per_frame"])
  for s in range(4):
    np.testing.assert_array_equal(np.concatenate([c["masks"][s] for c in chunks]), ref["masks"][s])
  assert stream.tiling == ref["tiling"]

  # the same video through the records writer, with the gazed ViT in the stream; read back
  from autogaze_jax.vit import pipeline as vp
  vit = vp.GazedViT.named("tiny", seed=0)
  emb = gd.VitEmbedder(vit, model.cfg, 0.1, batch_tiles=2)
  meta = gd.gaze_video(model, fr, str(tmp_path / "r"), vit=emb, log_every_s=0, **KW)   # progress every chunk
  rec = read_gaze(str(tmp_path / "r"))
  assert rec.meta == {**{k: v for k, v in meta.items() if k not in ("seconds", "tiles_per_s")},
                      "format": records.FORMAT, "version": 1, "chunks": 3}
  assert (meta["frames"], meta["num_tiles"], meta["temporal"], meta["cols"]) == (35, 9, 3, 3)
  assert meta["kept_ratio"] == pytest.approx(ref["kept_ratio"], abs=1e-12)
  back = list(rec.tiles())
  for a, b in zip(back, ref["tiles"]):
    for k in SLOT + ("num_gazing_each_frame", "num_real_gazing_each_frame"):
      np.testing.assert_allclose(a[k], b[k], rtol=0, atol=0, err_msg=k)
      assert a[k].shape == np.asarray(b[k]).shape
  np.testing.assert_array_equal(rec.kept_ratio_per_frame(), ref["kept_ratio_per_frame"])
  # embeddings beside the records == gaze_then_vit on the in-memory gaze, tile for tile
  rep = vp.gaze_then_vit(model, vit, fr, 0.1, None, batch_tiles=2, compare_full=False, gaze_result=ref)
  got = [e for e in rec.embeddings()]
  toks = np.concatenate([e["vit_tokens"] for e in got])
  np.testing.assert_allclose(toks, np.concatenate(rep["tokens"]), rtol=0, atol=1e-5)
  np.testing.assert_array_equal(np.concatenate([e["vit_num_tokens"] for e in got]), [len(t) for t in rep["tokens"]])
  assert emb.kept_tokens == rep["kept_tokens"] and emb.tiles == 9


def test_dataset_kill_restart_byte_identical_with_counted_skips(model, tmp_path):
  """A dataset with good, truncated, empty and garbage videos: a run stopped mid-video (and a torn
  commit line) then restarted writes exactly the bytes of an uninterrupted run; the bad files are
  counted and named, the cut one keeps its good frames."""
  src = tmp_path / "videos"
  (src / "sub").mkdir(parents=True)
  np.savez(src / "a.npz", frames=_video(10, 24, 24, seed=1))          # 1 chunk of 1 tile (224 x 224)
  np.savez(src / "sub" / "b.npz", frames=_video(18, 30, 20, seed=2))   # 2 chunks of 2 tiles (336 x 224)
  (src / "empty.mp4").write_bytes(b"")
  (src / "junk.mp4").write_bytes(b"not a video" * 40)
  fr = _video(8, 16, 32, seed=3)
  _png_mov(str(tmp_path / "c.mov"), fr)
  data = bytearray((tmp_path / "c.mov").read_bytes())
  k = int(len(data) * 0.6)
  data[k:k + 64] = bytes(64)
  (src / "cut.mov").write_bytes(bytes(data))
  (src / "notes.txt").write_text("not listed")
  from autogaze_jax.gaze.stream_video import list_video_files
  keys = list_video_files(str(src))
  assert keys == ["a.npz", "cut.mov", "empty.mp4", "junk.mp4", "sub/b.npz"]
  run = lambda out, **kw: gd.gaze_dataset(model, keys, lambda i: str(src / keys[i]), str(out),  # noqa: E731
                                          process_index=0, process_count=1, **KW, **kw)
  full = run(tmp_path / "full")
  assert full["gazed"] == 3 and full["skipped"] == 2 and full["missing"] == 0
  assert full["skip_counts"]["no_frames"] == 1 and full["skip_counts"]["open_error"] == 1
  assert set(full["skipped_videos"]) == {"empty.mp4", "junk.mp4"} and "junk.mp4" in full["skipped_videos"]["junk.mp4"]
  n = full["truncated_videos"]["cut.mov"]
  assert 0 < n < 8 and full["frames"] == 10 + n + 18
  cut = read_gaze(str(tmp_path / "full" / "videos" / "cut.mov"))
  assert cut.meta["frames"] == n and f"decoding failed at frame {n}" in cut.meta["decode_error"]

  part = tmp_path / "part"
  # batches of 2 tiles run across videos ([a, cut], [cut, b], ...); killed after b's first chunk, the
  # restart batches b alone: a tile's result does not depend on its batch mates
  assert run(part, stop_after_chunks=3) is None
  assert os.path.isfile(part / "videos" / "cut.mov" / "index.json")
  assert os.listdir(part / "videos" / "sub" / "b.npz") == ["chunk-000000.npz"]
  with open(gd.shard_file(str(part), 0, 1), "a") as f:
    f.write('{"i": 4, "key": "sub/b.npz", "fra')            # a torn line: never committed
  assert run(part) == full
  files = lambda root: sorted(os.path.relpath(os.path.join(d, f), root)  # noqa: E731
                              for d, _, fs in os.walk(root) for f in fs)
  assert files(part) == files(tmp_path / "full") and "videos/sub/b.npz/chunk-000001.npz" in files(part)
  for f in files(part):
    assert (part / f).read_bytes() == (tmp_path / "full" / f).read_bytes(), f


def test_bad_inputs_odd_sizes_and_full_disk(model, tmp_path, monkeypatch):
  """Zero frames, a missing file or a directory: VideoError with its reason; a frame that changes size
  ends the video there (kept frames, error with the index); odd sizes tile and count real pixels only;
  a write failure mid-video names the chunk and keeps the chunk files written before it."""
  for src, reason in [(np.zeros((0, 8, 8, 3), np.uint8), "no_frames"), (str(tmp_path / "nope.mp4"), "missing"),
                      (str(tmp_path), "directory"), (np.zeros((2, 8, 8), np.uint8), "bad_frames")]:
    with pytest.raises(VideoError) as e:
      list(model.gaze_stream(src, **KW))
    assert e.value.reason == reason
  # odd sizes: 225 x 227 is 2 x 2 tiles with 1 and 3 real pixel columns/rows in the last ones
  odd = _video(3, 225, 227, seed=4)
  frames = [*odd, np.zeros((10, 10, 3), np.uint8), odd[0]]
  stream = model.gaze_stream(iter(frames), **KW)
  (c,) = list(stream)
  assert (stream.truncated_at, c["num_frames"], len(c["tiles"])) == (3, 3, 4)
  assert "frame 3 is uint8 (10, 10, 3)" in stream.error
  ref = model.gaze(odd, 0.1, None, batch_tiles=2)
  np.testing.assert_array_equal(c["kept_ratio_per_frame"], ref["kept_ratio_per_frame"])
  assert np.all((c["kept_ratio_per_frame"] > 0) & (c["kept_ratio_per_frame"] <= 1))

  # a dataset: a bad setting fails before any video; any other failure of one video is a counted skip
  def source(i):
    if i == 0:
      raise RuntimeError("storage hiccup")
    return odd[:2, :224, :224]
  with pytest.raises(ValueError, match=r"\(0, 1\]"):
    gd.gaze_dataset(model, ["x", "y"], source, str(tmp_path / "ds"), process_index=0, process_count=1,
                    **{**KW, "gazing_ratio": 1.5})
  assert not os.path.exists(tmp_path / "ds" / "videos")
  summ = gd.gaze_dataset(model, ["x", "y"], source, str(tmp_path / "ds"), process_index=0, process_count=1, **KW)
  assert (summ["gazed"], summ["skip_counts"]["gaze_error"]) == (1, 1)
  assert summ["skipped_videos"] == {"x": "x: RuntimeError: storage hiccup"}

  # a full disk at the second chunk: a clear error, the first chunk kept and readable
  real = records.write_npz
  calls = []
  def full_disk(path, arrays):
    calls.append(path)
    if len(calls) == 2:
      raise OSError(errno.ENOSPC, "No space left on device")
    real(path, arrays)
  monkeypatch.setattr(records, "write_npz", full_disk)
  with pytest.raises(gd.GazeOutputError, match=r"writing chunk 1 of .* No space left on device .*the 1 chunk files "
                                               r"written before it \(frames 0\.\.15\) are kept"):
    gd.gaze_video(model, _video(20, 224, 224), str(tmp_path / "o"), **KW)
  assert sorted(os.listdir(tmp_path / "o")) == ["chunk-000000.npz"]
  with pytest.raises(GazeRecordsError, match=r"incomplete \(1 chunk files\)"):
    read_gaze(str(tmp_path / "o"))
  with np.load(tmp_path / "o" / "chunk-000000.npz") as d:
    assert int(d["num_frames"]) == 16 and d["tile_pos"].shape == (1, 3)


def test_frame_reader_video_file_and_max_frames(tmp_path):
  """PyAV frames one by one, bit-exact for a lossless file; --max_frames stops decoding early."""
  fr = _video(5, 16, 24, seed=5)
  _png_mov(str(tmp_path / "v.mov"), fr)
  r = FrameReader(str(tmp_path / "v.mov"), max_frames=3)
  np.testing.assert_array_equal(np.stack(list(r)), fr[:3])
  assert (r.count, r.truncated_at) == (3, None)
  (tmp_path / "x.npz").write_bytes(b"garbage")
  with pytest.raises(VideoError, match="cannot read as .npz"):
    list(FrameReader(str(tmp_path / "x.npz")))
  with pytest.raises(GazeRecordsError, match="no index.json"):
    read_gaze(str(tmp_path))
  (tmp_path / "index.json").write_text(json.dumps({"format": "other", "version": 1}))
  with pytest.raises(GazeRecordsError, match="format 'other'"):
    read_gaze(str(tmp_path))
