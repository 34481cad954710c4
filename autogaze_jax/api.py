"""`AutoGaze`: the user-facing handle = config + static graphdef + param pytree, the top of the library.

Computation lives in `gaze/` (pure functions of (graphdef, params, arrays), see `gaze/functional.py`);
this class only holds the pieces together and does checkpoint I/O through `interop/gaze.py`.
"""
from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from autogaze_jax.gaze.config import GazeConfig
from autogaze_jax.gaze.functional import (abstract_params, check_pixel_values, init_params, params_from_pure_dict,
                                          teacher_forced, vision_features)
from autogaze_jax.gaze.generate import generate
from autogaze_jax.gaze.preprocess import Processor, check_frames
from autogaze_jax.gaze.stream_video import VideoGazeStream, first_frames, take_sample
from autogaze_jax.gaze.streaming import GazeStream
from autogaze_jax.gaze.tiling import (clip_video, kept_ratio_per_frame, merge_tile_masks, needs_res_adapt, prepare_frames,
                                      recover_res_adapt, res_adapt_tiles, tile_video)
from autogaze_jax.interop import gaze as interop
from autogaze_jax.interop.common import resolve_checkpoint_dir


class AutoGaze:
  """Config + params of one gaze model, with official checkpoint I/O.

  >>> model = AutoGaze.from_pretrained("path/to/checkpoint")   # config.json + model.safetensors
  >>> out = model.teacher_forced(pixel_values, gazing_pos, if_padded, num_gazing_each_frame)
  >>> model.save_pretrained("out_dir")                         # loadable by the official code
  """

  def __init__(self, cfg: GazeConfig, params=None, seed: int = 0, processor: Processor | None = None,
               preprocessor_config: dict | None = None):
    self.cfg = cfg
    # the checkpoint's preprocessor_config.json, written back verbatim by save_pretrained
    self.preprocessor_config = preprocessor_config
    if params is None:
      self.graphdef, self.params = init_params(cfg, seed)
    else:
      self.graphdef, self.params = params_from_pure_dict(cfg, params) if isinstance(params, dict) else (
          abstract_params(cfg)[0], params)
    self.processor = processor or Processor.from_pretrained(None)

  # ---- checkpoint interop ----
  @classmethod
  def from_pretrained(cls, ckpt_dir: str, dtype: str | None = None, revision: str | None = None) -> "AutoGaze":
    """A local checkpoint dir, or a hub id ("nvidia/AutoGaze", "nvidia/AutoGaze@<rev>" or `revision=`)
    fetched through huggingface_hub's cache (HF_HOME, HF_HUB_OFFLINE honoured). A local dir of that
    name wins. Errors are `CheckpointError`s naming the dir or id."""
    ckpt_dir = resolve_checkpoint_dir(ckpt_dir, revision, allow_patterns=interop.HUB_FILES, what="gaze checkpoint")
    cfg = interop.read_config(ckpt_dir)
    if dtype is not None:
      cfg = cfg.replace(dtype=dtype)
    tensors, meta = interop.read_safetensors(os.path.join(ckpt_dir, interop.WEIGHTS_NAME))
    if meta.get("format", "pt") != "pt":
      raise interop.CheckpointError(f"{ckpt_dir}: safetensors metadata format {meta.get('format')!r} is not 'pt'")
    params = interop.official_to_params(cfg, tensors)
    pre = os.path.join(ckpt_dir, interop.PREPROCESSOR_NAME)
    pre = json.load(open(pre)) if os.path.isfile(pre) else None
    return cls(cfg, params, processor=Processor.from_pretrained(ckpt_dir), preprocessor_config=pre)

  def save_pretrained(self, ckpt_dir: str):
    interop.write_checkpoint(ckpt_dir, self.cfg, self.pure_params(), self.preprocessor_config)

  def pure_params(self) -> dict:
    return jax.tree.map(np.asarray, self.params.to_pure_dict())

  @property
  def num_params(self) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(self.params)))

  # ---- computation ----
  def teacher_forced(self, pixel_values, gazing_pos, if_padded_gazing, num_gazing_each_frame, debug=False):
    pv = check_pixel_values(pixel_values, self.cfg)
    return teacher_forced(self.graphdef, self.params, pv, jnp.asarray(gazing_pos),
                          jnp.asarray(if_padded_gazing, bool), tuple(int(n) for n in num_gazing_each_frame),
                          debug)

  def vision_features(self, pixel_values):
    return vision_features(self.graphdef, self.params, check_pixel_values(pixel_values, self.cfg))

  def generate(self, pixel_values, gazing_ratio=None, task_loss_requirement=None, *, target_scales=None,
               target_patch_size=None, **kw) -> dict:
    """Official `AutoGaze.forward(..., gazing_ratio=, task_loss_requirement=)` on processed clips
    (B, T, 3, H, W); with `target_scales`/`target_patch_size` the official resolution adaptation.
    With neither gazing_ratio nor task_loss_requirement it follows `self.cfg.sampling` (the config.json
    sampling configs: ratio, per-frame split, inference requirement; drawn from `seed`, docs/sampling.md).
    Keyword options: see `autogaze_jax.gaze.generate.generate` (coupled=True = official batch coupling)."""
    if needs_res_adapt(self.cfg, target_scales, target_patch_size):
      pv = np.asarray(check_pixel_values(pixel_values, self.cfg))
      tiles, info = res_adapt_tiles(pv, self.cfg, target_scales, target_patch_size)
      return recover_res_adapt(generate(self, tiles, gazing_ratio, task_loss_requirement, **kw), info, pv.shape[0])
    return generate(self, pixel_values, gazing_ratio, task_loss_requirement, **kw)

  def stream(self, gazing_ratio=None, task_loss_requirement=None, **kw):
    """A `GazeStream`: call it with one processed frame (B, 1, 3, H, W) at a time."""
    return GazeStream(self, gazing_ratio, task_loss_requirement, **kw)

  def gaze(self, frames_uint8, gazing_ratio=0.75, task_loss_requirement=0.7, *, resize: str = "native",
           clip_len: int | None = None, batch_tiles: int | None = None, **kw) -> dict:
    """Gaze a video of any size and length: uint8 (T, H, W, 3) -> per-tile outputs + video-level masks.

    `resize` chooses how frames reach the 224 x 224 model (`autogaze_jax.gaze.tiling.prepare_frames`):
      "native" (default, the paper's any-resolution path): the video keeps its resolution and is cut
        into clip_len x 224 x 224 tiles (`tiling.tile_video`); a frame with its shortest edge under
        224 is first resized to 224 on that edge (the official processor's rule), never zero-padded
        up to a tile. More pixels, more tiles, more gazes.
      "shortest_edge_224" (the official QUICK_START basic path): the processor resizes the shortest
        edge to 224 (aspect kept, no crop), the model squashes each frame to 224 x 224, and the video
        is cut in time only: one tile per clip_len frames, whatever the resolution.
    The frames are normalised as the processor does, gazed `batch_tiles` tiles at a time (one compiled
    program; the last batch is padded with repeats) and stitched back. Each tile gets the result it
    gets alone unless coupled=True.

    Returns {tiles: [official dict per tile], tiling (of the canvas), masks: per scale (T, nh*g, nw*g)
    bool on the canvas, frames: the canvas (uint8 (T, H', W', 3): the video as tiled, or squashed to
    224 x 224 for shortest_edge_224), resize, input_size (H, W), kept_ratio_per_frame (T,): gazed
    patches / patches over real pixels (padding excluded), kept_ratio}.
    """
    frames = check_frames(frames_uint8)
    model_in, canvas = prepare_frames(frames, self.processor, resize, self.cfg.input_img_size)
    pv = self.processor.normalize(model_in)
    clip_len = clip_len or self.cfg.max_num_frames
    if resize == "native":
      tiles, tiling = tile_video(pv, clip_len, self.cfg.input_img_size)
    else:
      tiles, tiling = clip_video(pv, clip_len, self.cfg.input_img_size)
    n = tiles.shape[0]
    bt = min(batch_tiles or n, n)
    per_tile = []
    for s in range(0, n, bt):
      chunk = tiles[s:s + bt]
      real = chunk.shape[0]
      if real < bt:  # keep one program shape: pad with repeats, drop their outputs
        chunk = np.concatenate([chunk, np.repeat(chunk[-1:], bt - real, axis=0)])
      out = generate(self, chunk, gazing_ratio, task_loss_requirement, **kw)
      per_tile += [take_sample(out, i) for i in range(real)]
    masks = merge_tile_masks([np.concatenate([t["gazing_mask"][i] for t in per_tile]) for i in range(len(self.cfg.scales))],
                             tiling)
    masks = [m.astype(bool) for m in masks]
    kept = kept_ratio_per_frame(masks, tiling)
    last = tiling.frames - (tiling.nt - 1) * tiling.clip_len  # real frames of the last temporal tile
    per_tile = [first_frames(t, last) if i // (tiling.nh * tiling.nw) == tiling.nt - 1 else t
                for i, t in enumerate(per_tile)]
    return {"tiles": per_tile, "tiling": tiling, "masks": masks, "frames": canvas, "resize": resize,
            "input_size": tuple(frames.shape[1:3]), "kept_ratio_per_frame": kept, "kept_ratio": float(kept.mean())}

  def gaze_stream(self, video, gazing_ratio=0.75, task_loss_requirement=0.7, *, resize: str = "native",
                  clip_len: int | None = None, batch_tiles: int | None = None, max_frames: int | None = None,
                  prefetch: int = 3, sharding=None, **kw) -> VideoGazeStream:
    """`gaze()` in bounded memory, one clip_len-frame chunk at a time: `video` is a file path (PyAV video
    or .npz), a uint8 (T, H, W, 3) array or an iterable of uint8 (H, W, 3) frames. Iterate the result
    for per-chunk dicts (`autogaze_jax.gaze.stream_video.VideoGazeStream`); each tile's dict equals the
    one `gaze()` returns with the same `batch_tiles` (default: the tiles of one chunk per call). The
    next chunks are decoded and tiled on a thread (`prefetch` items ahead: chunks, blocks of tiles)
    while the device gazes; `sharding` places each batch (e.g. data-parallel over the local devices)."""
    return VideoGazeStream(self, video, gazing_ratio, task_loss_requirement, resize=resize, clip_len=clip_len,
                           batch_tiles=batch_tiles, max_frames=max_frames, prefetch=prefetch, sharding=sharding, **kw)


# kept under their old names (tests import them from here)
_take_sample, _first_frames = take_sample, first_frames
