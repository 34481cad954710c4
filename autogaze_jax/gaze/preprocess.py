"""Host-side image processor, equal to the official `AutoGazeImageProcessor`.

uint8 frames (T, H, W, 3) -> float32 (T, 3, H', W'):
  1. resize with PIL bilinear (antialiased when shrinking, uint8 result): shortest edge to
     `size["shortest_edge"]` keeping the aspect ratio (long side truncated), or to
     `size["height"] x size["width"]`; identity when the size is unchanged;
  2. rescale `float32(float64(x) * factor)`, minus 1 when `offset` (-> [-1, 1]);
  3. normalise `(x - mean) / std` in float32 (ImageNet stats in the released model).
This runs in numpy/PIL on purpose: PIL's antialiased uint8 bilinear is the reference and is cheap on
the host; the model's own bicubic squash to 224x224 happens on device (`GazeModel.embed_video`).
"""
from __future__ import annotations

import dataclasses
import json
import os

import jax.numpy as jnp
import numpy as np

PREPROCESSOR_NAME = "preprocessor_config.json"
# The released model's normalisation statistics (ImageNet), the one place they are written down.
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def default_preprocessor_config() -> dict:
  """preprocessor_config.json of the released model, shipped beside this file."""
  with open(os.path.join(os.path.dirname(__file__), "default_preprocessor_config.json")) as f:
    return json.load(f)


@dataclasses.dataclass(frozen=True)
class Processor:
  shortest_edge: int | None = 224
  height: int | None = None
  width: int | None = None
  do_resize: bool = True
  do_rescale: bool = True
  rescale_factor: float = 1 / 127.5
  offset: bool = True
  do_normalize: bool = True
  image_mean: tuple[float, float, float] = IMAGENET_MEAN
  image_std: tuple[float, float, float] = IMAGENET_STD
  resample: int = 2  # PIL BILINEAR

  @classmethod
  def from_dict(cls, d: dict, size=None) -> "Processor":
    """From a `preprocessor_config.json` dict; `size` overrides it like the official kwarg
    (an int = shortest edge, a (h, w) tuple = exact size)."""
    if d.get("do_center_crop"):
      raise ValueError("preprocessor_config: do_center_crop=True is not supported (the AutoGaze processor has it off)")
    s = d.get("size", {"shortest_edge": 224})
    if size is not None:
      s = {"shortest_edge": int(size)} if np.isscalar(size) else {"height": int(size[0]), "width": int(size[1])}
    return cls(shortest_edge=s.get("shortest_edge"), height=s.get("height"), width=s.get("width"),
               do_resize=bool(d.get("do_resize", True)), do_rescale=bool(d.get("do_rescale", True)),
               rescale_factor=float(d.get("rescale_factor", 1 / 127.5)), offset=bool(d.get("offset", True)),
               do_normalize=bool(d.get("do_normalize", True)),
               image_mean=tuple(d.get("image_mean", IMAGENET_MEAN)),
               image_std=tuple(d.get("image_std", IMAGENET_STD)), resample=int(d.get("resample", 2)))

  @classmethod
  def from_pretrained(cls, ckpt_dir: str | None = None, size=None) -> "Processor":
    path = os.path.join(ckpt_dir, PREPROCESSOR_NAME) if ckpt_dir else None
    if path and os.path.isfile(path):
      with open(path) as f:
        return cls.from_dict(json.load(f), size)
    return cls.from_dict(default_preprocessor_config(), size)

  def output_size(self, h: int, w: int) -> tuple[int, int]:
    if not self.do_resize:
      return h, w
    if self.shortest_edge is not None:
      short, long = (h, w) if h <= w else (w, h)
      new_long = int(self.shortest_edge * long / short)
      return (self.shortest_edge, new_long) if h <= w else (new_long, self.shortest_edge)
    return self.height, self.width

  def resize(self, frames: np.ndarray) -> np.ndarray:
    """uint8 (T, H, W, 3) -> uint8 (T, H', W', 3) with PIL (as transformers' `resize`)."""
    from PIL import Image
    h, w = frames.shape[1:3]
    oh, ow = self.output_size(h, w)
    if (oh, ow) == (h, w):
      return frames
    return np.stack([np.asarray(Image.fromarray(f).resize((ow, oh), resample=self.resample)) for f in frames])

  def normalize(self, frames: np.ndarray) -> np.ndarray:
    """uint8 (..., H, W, 3) -> float32 (..., 3, H, W), bit-exact to the official rescale/normalise."""
    x = frames.astype(np.float32)
    if self.do_rescale:
      x = (frames.astype(np.float64) * self.rescale_factor).astype(np.float32)
      if self.offset:
        x = x - np.float32(1)
    if self.do_normalize:
      x = (x - np.asarray(self.image_mean, np.float32)) / np.asarray(self.image_std, np.float32)
    return np.moveaxis(x, -1, -3).astype(np.float32)

  def __call__(self, frames: np.ndarray) -> np.ndarray:
    return self.normalize(self.resize(check_frames(frames)))


def check_frames(frames, name: str = "frames") -> np.ndarray:
  """Validate a clip: uint8 array (T, H, W, 3) with T >= 1 and H, W >= 1. Raises ValueError otherwise."""
  frames = np.asarray(frames)
  if frames.dtype != np.uint8:
    raise ValueError(f"{name} must be uint8 RGB frames (T, H, W, 3), got dtype {frames.dtype}")
  if frames.ndim != 4 or frames.shape[-1] != 3:
    raise ValueError(f"{name} must have shape (T, H, W, 3), got {frames.shape}")
  if min(frames.shape[:3]) < 1:
    raise ValueError(f"{name} has an empty axis: shape {frames.shape}")
  return frames


def normalize_on_device(frames):
  """uint8 (..., H, W, 3) -> float32 (..., 3, H, W) with the official normalisation (`x/127.5 - 1`,
  then ImageNet mean/std), in jnp so it runs inside the jitted step. Equals `ops.views` up to float
  rounding (the host path computes `x/127.5` in float64 first, the bit-exact route)."""
  x = frames.astype(jnp.float32) * (1 / 127.5) - 1.0
  x = (x - jnp.asarray(IMAGENET_MEAN, jnp.float32)) / jnp.asarray(IMAGENET_STD, jnp.float32)
  return jnp.moveaxis(x, -1, -3)
