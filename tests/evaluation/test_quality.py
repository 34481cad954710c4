"""PSNR / SSIM (autogaze_jax/evaluation/quality.py) against a direct computation of their formulas."""
import numpy as np
import pytest

from autogaze_jax.evaluation import quality


def _pair(shape=(2, 24, 24, 3), seed=0):
  rng = np.random.default_rng(seed)
  a = rng.uniform(size=shape)
  return a, np.clip(a + rng.normal(scale=0.1, size=shape), 0, 1)


def test_psnr_is_the_formula():
  a, b = _pair()
  want = [10 * np.log10(1.0 / np.mean((a[i] - b[i]) ** 2)) for i in range(2)]
  np.testing.assert_allclose(quality.psnr(a, b), want, rtol=1e-12)
  assert quality.psnr(a, a)[0] == np.inf
  np.testing.assert_allclose(quality.psnr(a * 255, b * 255, data_range=255.0), want, rtol=1e-12)


def _ssim_direct(x, y):
  """Wang et al. 2004 by explicit window sums at every pixel whose 11x11 window lies inside the image
  (the border the library crops), Gaussian weights sigma 1.5, K = (0.01, 0.03), range 1, channel mean."""
  r = 5
  g = np.exp(-np.arange(-r, r + 1) ** 2 / (2 * 1.5 ** 2))
  w = np.outer(g, g) / np.outer(g, g).sum()
  c1, c2 = 0.01 ** 2, 0.03 ** 2
  vals = []
  for c in range(x.shape[-1]):
    for i in range(r, x.shape[0] - r):
      for j in range(r, x.shape[1] - r):
        px, py = x[i - r:i + r + 1, j - r:j + r + 1, c], y[i - r:i + r + 1, j - r:j + r + 1, c]
        mx, my = np.sum(w * px), np.sum(w * py)
        vx, vy = np.sum(w * px * px) - mx * mx, np.sum(w * py * py) - my * my
        cxy = np.sum(w * px * py) - mx * my
        vals.append(((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2)))
  return float(np.mean(vals))


def test_ssim_is_the_formula():
  a, b = _pair()
  got = quality.ssim(a, b)
  assert got.shape == (2,)
  np.testing.assert_allclose(got, [_ssim_direct(a[i], b[i]) for i in range(2)], rtol=1e-9)
  np.testing.assert_allclose(quality.ssim(a, a), 1.0, rtol=1e-12)
  assert 0 < got[0] < 0.99        # noise lowers it
  with pytest.raises(ValueError, match="share one shape"):
    quality.ssim(a, b[:, :20])


def test_task_space_round_trip():
  """task_to_unit inverts the released processor (pixels / 127.5 - 1, then ImageNet mean/std)."""
  from autogaze_jax.gaze.preprocess import Processor
  frames = np.random.default_rng(1).integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
  task = Processor().normalize(frames)
  np.testing.assert_allclose(quality.task_to_unit(task), frames / 255.0, atol=1e-6)
  np.testing.assert_array_equal(quality.unit_to_uint8(quality.task_to_unit(task)), frames)
