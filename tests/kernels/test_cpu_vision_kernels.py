"""The fused CPU vision kernels (autogaze_jax/kernels/vision.cc) vs the XLA ops they replace."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from autogaze_jax import GazeConfig
from autogaze_jax.gaze.config import VisionConfig
from autogaze_jax.kernels import cpu
from autogaze_jax.gaze.encoder import VisionEncoder
from autogaze_jax.core.sharding import make_mesh

pytestmark = pytest.mark.skipif(not cpu.supports_vision(jnp.zeros((1,), jnp.float32), 32),
                                reason="the CPU kernels cannot be built here (see the logged warning)")


def _encoder(size, kernel, hidden, depth=1, ks=3):
  """A small vision encoder with non-trivial norm parameters and biases."""
  vision = VisionConfig(hidden_dim=hidden, depth=depth, kernel_size=kernel, trunk_spatial_kernel_size=ks)
  cfg = GazeConfig(vision=vision, input_img_size=size)
  enc = VisionEncoder(cfg, nnx.Rngs(0))
  rng = np.random.default_rng(size + hidden)
  for p in (enc.norm.scale, enc.norm.bias, enc.temporal_conv.bias, *(b.bias for b in enc.blocks)):
    p[...] = jnp.asarray(rng.normal(size=p.shape), jnp.float32)
  return enc


def _both(fn, *args):
  """fn(*args) jitted with the kernels on and off."""
  out = {}
  for flag in ("1", "0"):
    os.environ["AUTOGAZE_CPU_KERNELS"] = flag
    try:
      out[flag] = jax.tree.map(np.asarray, jax.jit(fn)(*args))
    finally:
      os.environ.pop("AUTOGAZE_CPU_KERNELS")
  return out["1"], out["0"]


@pytest.mark.parametrize("size,kernel,hidden,ks", [(32, 16, 64, 3), (48, 16, 32, 3), (70, 5, 96, 3), (28, 4, 32, 1)])
def test_encoder_kernels_equal_xla(size, kernel, hidden, ks):
  """Stem (patchify + LayerNorm) and causal trunk conv: grids of 2x2 to 14x14 (odd, one-block and
  multi-block rows), 1x1 and 3x3 spatial kernels, every frame (the causal front padding included)."""
  enc = _encoder(size, kernel, hidden, ks=ks)
  graphdef, state = nnx.split(enc)
  x = jnp.asarray(np.random.default_rng(size).normal(size=(2, 5, 3, size, size)), jnp.float32)
  f = lambda s, x: nnx.merge(graphdef, s)(x)[0]
  lowered = jax.jit(f).lower(state, x).as_text()
  assert "autogaze_stem" in lowered and "autogaze_causal_conv" in lowered   # the kernels run here
  got, ref = _both(f, state, x)
  assert got.shape == (2, 5, (size // kernel) ** 2, 192)
  np.testing.assert_allclose(got, ref, rtol=1e-5, atol=2e-5)


def test_streaming_conv_cache_and_gradients():
  """The kernels with a carried conv cache equal XLA; under differentiation XLA's ops run, so gradients
  are XLA's."""
  enc = _encoder(32, 16, 64)
  graphdef, state = nnx.split(enc)
  rng = np.random.default_rng(3)
  x = jnp.asarray(rng.normal(size=(2, 3, 3, 32, 32)), jnp.float32)
  cache = tuple(jnp.asarray(rng.normal(size=c.shape), jnp.float32) for c in enc.init_conv_cache(2))
  got, ref = _both(lambda s, x, c: nnx.merge(graphdef, s)(x, c), state, x, cache)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=2e-5), got, ref)
  loss = lambda s, x: jnp.sum(jnp.sin(nnx.merge(graphdef, s)(x)[0]))
  got, ref = _both(jax.grad(loss, argnums=(0, 1)), state, x)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), got, ref)


def test_sharded_equals_single_device():
  """Batch-sharded frames run per device (no gather) with the same numbers as one device."""
  enc = _encoder(32, 16, 64)
  graphdef, state = nnx.split(enc)
  x = jnp.asarray(np.random.default_rng(5).normal(size=(8, 3, 3, 32, 32)), jnp.float32)
  f = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x)[0])
  single = np.asarray(f(state, x))
  mesh = make_mesh(data=8)   # the project's mesh (as training and the rollout use)
  xs = jax.device_put(x, NamedSharding(mesh, P("data")))
  out = jax.block_until_ready(f(state, xs))
  assert out.sharding.spec[0] == "data"
  assert "all-gather" not in f.lower(state, xs).compile().as_text()
  np.testing.assert_array_equal(np.asarray(out), single)


def test_bad_shapes_are_clear_errors():
  """The kernels check their buffers: a mismatched weight is an error, not a silent wrong result."""
  x = jnp.zeros((1, 4, 3, 3, 16), jnp.float32)
  with pytest.raises(Exception, match="causal_conv: inconsistent shapes"):
    jax.block_until_ready(cpu.causal_conv(x, jnp.zeros((3, 3, 3, 8, 32)), jnp.zeros((32,))))
