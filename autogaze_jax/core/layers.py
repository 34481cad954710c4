"""Small numerics shared by the gaze decoder, the VideoMAE judge, the gazed ViT and the perceptual nets.

Pure functions of arrays, plus the two NNX param holders (`Dense`, `LayerNorm`) whose names
(`kernel`/`scale`, `bias`) every checkpoint converter maps to, and the one pre-LayerNorm transformer
block of the ViT-family encoders. Norms, softmax and RoPE tables are float32 whatever the compute
dtype, as in the official model (HF LlamaRMSNorm / eager attention upcast to float32).
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from autogaze_jax.kernels import cpu as cpu_kernels

# Large finite negative for masked attention scores (HF eager uses finfo(float32).min; every query
# row always has at least one visible key, so this equals -inf after the softmax).
MASK_VALUE = -1e30


def rms_norm(x: jax.Array, scale: jax.Array, eps: float) -> jax.Array:
  """HF LlamaRMSNorm: `w * (x * rsqrt(mean(x^2) + eps))`, statistics in float32."""
  xf = x.astype(jnp.float32)
  xf = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + eps)
  return scale * xf.astype(x.dtype)


def layer_norm(x: jax.Array, scale: jax.Array, bias: jax.Array, eps: float) -> jax.Array:
  """torch.nn.LayerNorm over the last axis (biased variance), statistics in float32."""
  xf = x.astype(jnp.float32)
  mu = jnp.mean(xf, axis=-1, keepdims=True)
  var = jnp.mean(jnp.square(xf - mu), axis=-1, keepdims=True)
  return ((xf - mu) * jax.lax.rsqrt(var + eps) * scale + bias).astype(x.dtype)


def dense(x: jax.Array, kernel: jax.Array, bias: jax.Array | None = None) -> jax.Array:
  """x @ kernel (+ bias) in x's dtype; kernel is (in, out) as in Flax."""
  y = _matmul(x, kernel.astype(x.dtype))
  return y if bias is None else y + bias.astype(x.dtype)


@jax.custom_vjp
def _matmul(x, kernel):
  return jnp.dot(x, kernel)


def _matmul_fwd(x, kernel):
  return jnp.dot(x, kernel), (x, kernel)


def _matmul_bwd(res, g):
  """The same gradients as autodiff's, with the kernel's written as (g^T x)^T: for x (..., in) with
  several leading axes, autodiff's x^T g made XLA:CPU emit the activation gradient (e.g. through SiLU)
  in a transposed layout, a strided write as slow as the matmul itself; contracting both operands on
  their leading axis leaves the activations in place and transposes only the (out, in) result (a
  teacher-forced MLP forward+backward: 222 -> 163 ms on this CPU, identical numbers)."""
  x, kernel = res
  rows = lambda a: a.reshape(-1, a.shape[-1])  # noqa: E731
  gk = jax.lax.dot_general(rows(g), rows(x), (((0,), (0,)), ((), ())), preferred_element_type=jnp.float32)
  return jnp.dot(g, kernel.T), gk.T.astype(kernel.dtype)


_matmul.defvjp(_matmul_fwd, _matmul_bwd)


class Dense(nnx.Module):
  """A linear layer's params: kernel (in, out) = the torch weight transposed, bias (out,) (zeros if None).
  The caller draws the kernel, so each model keeps its own init scheme and random stream."""

  def __init__(self, kernel, bias=None):
    kernel = jnp.asarray(kernel, jnp.float32)
    self.kernel = nnx.Param(kernel)
    self.bias = nnx.Param(jnp.zeros(kernel.shape[-1:], jnp.float32) if bias is None else jnp.asarray(bias, jnp.float32))

  def arrays(self) -> tuple[jax.Array, jax.Array]:
    return self.kernel[...], self.bias[...]


class LayerNorm(nnx.Module):
  """torch.nn.LayerNorm params: scale (weight) ones, bias zeros."""

  def __init__(self, dim: int):
    self.scale = nnx.Param(jnp.ones((dim,), jnp.float32))
    self.bias = nnx.Param(jnp.zeros((dim,), jnp.float32))

  def arrays(self) -> tuple[jax.Array, jax.Array]:
    return self.scale[...], self.bias[...]


BLOCK_PARTS = ("ln1", "q", "k", "v", "o", "ln2", "fc1", "fc2")


def block_weights(*modules) -> dict:
  """`transformer_block` weights from a block's eight modules, in BLOCK_PARTS order (LayerNorm / Dense)."""
  return {part: m.arrays() for part, m in zip(BLOCK_PARTS, modules, strict=True)}


def transformer_block(w: dict, x: jax.Array, attention, *, heads: int, eps: float, dtype, tanh_gelu: bool):
  """One pre-LayerNorm encoder layer (HF ViT / ViTMAE / SigLIP / DINOv2) on the float32 residual stream.

  x (B, L, D) float32; matmuls in `dtype`, each branch added back in float32. w: {part: (kernel or
  scale, bias)} for BLOCK_PARTS, plus optional "ls1" / "ls2" (D,) layer scales (DINOv2).
  attention(q, k, v) maps (B, L, heads, D/heads) queries/keys/values to the same shape: the models
  differ in their masks and kernels only. tanh_gelu: SigLIP's `gelu_pytorch_tanh`; else exact erf GELU.
  """
  b, length, d = x.shape
  h = layer_norm(x, *w["ln1"], eps).astype(dtype)
  q, k, v = (dense(h, *w[part]).reshape(b, length, heads, d // heads) for part in ("q", "k", "v"))
  a = dense(attention(q, k, v).reshape(b, length, d), *w["o"]).astype(jnp.float32)
  x = x + (a * w["ls1"] if "ls1" in w else a)
  h = layer_norm(x, *w["ln2"], eps).astype(dtype)
  h = jax.nn.gelu(dense(h, *w["fc1"]), approximate=tanh_gelu)
  h = dense(h, *w["fc2"]).astype(jnp.float32)
  return x + (h * w["ls2"] if "ls2" in w else h)


def slot_frames(num_gazing_each_frame: jax.Array, n: int) -> jax.Array:
  """(N,) int32 frame of every gaze slot from the per-frame slot counts (T,) (which include padding)."""
  ends = jnp.cumsum(num_gazing_each_frame.astype(jnp.int32))
  return jnp.searchsorted(ends, jnp.arange(n, dtype=jnp.int32), side="right").astype(jnp.int32)


def llama3_inv_freq(head_dim: int, theta: float, scaling) -> np.ndarray:
  """RoPE inverse frequencies exactly as transformers 4.51 computes them in float32.

  The float32 power must be correctly rounded (numpy's vectorised float32 `**` is not): compute it
  in float64 and round once (the tests assert its float32 bit patterns).
  """
  exps = (np.arange(0, head_dim, 2).astype(np.float32) / np.float32(head_dim)).astype(np.float64)
  base = np.array([np.float32(theta ** e) for e in exps], np.float32)
  inv = (np.float32(1.0) / base).astype(np.float32)
  if scaling is None:
    return inv
  factor, low, high, old_ctx = (np.float32(scaling[0]), float(scaling[1]), float(scaling[2]),
                                float(scaling[3]))
  low_wavelen, high_wavelen = np.float32(old_ctx / low), np.float32(old_ctx / high)
  wavelen = (np.float32(2 * math.pi) / inv).astype(np.float32)
  llama = np.where(wavelen > low_wavelen, inv / factor, inv).astype(np.float32)
  smooth = ((np.float32(old_ctx) / wavelen - np.float32(low)) / np.float32(high - low)).astype(np.float32)
  smoothed = ((np.float32(1) - smooth) * llama / factor + smooth * llama).astype(np.float32)
  medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
  return np.where(medium, smoothed, llama).astype(np.float32)


def rope_cos_sin(positions: jax.Array, inv_freq: np.ndarray) -> tuple[jax.Array, jax.Array]:
  """(..., L) integer positions -> cos, sin of shape (..., L, head_dim), float32 ("rotate half" layout)."""
  ang = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq)
  ang = jnp.concatenate([ang, ang], axis=-1)
  return jnp.cos(ang), jnp.sin(ang)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
  """x (B, L, H, hd); cos/sin (B, L, hd). Non-interleaved rotate-half, as HF Llama."""
  half = x.shape[-1] // 2
  rot = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
  c, s = cos[:, :, None, :].astype(x.dtype), sin[:, :, None, :].astype(x.dtype)
  return x * c + rot * s


def attend(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array) -> jax.Array:
  """Masked softmax attention. q (B,Lq,H,d), k/v (B,Lk,H,d), mask (B,Lq,Lk) bool -> (B,Lq,H,d).

  Scores and softmax in float32 (HF eager upcasts the softmax); `mask` True = visible.
  """
  scale = 1.0 / math.sqrt(q.shape[-1])
  s = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) * scale
  s = jnp.where(mask[:, None], s, MASK_VALUE)
  p = jax.nn.softmax(s, axis=-1)
  return jnp.einsum("bhqk,bkhd->bqhd", p.astype(v.dtype), v)


def online_softmax_update(carry, s, v):
  """One key chunk of an online (flash) softmax: carry = (row max m, row sum l, unnormalised out acc),
  s (B,H,q,c) masked float32 scores, v (B,H,c,d). Shared by `cached_attention` and flash_attention."""
  m, l, acc = carry
  m_new = jnp.maximum(m, jnp.max(s, axis=-1))
  p = jnp.exp(s - m_new[..., None])
  r = jnp.exp(m - m_new)
  acc = acc * r[..., None] + jnp.einsum("bhqk,bhkd->bhqd", p.astype(v.dtype), v, preferred_element_type=jnp.float32)
  return m_new, l * r + jnp.sum(p, axis=-1), acc


def cached_attention(q: jax.Array, k: jax.Array, v: jax.Array, ck: jax.Array, cv: jax.Array, layer: int,
                     start: jax.Array, kv_valid: jax.Array, chunk: int):
  """Write n new tokens' keys/values at cache slots [start, start+n) of layer `layer`, then attend the
  last nq of them (q) over the cache, causal by slot. -> (out (B, nq, H, d), ck, cv).

  k, v (B, n, H, d); ck (layers, B, H, d, S) keys transposed, cv (layers, B, H, S, d); kv_valid (B, S)
  validity of every slot including the new ones. On CPU this is the fused kernel (autogaze_jax/kernels:
  in-place cache write + exact softmax, several times faster than XLA's ops) when it can be built;
  otherwise, and on other platforms, dynamic-update-slices + `cached_attention_jax`.
  """
  def xla(q, k, v, ck, cv, start, kv_valid):
    ck = jax.lax.dynamic_update_slice(ck, k.transpose(0, 2, 3, 1)[None].astype(ck.dtype), (layer, 0, 0, 0, start))
    cv = jax.lax.dynamic_update_slice(cv, v.transpose(0, 2, 1, 3)[None].astype(cv.dtype), (layer, 0, 0, start, 0))
    q_start = start + k.shape[1] - q.shape[1]
    return cached_attention_jax(q, ck, cv, q_start, kv_valid, layer=layer, chunk=chunk), ck, cv

  args = (q, k, v, ck, cv, start, kv_valid)
  if jax.default_backend() == "cpu" and cpu_kernels.supports(q, ck):
    kernel = lambda q, k, v, ck, cv, start, kv_valid: cpu_kernels.cached_attention(q, k, v, ck, cv, layer, start,
                                                                                    kv_valid)
    return jax.lax.platform_dependent(*args, cpu=kernel, default=xla)
  return xla(*args)


def cached_attention_jax(q: jax.Array, ck: jax.Array, cv: jax.Array, start: jax.Array, kv_valid: jax.Array,
                         *, layer: int, chunk: int) -> jax.Array:
  """The attention of `cached_attention` in XLA ops, over caches already written: query row i sits
  at slot start + i.

  q (B, n, H, d); ck (layers, B, H, d, S) keys transposed, cv (layers, B, H, S, d), S a multiple of
  `chunk` (the whole caches: chunks are sliced from them directly, so no per-layer copy is made);
  kv_valid (B, S) bool. Only the key chunks up to the last new slot are visited (a dynamic trip
  count: the cache is filled from slot 0 up), with an online softmax across chunks, so a rollout pays for the keys it has written, not for
  the whole fixed-size cache, and each chunk's scores stay in cache memory. Scores/softmax in float32.
  Masked keys get MASK_VALUE (finite): a row whose first chunks are all masked accumulates garbage
  that the first visible key's rescale factor exp(MASK_VALUE - m) multiplies to exactly 0.
  """
  b, n, h, d = q.shape
  slots = cv.shape[3]
  if slots % chunk:
    raise ValueError(f"cache of {slots} slots is not a multiple of the attention chunk {chunk}")
  qh = (q.transpose(0, 2, 1, 3) * (1.0 / math.sqrt(d))).astype(q.dtype)
  q_slot = start + jnp.arange(n)
  n_chunks = (start + n + chunk - 1) // chunk

  def body(c):
    i, m, l, acc = c
    kc = jax.lax.dynamic_slice(ck, (layer, 0, 0, 0, i * chunk), (1, b, h, d, chunk))[0].astype(q.dtype)
    vc = jax.lax.dynamic_slice(cv, (layer, 0, 0, i * chunk, 0), (1, b, h, chunk, d))[0].astype(q.dtype)
    kslot = i * chunk + jnp.arange(chunk)
    vis = (kslot[None, :] <= q_slot[:, None])[None] & jax.lax.dynamic_slice_in_dim(kv_valid, i * chunk, chunk, 1)[:, None]
    s = jnp.einsum("bhqd,bhdk->bhqk", qh, kc, preferred_element_type=jnp.float32)
    return (i + 1, *online_softmax_update((m, l, acc), jnp.where(vis[:, None], s, MASK_VALUE), vc))

  init = (jnp.zeros((), jnp.int32), jnp.full((b, h, n), MASK_VALUE, jnp.float32), jnp.zeros((b, h, n), jnp.float32),
          jnp.zeros((b, h, n, d), jnp.float32))
  _, _, l, acc = jax.lax.while_loop(lambda c: c[0] < n_chunks, body, init)
  return (acc / l[..., None]).astype(q.dtype).transpose(0, 2, 1, 3)
