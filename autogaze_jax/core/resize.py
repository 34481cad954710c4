"""PyTorch-exact bicubic resizing as fixed interpolation matrices.

`torch.nn.functional.interpolate(mode="bicubic", align_corners=False)` (no antialias) differs from
`jax.image.resize`: torch uses the cubic coefficient A = -0.75, clamps tap indices to the border and
never antialiases, while JAX uses Keys a = -0.5, antialiases on downscale and renormalises edge weights
(errors of 0.25-0.37 on N(0,1) data). The official model, the VideoMAE
and the downstream SigLIP all resize with torch's kernel, so we build torch's weights once (numpy,
emulating its float32 arithmetic) and apply them as two small matmuls per image.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

_A = np.float32(-0.75)


def _cubic1(x):  # |x| <= 1
  return ((_A + np.float32(2)) * x - (_A + np.float32(3))) * x * x + np.float32(1)


def _cubic2(x):  # 1 < |x| < 2
  return ((_A * x - np.float32(5) * _A) * x + np.float32(8) * _A) * x - np.float32(4) * _A


@functools.lru_cache(maxsize=None)
def bicubic_matrix(in_size: int, out_size: int) -> np.ndarray:
  """(out_size, in_size) float32 matrix W with `y = W @ x` equal to torch's 1-D bicubic resize.

  Mirrors ATen's `HelperInterpCubic::compute_indices_weights` on CPU: the source index is the float32
  fused multiply-add `scale * (d + 0.5) - 0.5` (computed exactly in float64 and rounded once), the
  fraction is clamped to [0, 1], the four taps `floor - 1 .. floor + 2` are clamped to the border.
  """
  if in_size <= 0 or out_size <= 0:
    raise ValueError(f"bicubic_matrix needs positive sizes, got in={in_size} out={out_size}")
  w = np.zeros((out_size, in_size), np.float32)
  if in_size == out_size:
    np.fill_diagonal(w, 1.0)
    return w
  scale = np.float64(np.float32(in_size) / np.float32(out_size))
  for d in range(out_size):
    src = np.float32(scale * (d + 0.5) - 0.5)  # one rounding, like fmaf
    idx = min(int(np.floor(src)), in_size - 1)
    t = np.float32(min(max(src - np.float32(idx), np.float32(0)), np.float32(1)))
    coeffs = (_cubic2(t + np.float32(1)), _cubic1(t), _cubic1(np.float32(1) - t),
              _cubic2(np.float32(2) - t))
    for j, c in enumerate(coeffs):
      w[d, min(max(idx - 1 + j, 0), in_size - 1)] += c
  return w


def resize_bicubic(x: jax.Array, out_h: int, out_w: int) -> jax.Array:
  """Torch-exact bicubic resize of the last two axes (..., H, W) -> (..., out_h, out_w).

  Same-size axes are returned untouched (torch's resize is an exact identity there).
  """
  h, w = x.shape[-2], x.shape[-1]
  if w != out_w:
    x = jnp.einsum("...w,ow->...o", x, jnp.asarray(bicubic_matrix(w, out_w)),
                   precision=jax.lax.Precision.HIGHEST)
  if h != out_h:
    x = jnp.einsum("...hw,oh->...ow", x, jnp.asarray(bicubic_matrix(h, out_h)),
                   precision=jax.lax.Precision.HIGHEST)
  return x


def resize_bicubic_np(x: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
  """numpy twin of `resize_bicubic` for host-side constants (position tables)."""
  x = np.asarray(x, np.float32)
  if x.shape[-1] != out_w:
    x = np.einsum("...w,ow->...o", x, bicubic_matrix(x.shape[-1], out_w))
  if x.shape[-2] != out_h:
    x = np.einsum("...hw,oh->...ow", x, bicubic_matrix(x.shape[-2], out_h))
  return x.astype(np.float32)
