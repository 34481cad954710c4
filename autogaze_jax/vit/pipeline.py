"""The gazed ViT as a user handle (`GazedViT`: config + params, HF SigLIP checkpoint I/O) and the
AutoGaze -> ViT pipeline (`gaze_then_vit`: gaze a video, embed only the gazed patches, timed against the
full-token ViT). The model itself is `vit/model.py`."""
from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

from autogaze_jax.core.patches import ScaleLayout
from autogaze_jax.gaze.tiling import tile_video
from autogaze_jax.interop import siglip
from autogaze_jax.interop.common import resolve_checkpoint_dir
from autogaze_jax.vit.model import (GazedViTConfig, abstract_params, capacity_for_ratio, forward, init_params,
                                    pack_gaze, plain_forward)


# ---------------------------------------------------------------- handle
class GazedViT:
  """Config + static graphdef + params of one gazed SigLIP ViT.

  >>> vit = GazedViT(GazedViTConfig.named("tiny"))             # random init
  >>> vit = GazedViT.from_pretrained("siglip.safetensors")     # HF names, local file or dir
  >>> out = vit(frames, gazing_pos, if_padded_gazing, num_gazing_each_frame)   # official gazing_info
  >>> full = vit.plain(frames)                                 # every finest-scale patch
  """

  def __init__(self, cfg: GazedViTConfig | None = None, params=None, seed: int = 0):
    self.cfg = cfg or GazedViTConfig()
    if params is None:
      self.graphdef, self.params = init_params(self.cfg, seed)
    else:
      self.graphdef, state = abstract_params(self.cfg)
      if isinstance(params, dict):
        state.replace_by_pure_dict(jax.tree.map(jnp.asarray, params))
        params = state
      self.params = params

  @classmethod
  def named(cls, name: str, seed: int = 0, **kw) -> "GazedViT":
    return cls(GazedViTConfig.named(name, **kw), seed=seed)

  @classmethod
  def from_pretrained(cls, path: str, cfg: GazedViTConfig | None = None) -> "GazedViT":
    """HF SigLIP weights: a .safetensors / .npz file, a dir with config.json + model.safetensors, or a hub
    id ("google/siglip2-base-patch16-224", "org/name@revision") through huggingface_hub's cache."""
    path = resolve_checkpoint_dir(path, allow_patterns=("config.json", "model.safetensors"), what="SigLIP weights")
    cfg, _, params, _ = siglip.load(path, cfg)
    return cls(cfg, params)

  def save_pretrained(self, path: str):
    siglip.save(path, self.cfg, self.params)

  @property
  def num_params(self) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(self.params)))

  def __call__(self, frames, gazing_pos, if_padded_gazing, num_gazing_each_frame=None, *,
               frame_slots: int | None = None, pool_valid_only: bool = False) -> dict:
    """See `forward`."""
    nge = None if num_gazing_each_frame is None else jnp.asarray(num_gazing_each_frame, jnp.int32)
    return forward(self.graphdef, self.params, jnp.asarray(frames), jnp.asarray(gazing_pos, jnp.int32),
                   jnp.asarray(if_padded_gazing, bool), nge, frame_slots=frame_slots,
                   pool_valid_only=pool_valid_only)

  def plain(self, frames) -> dict:
    """See `plain_forward`."""
    return plain_forward(self.graphdef, self.params, jnp.asarray(frames))


# ---------------------------------------------------------------- AutoGaze -> ViT pipeline
def siglip_normalize(frames_uint8: np.ndarray) -> np.ndarray:
  """uint8 (T, H, W, 3) -> float32 (T, 3, H, W) in SigLIP's space: x/255 normalised with mean = std
  = 0.5 (the siglip/siglip2 processors; no resize here: frames are tiled at 224 instead)."""
  x = np.asarray(frames_uint8, np.float32).transpose(0, 3, 1, 2)
  return (x * np.float32(1 / 255.0) - np.float32(0.5)) / np.float32(0.5)


def _timed_batches(fn, batches, repeats: int):
  """Run fn over every batch once untimed (compile + warm-up), then `repeats` timed passes.
  Returns (outputs of the last pass, first pass seconds, median pass seconds)."""
  t0 = time.perf_counter()
  outs = [jax.block_until_ready(fn(*b)) for b in batches]
  first = time.perf_counter() - t0
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    outs = [jax.block_until_ready(fn(*b)) for b in batches]
    times.append(time.perf_counter() - t0)
  return outs, first, float(np.median(times))


def gaze_then_vit(gaze_model, vit: GazedViT, frames_uint8, gazing_ratio: float | None = 0.75,
                  task_loss_requirement: float | None = 0.7, *, batch_tiles: int | None = None,
                  capacity: int | None = None, repeats: int = 1, compare_full: bool = True,
                  gaze_kw: dict | None = None, gaze_result: dict | None = None) -> dict:
  """AutoGaze picks patches, the gazed ViT embeds only those; timed against the full-token ViT.

  The video (uint8 (T, H, W, 3), any size/length) is gazed by `gaze_model.gaze` (16 x 224 x 224 tiles),
  the same tiles (SigLIP-normalised) go through the gazed ViT with every tile's gaze re-packed into
  `capacity` slots per frame (default: the ratio's per-frame budget, so one compiled program serves
  every video of that gaze-ratio bucket), `batch_tiles` tiles per call, pooling over real slots only.
  The full-token ViT (`plain_forward`, all finest patches of every tile frame) runs on the same tiles.
  Timings exclude compilation (each path runs once untimed, then `repeats` timed passes, median).
  `gaze_result`: an earlier `gaze_model.gaze(frames_uint8, ...)` result to reuse (not re-gazed, gaze_s = 0).

  Returns {"gaze": the `gaze_model.gaze` result, "capacity", "tiles": n,
    "kept_tokens": real gazed tokens (all tiles), "vit_tokens": slots the gazed ViT computed,
    "full_tokens": tokens of the full-token ViT, "tokens": [per tile (n_real, D) float32 features of
    the real gazes, in slot order], "gazing_pos": (tiles, clip_len*capacity) packed ids, "valid",
    "pooler_output": (tiles, D) or None, "timings": {gaze_s, vit_s, vit_first_s, full_vit_s,
    full_vit_first_s, speedup}}.
  """
  lay = vit.cfg.layout
  gaze_layout = ScaleLayout.from_gaze_config(gaze_model.cfg)
  if gaze_layout != lay:
    raise ValueError(f"the gaze model's id space {gaze_layout} differs from the ViT's {lay}; use a ViT with "
                     f"scales {gaze_layout.scales} / patch {gaze_layout.patch_size}")
  t0 = time.perf_counter()
  res = gaze_result if gaze_result is not None else gaze_model.gaze(
      frames_uint8, gazing_ratio, task_loss_requirement, batch_tiles=batch_tiles, **(gaze_kw or {}))
  gaze_s = time.perf_counter() - t0
  tiling = res["tiling"]
  if tiling.tile != vit.cfg.scales[-1]:
    raise ValueError(f"gaze tiles are {tiling.tile} px, the ViT's finest scale is {vit.cfg.scales[-1]}")
  # the canvas the gaze tiled (a small video upsized, or squashed to 224 for resize="shortest_edge_224")
  tiles, _ = tile_video(siglip_normalize(res.get("frames", frames_uint8)), tiling.clip_len, tiling.tile)
  cap = int(capacity or capacity_for_ratio(gazing_ratio, lay.tokens_per_frame))
  packed = [pack_gaze(t["gazing_pos"], t["if_padded_gazing"], t["num_gazing_each_frame"], tiling.clip_len, cap)
            for t in res["tiles"]]
  ids = np.concatenate([p[0] for p in packed])
  pad = np.concatenate([p[1] for p in packed])
  n = tiles.shape[0]
  bt = min(batch_tiles or n, n)
  batches = []
  for s in range(0, n, bt):  # pad the last batch with repeats to keep one program shape
    sel = np.minimum(np.arange(s, s + bt), n - 1)
    batches.append((jnp.asarray(tiles[sel]), jnp.asarray(ids[sel]), jnp.asarray(pad[sel])))
  gazed = lambda f, i, p: forward(vit.graphdef, vit.params, f, i, p, None, frame_slots=cap,  # noqa: E731
                                  pool_valid_only=True)
  outs, vit_first, vit_s = _timed_batches(gazed, batches, repeats)
  hidden = np.concatenate([np.asarray(o["last_hidden_state"]) for o in outs])[:n]
  valid = ~pad
  pooled = None if outs[0]["pooler_output"] is None else np.concatenate(
      [np.asarray(o["pooler_output"]) for o in outs])[:n]
  timings = {"gaze_s": gaze_s, "vit_s": vit_s, "vit_first_s": vit_first}
  per_frame_full = lay.tokens_per_scale[-1]
  if compare_full:
    plain = lambda f, i, p: plain_forward(vit.graphdef, vit.params, f)  # noqa: E731
    _, full_first, full_s = _timed_batches(plain, batches, repeats)
    timings.update(full_vit_s=full_s, full_vit_first_s=full_first, speedup=full_s / vit_s)
  return {"gaze": res, "capacity": cap, "tiles": n, "kept_tokens": int(valid.sum()), "vit_tokens": int(ids.size),
          "full_tokens": n * tiling.clip_len * per_frame_full,
          "tokens": [hidden[i][valid[i]] for i in range(n)], "gazing_pos": ids, "valid": valid,
          "pooler_output": pooled, "timings": timings}
