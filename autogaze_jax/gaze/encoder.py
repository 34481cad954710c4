"""Shallow causal video conv net + connector (official `ShallowVideoConvNet`, `Connector`; spec section 3).

Layouts (Flax convention; `interop/gaze.py` converts from torch):
  temporal_conv.kernel (kt, k, k, 3, hidden)   stem: a per-frame 16x16 patchify-linear
  norm.{scale,bias} (hidden,)                   LayerNorm eps 1e-5 over channels
  blocks[i].kernel (kt, ks, ks, hidden, hidden) causal trunk conv (front pad kt-1 zero frames) + ReLU
  out_proj.kernel (hidden, out)                 1x1x1 conv = per-token linear
  connector.pos_embed (tokens, out)             one learned table added to every frame
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from autogaze_jax.gaze.config import GazeConfig
from autogaze_jax.kernels import cpu as cpu_kernels
from autogaze_jax.core.layers import dense, layer_norm


def _uniform(rngs: nnx.Rngs, shape, fan_in: int):
  """torch's default Conv init: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weights and biases."""
  bound = 1.0 / np.sqrt(fan_in)
  return nnx.Param(jax.random.uniform(rngs.params(), shape, jnp.float32, -bound, bound))


class ConvLayer(nnx.Module):
  def __init__(self, kernel_shape, rngs: nnx.Rngs):
    fan_in = int(np.prod(kernel_shape[:-1]))
    self.kernel = _uniform(rngs, kernel_shape, fan_in)
    self.bias = _uniform(rngs, kernel_shape[-1:], fan_in)


class LayerNormParams(nnx.Module):
  def __init__(self, dim: int):
    self.scale = nnx.Param(jnp.ones((dim,), jnp.float32))
    self.bias = nnx.Param(jnp.zeros((dim,), jnp.float32))


class VisionEncoder(nnx.Module):
  """Frames (B, T, 3, S, S) normalised at input_img_size -> tokens (B, T, grid^2, out_dim)."""

  def __init__(self, cfg: GazeConfig, rngs: nnx.Rngs):
    v = cfg.vision
    self.cfg = cfg
    self.temporal_conv = ConvLayer((v.temporal_patch_size, v.kernel_size, v.kernel_size, 3, v.hidden_dim), rngs)
    self.norm = LayerNormParams(v.hidden_dim)
    kt, ks = v.trunk_temporal_kernel_size, v.trunk_spatial_kernel_size
    self.blocks = nnx.List([ConvLayer((kt, ks, ks, v.hidden_dim, v.hidden_dim), rngs) for _ in range(v.depth)])
    self.out_proj = ConvLayer((v.hidden_dim, v.out_dim), rngs)

  def stem(self, pixels: jax.Array) -> jax.Array:
    """(B, T, 3, S, S) -> post-LayerNorm features (B, T, g, g, hidden)."""
    b, t, c, s, _ = pixels.shape
    k, g = self.cfg.vision.kernel_size, self.cfg.grid
    x = pixels.astype(self.cfg.jnp_dtype)
    w = self.temporal_conv.kernel[...][0]  # (k, k, 3, hidden) -> rows in (c, ky, kx) order
    w = w.transpose(2, 0, 1, 3).reshape(c * k * k, -1)
    params = (w, self.temporal_conv.bias[...], self.norm.scale[...], self.norm.bias[...])

    def xla(x, w, bias, scale, shift):
      x = x.reshape(b, t, c, g, k, g, k).transpose(0, 1, 3, 5, 2, 4, 6).reshape(b, t, g, g, c * k * k)
      return layer_norm(dense(x, w, bias), scale, shift, 1e-5)

    if jax.default_backend() == "cpu" and cpu_kernels.supports_vision(x, w.shape[1]):
      kernel = lambda *a: cpu_kernels.stem(*a, eps=1e-5)
      return cpu_kernels.with_xla_grad(kernel, xla)(x, *(p.astype(jnp.float32) for p in params))
    return xla(x, *params)

  def trunk(self, x: jax.Array, conv_cache: tuple[jax.Array, ...] | None = None):
    """Causal conv blocks over post-norm features (B, T, g, g, C).

    conv_cache: per block, the last kt-1 (padded) input frames of the previous call (streaming);
    None = start of a clip (zero frames in front). Returns (features, new_cache).
    """
    kt = self.cfg.vision.trunk_temporal_kernel_size
    new_cache = []
    for i, blk in enumerate(self.blocks):
      if conv_cache is None:
        x = jnp.pad(x, ((0, 0), (kt - 1, 0), (0, 0), (0, 0), (0, 0)))
      else:
        x = jnp.concatenate([conv_cache[i].astype(x.dtype), x], axis=1)
      new_cache.append(x[:, x.shape[1] - (kt - 1):])
      pad = (self.cfg.vision.trunk_spatial_kernel_size - 1) // 2
      x = self._conv(x, blk.kernel[...].astype(x.dtype), blk.bias[...].astype(x.dtype), pad)
    return x, tuple(new_cache)

  @staticmethod
  def _conv(x, w, bias, pad):
    """relu(conv + bias) of time-padded x (B, T + kt - 1, g, g, C): the fused CPU kernel where it runs."""
    def xla(x, w, bias):
      y = jax.lax.conv_general_dilated(x, w, window_strides=(1, 1, 1), padding=((0, 0), (pad, pad), (pad, pad)),
                                       dimension_numbers=("NDHWC", "DHWIO", "NDHWC"))
      return jax.nn.relu(y + bias)

    if (jax.default_backend() == "cpu" and 2 * pad + 1 == w.shape[1] and w.shape[1] == w.shape[2]
        and cpu_kernels.supports_vision(x, w.shape[-1])):
      return cpu_kernels.with_xla_grad(cpu_kernels.causal_conv, xla)(x, w, bias)
    return xla(x, w, bias)

  def __call__(self, pixels: jax.Array, conv_cache=None):
    """-> (features (B, T, g*g, out_dim) before the connector, new conv cache)."""
    x = self.stem(pixels)
    x, cache = self.trunk(x, conv_cache)
    x = dense(x, self.out_proj.kernel[...], self.out_proj.bias[...])
    b, t = x.shape[:2]
    return x.reshape(b, t, -1, x.shape[-1]), cache

  def init_conv_cache(self, batch: int):
    """The zero front pad as an explicit cache (equivalent to conv_cache=None)."""
    v, g = self.cfg.vision, self.cfg.grid
    return tuple(jnp.zeros((batch, v.trunk_temporal_kernel_size - 1, g, g, v.hidden_dim), self.cfg.jnp_dtype)
                 for _ in range(v.depth))


class Connector(nnx.Module):
  def __init__(self, cfg: GazeConfig, rngs: nnx.Rngs):
    self.pos_embed = nnx.Param(jax.random.normal(rngs.params(), (cfg.num_frame_tokens, cfg.connector_hidden_dim)))

  def __call__(self, x: jax.Array) -> jax.Array:
    return x + self.pos_embed[...].astype(x.dtype)
