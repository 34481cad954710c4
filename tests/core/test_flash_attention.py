"""Flash attention (forward and its custom backward) equals plain masked attention: on CPU both the fused
kernels (kernels "1") and the tiled XLA path (kernels "0", what bfloat16 and accelerators run)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from autogaze_jax.core.flash_attention import flash_attention
from autogaze_jax.core.layers import attend


@pytest.fixture(params=["1", "0"], ids=["kernels", "tiled"])
def kernels(request, monkeypatch):
  monkeypatch.setenv("AUTOGAZE_CPU_KERNELS", request.param)
  return request.param


def _inputs(b=2, length=150, h=3, d=16, seed=0):
  r = np.random.default_rng(seed)
  q, k, v, w = [jnp.asarray(r.normal(size=(b, length, h, d)).astype(np.float32)) for _ in range(4)]
  valid = jnp.asarray(r.random((b, length)) < 0.7).at[:, 0].set(True)
  return q, k, v, w, valid


@pytest.mark.parametrize("ids_kind", ["token", "frame", "unsorted_self_edge"])
def test_flash_matches_masked_attention_values_and_grads(ids_kind, kernels):
  q, k, v, w, valid = _inputs()
  length = q.shape[1]
  ids = jnp.arange(length) if ids_kind == "token" else jnp.arange(length) // 37   # 37: tiles split frames
  edge = None
  if ids_kind == "unsorted_self_edge":   # the VideoMAE decoder layout: gazed slots, then whole frames again
    ids = jnp.concatenate([jnp.arange(60) // 15, jnp.arange(90) // 30])
    edge = jnp.asarray(np.random.default_rng(1).random((2, length)) < 0.5)
  mask = (ids[None, :] <= ids[:, None])[None] & valid[:, None, :]
  if edge is not None:
    mask = mask | (jnp.eye(length, dtype=bool)[None] & edge[:, :, None])
  ref = lambda q, k, v: attend(q, k, v, mask)                                      # noqa: E731
  fl = lambda q, k, v: flash_attention(q, k, v, ids, ids, valid, block=32, self_edge=edge)  # noqa: E731  pads to 160
  np.testing.assert_allclose(fl(q, k, v), ref(q, k, v), atol=2e-6)
  g_ref = jax.grad(lambda *a: jnp.sum(ref(*a) * w), argnums=(0, 1, 2))(q, k, v)
  g_fl = jax.jit(jax.grad(lambda *a: jnp.sum(fl(*a) * w), argnums=(0, 1, 2)))(q, k, v)
  for a, b in zip(g_ref, g_fl):
    assert float(jnp.max(jnp.abs(a))) > 0
    np.testing.assert_allclose(b, a, atol=2e-6 * float(jnp.max(jnp.abs(a))) + 1e-7)


def test_flash_skips_future_tiles_exactly(kernels):
  """Keys after the last query of a tile never influence it: changing them leaves earlier outputs bitwise."""
  q, k, v, _, valid = _inputs(length=128)
  ids = jnp.arange(128)
  out = flash_attention(q, k, v, ids, ids, valid, block=32)
  out2 = flash_attention(q, k.at[:, 64:].set(9.0), v.at[:, 64:].set(-9.0), ids, ids, valid, block=32)
  np.testing.assert_array_equal(out[:, :64], out2[:, :64])
  assert not np.allclose(out[:, 64:], out2[:, 64:])
