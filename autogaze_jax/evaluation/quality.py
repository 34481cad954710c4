"""Reconstruction quality: PSNR and SSIM of the judge's reconstructions against the original frames.

Images are float arrays in [0, 1] shaped (..., H, W, C). SSIM is ours (numpy + scipy.ndimage), written to
the definition of Wang et al. 2004 as scikit-image's `structural_similarity(gaussian_weights=True,
sigma=1.5, use_sample_covariance=False, data_range=1)` computes it: an 11x11 Gaussian window (sigma 1.5,
truncated at 3.5 sigma), K1 = 0.01, K2 = 0.03, the SSIM map averaged away from the 5-pixel border, and
the channel mean. scikit-image would add ~40 MB of dependencies (networkx, imageio, tifffile) for one
function; tests/evaluation/test_quality.py checks ours against a direct computation of the formula.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from autogaze_jax.gaze.preprocess import Processor

SSIM_SIGMA = 1.5
SSIM_TRUNCATE = 3.5
SSIM_K1, SSIM_K2 = 0.01, 0.03


def task_to_unit(x, processor: Processor | None = None) -> np.ndarray:
  """Processor/task space (..., C, H, W) -> (..., H, W, C) float32 in [0, 1]: the inverse of
  `processor.normalize` (default: the released processor, pixels / 127.5 - 1 then ImageNet mean/std),
  so a reconstruction is compared with the clip in the pixels it came from."""
  p = processor or Processor()
  x = np.moveaxis(np.asarray(x, np.float32), -3, -1)
  if p.do_normalize:
    x = x * np.asarray(p.image_std, np.float32) + np.asarray(p.image_mean, np.float32)
  if p.do_rescale:
    x = (x + np.float32(1) if p.offset else x) / np.float32(p.rescale_factor)
  return np.clip(x / np.float32(255), 0.0, 1.0)


def uint8_to_unit(frames) -> np.ndarray:
  return np.asarray(frames, np.float32) / 255.0


def unit_to_uint8(x) -> np.ndarray:
  return np.clip(np.round(np.asarray(x, np.float32) * 255.0), 0, 255).astype(np.uint8)


def _check_pair(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  if a.shape != b.shape or a.ndim < 3:
    raise ValueError(f"images must share one shape (..., H, W, C), got {a.shape} and {b.shape}")
  return a, b


def psnr(a, b, data_range: float = 1.0) -> np.ndarray:
  """Peak signal-to-noise ratio (dB) per image over (H, W, C): 10 log10(range^2 / MSE); inf when equal."""
  a, b = _check_pair(a, b)
  mse = np.mean(np.square(a - b), axis=(-3, -2, -1))
  with np.errstate(divide="ignore"):
    return 10.0 * np.log10(data_range ** 2 / mse)


def _ssim_channel(x, y, data_range: float) -> float:
  blur = lambda z: ndimage.gaussian_filter(z, SSIM_SIGMA, truncate=SSIM_TRUNCATE)  # noqa: E731
  mx, my = blur(x), blur(y)
  vx, vy, cxy = blur(x * x) - mx * mx, blur(y * y) - my * my, blur(x * y) - mx * my
  c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
  s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
  pad = int(SSIM_TRUNCATE * SSIM_SIGMA + 0.5)     # the window radius: border values see the reflection
  return float(s[pad:-pad, pad:-pad].mean())


def ssim(a, b, data_range: float = 1.0) -> np.ndarray:
  """Mean structural similarity per image (..., H, W, C) -> (...); 1 when equal."""
  a, b = _check_pair(a, b)
  lead = a.shape[:-3]
  fa, fb = a.reshape(-1, *a.shape[-3:]), b.reshape(-1, *b.shape[-3:])
  out = [np.mean([_ssim_channel(x[..., c], y[..., c], data_range) for c in range(x.shape[-1])])
         for x, y in zip(fa, fb)]
  return np.asarray(out, np.float64).reshape(lead)
