"""The fused CPU decoder-layer kernel (autogaze_jax/kernels/decoder_layer.cc) vs the XLA layer it replaces,
through `GazeDecoder.hidden_cached` (every layer; the last one for the read-out token only)."""
import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from autogaze_jax import GazeConfig
from autogaze_jax.kernels import cpu
from autogaze_jax.models.gaze_decoder import GazeDecoder
from autogaze_jax.sharding import make_mesh

pytestmark = pytest.mark.skipif(not cpu.supports_layer(jnp.zeros((1, 1, 192)), jnp.zeros((1, 1, 6, 32, 32)), 384),
                                reason="the CPU kernels cannot be built here (see the logged warning)")


def _decoder(hidden=192, heads=6, head_dim=32, inter=384, layers=2):
  base = GazeConfig()
  dec = dataclasses.replace(base.decoder, hidden_size=hidden, num_attention_heads=heads, num_key_value_heads=heads,
                            head_dim=head_dim, intermediate_size=inter, num_hidden_layers=layers)
  model = GazeDecoder(dataclasses.replace(base, decoder=dec, vision=dataclasses.replace(base.vision, out_dim=hidden),
                                          connector_hidden_dim=hidden), nnx.Rngs(0))
  rng = np.random.default_rng(hidden + layers)
  for layer in model.layers:  # norm scales away from 1 so the kernel's use of them is checked
    for norm in (layer.input_layernorm, layer.post_attention_layernorm):
      norm.scale[...] = jnp.asarray(rng.uniform(0.5, 1.5, norm.scale.shape), jnp.float32)
  return model


def _feed(model, b, n, start, slots, seed):
  """hidden_cached of n random tokens at `start` over a random earlier cache, kernels on and off."""
  rng = np.random.default_rng(seed)
  dc = model.cfg.decoder
  x = jnp.asarray(rng.normal(size=(b, n, dc.hidden_size)), jnp.float32)
  pos = jnp.asarray(start + np.arange(n)[None] + rng.integers(0, 3, (b, 1)), jnp.int32)
  ck, cv = (jnp.asarray(rng.normal(size=c.shape), jnp.float32) for c in model.init_cache(b, slots))
  valid = jnp.asarray(rng.random((b, slots)) < 0.8).at[:, start:start + n].set(True)
  graphdef, state = nnx.split(model)
  f = lambda s, x, pos, ck, cv, valid: nnx.merge(graphdef, s).hidden_cached(
      x, pos, (ck, cv), jnp.int32(start), valid, nnx.merge(graphdef, s).rope_table(slots))
  out = {}
  for flag in ("1", "0"):
    os.environ["AUTOGAZE_CPU_KERNELS"] = flag
    try:
      jf = jax.jit(f)
      if flag == "1":
        assert "autogaze_decoder_layer" in jf.lower(state, x, pos, ck, cv, valid).as_text()
      h, (k1, v1) = jf(state, x, pos, ck, cv, valid)
      out[flag] = (np.asarray(h), np.asarray(k1), np.asarray(v1))
    finally:
      os.environ.pop("AUTOGAZE_CPU_KERNELS")
  return out["1"], out["0"]


@pytest.mark.parametrize("dims,b,n,start,slots", [
    ((192, 6, 32, 384), 2, 206, 0, 512),     # a clip's first prefill (default sizes)
    ((192, 6, 32, 384), 2, 206, 700, 1024),  # a later prefill: blocks of 12 rows, 18 per sample
    ((192, 6, 32, 384), 3, 10, 300, 512),    # a decode step: one block of 10
    ((64, 4, 16, 96), 2, 7, 20, 256),        # other widths and head dims
    ((128, 2, 64, 160), 1, 1, 255, 256),     # one token at the very end of the cache
])
def test_layer_kernel_equals_xla(dims, b, n, start, slots):
  model = _decoder(*dims)
  (h, k, v), (h0, k0, v0) = _feed(model, b, n, start, slots, seed=n + start)
  np.testing.assert_allclose(h, h0, rtol=2e-5, atol=2e-5)
  np.testing.assert_allclose(k, k0, rtol=2e-5, atol=2e-5)   # every new token's rotated key...
  np.testing.assert_allclose(v, v0, rtol=2e-5, atol=2e-5)   # ...and value, in every layer
  untouched = np.ones(slots, bool)
  untouched[start:start + n] = False
  np.testing.assert_array_equal(k[..., untouched], k0[..., untouched])   # nothing else written
  np.testing.assert_array_equal(v[..., untouched, :], v0[..., untouched, :])


def test_layer_kernel_sharded_equals_single_device():
  """Batch-sharded activations and caches run per device (no gather) with the same numbers."""
  model = _decoder(layers=2)
  graphdef, state = nnx.split(model)
  rng = np.random.default_rng(7)
  b, n, slots, start = 8, 10, 256, 100
  x = jnp.asarray(rng.normal(size=(b, n, 192)), jnp.float32)
  pos = jnp.asarray(start + np.arange(n)[None].repeat(b, 0), jnp.int32)
  ck, cv = (jnp.asarray(rng.normal(size=c.shape), jnp.float32) for c in model.init_cache(b, slots))
  valid = jnp.asarray(rng.random((b, slots)) < 0.9).at[:, start:start + n].set(True)
  f = jax.jit(lambda s, x, pos, ck, cv, valid: nnx.merge(graphdef, s).hidden_cached(
      x, pos, (ck, cv), jnp.int32(start), valid, nnx.merge(graphdef, s).rope_table(slots)))
  single = jax.tree.map(np.asarray, f(state, x, pos, ck, cv, valid))
  mesh = make_mesh(data=8)
  put = lambda a, *spec: jax.device_put(a, NamedSharding(mesh, P(*spec)))
  args = (state, put(x, "data"), put(pos, "data"), put(ck, None, "data"), put(cv, None, "data"), put(valid, "data"))
  out = jax.block_until_ready(f(*args))
  assert out[0].sharding.spec[0] == "data"
  assert "all-gather" not in f.lower(*args).compile().as_text()
  jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, out), single)
