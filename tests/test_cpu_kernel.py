"""The fused CPU cached-attention kernel (autogaze_jax/kernels) vs the XLA implementation it replaces."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from autogaze_jax import AutoGaze
from autogaze_jax.kernels import cpu
from autogaze_jax.models.layers import cached_attention, cached_attention_jax
from conftest import FIXTURES

pytestmark = pytest.mark.skipif(not cpu.supports(jnp.zeros((1, 1, 1, 32)), jnp.zeros((1, 1, 1, 32, 32))),
                                reason="the CPU kernel cannot be built here (see the logged warning)")


def _inputs(rng, b, n, h, d, s, density, layers=3):
  q = jnp.asarray(rng.normal(size=(b, n, h, d)), jnp.float32)
  ck = jnp.asarray(rng.normal(size=(layers, b, h, d, s)), jnp.float32)
  cv = jnp.asarray(rng.normal(size=(layers, b, h, s, d)), jnp.float32)
  valid = rng.random((b, s)) < density
  return q, ck, cv, valid


def _seen(valid, start, n):
  """(B, n) whether query row i (slot start + i) sees any valid key j <= start + i."""
  return np.stack([[valid[b, :start + i + 1].any() for i in range(n)] for b in range(valid.shape[0])])


@pytest.mark.parametrize("b,n,h,d,s,start,density", [
    (1, 206, 6, 32, 1024, 700, 0.9),    # a frame's prefill over earlier frames
    (2, 10, 6, 32, 512, 300, 0.7),      # a decode step (8 + 2 row blocks)
    (3, 5, 2, 64, 256, 0, 0.5),         # first tokens: early rows may see nothing
    (1, 3, 4, 16, 256, 250, 1.0),       # keys up to the very end of the cache
    (2, 37, 1, 128, 512, 100, 0.3),
])
def test_kernel_equals_xla_attention(b, n, h, d, s, start, density):
  rng = np.random.default_rng(n + s)
  q, ck, cv, valid = _inputs(rng, b, n, h, d, s, density)
  args = (q, ck, cv, jnp.int32(start), jnp.asarray(valid))
  ref = np.asarray(jax.jit(lambda *a: cached_attention_jax(*a, layer=1, chunk=256))(*args))
  out = np.asarray(jax.jit(lambda q, ck, cv, st, v: cpu.cached_attention(q, ck, cv, 1, st, v))(*args))
  seen = _seen(valid, start, n)
  assert seen.any()
  np.testing.assert_allclose(out[seen], ref[seen], rtol=2e-5, atol=2e-6)
  np.testing.assert_array_equal(out[~seen], 0.0)   # rows without a visible key: zeros, not NaN


def test_kernel_is_the_cpu_path_and_ignores_stale_keys():
  """`cached_attention` dispatches to the kernel here; keys past start + n (stale or NaN) never leak."""
  rng = np.random.default_rng(0)
  q, ck, cv, valid = _inputs(rng, 2, 10, 6, 32, 256, 1.0)
  ck = ck.at[:, :, :, :, 120:].set(jnp.nan)
  cv = cv.at[:, :, 120:].set(jnp.nan)
  f = jax.jit(lambda q, ck, cv: cached_attention(q, ck, cv, 0, jnp.int32(100), jnp.asarray(valid), 256))
  assert "autogaze_cached_attention" in f.lower(q, ck, cv).as_text()
  out = np.asarray(f(q, ck, cv))
  ref = np.asarray(cached_attention_jax(q, ck.at[..., 120:].set(0), cv.at[:, :, :, 120:].set(0), jnp.int32(100),
                                        jnp.asarray(valid), layer=0, chunk=256))
  np.testing.assert_allclose(out, ref, rtol=2e-5, atol=2e-6)


def test_kernel_sharded_equals_single_device():
  """Batch-sharded inputs are attended per device (no gather of the cache) with the same numbers."""
  rng = np.random.default_rng(1)
  q, ck, cv, valid = _inputs(rng, 8, 10, 6, 32, 512, 0.8)
  f = jax.jit(lambda q, ck, cv, v: cached_attention(q, ck, cv, 2, jnp.int32(300), v, 256))
  single = np.asarray(f(q, ck, cv, jnp.asarray(valid)))
  mesh = jax.make_mesh((8,), ("data",))
  put = lambda x, *spec: jax.device_put(x, NamedSharding(mesh, P(*spec)))
  args = (put(q, "data"), put(ck, None, "data"), put(cv, None, "data"), put(jnp.asarray(valid), "data"))
  out = jax.block_until_ready(f(*args))
  assert out.sharding.spec[0] == "data"
  assert "all-gather" not in f.lower(*args).compile().as_text()
  np.testing.assert_array_equal(np.asarray(out), single)


def test_rollout_identical_with_and_without_kernel(monkeypatch):
  """Whole official-checkpoint rollouts (ratio and threshold) give the same gaze either way."""
  model = AutoGaze.from_pretrained(os.path.join(FIXTURES, "gaze_tiny"))
  pv = np.load(os.path.join(FIXTURES, "gaze_tiny", "input_clip.npz"))["pixel_values"]
  x = np.concatenate([pv, pv[..., ::-1]])
  runs = {}
  for flag in ("1", "0"):
    monkeypatch.setenv("AUTOGAZE_CPU_KERNELS", flag)
    jax.clear_caches()  # the flag is read when a program is traced
    runs[flag] = [model.generate(x, r, t, generate_only=True) for r, t in ((0.3, None), (0.75, 0.7))]
  for a, b in zip(runs["1"], runs["0"]):
    for k in ("gazing_pos", "if_padded_gazing", "num_gazing_each_frame"):
      np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_build_is_cached_and_reports_compiler_errors(tmp_path, monkeypatch):
  first = cpu.build(tmp_path)
  mtime = first.stat().st_mtime_ns
  assert cpu.build(tmp_path) == first and first.stat().st_mtime_ns == mtime   # reused, not rebuilt
  monkeypatch.setenv("CXX", "false")   # a "compiler" that always fails
  monkeypatch.setattr(cpu, "SOURCE", tmp_path / "broken.cc")
  (tmp_path / "broken.cc").write_text("this is not C++\n")
  with pytest.raises(RuntimeError, match="failed"):
    cpu.build(tmp_path / "other")
  assert not list((tmp_path / "other").glob("*.so"))   # no half-written library left behind
