"""The fused CPU cached-attention kernel (autogaze_jax/kernels) vs the XLA implementation it replaces."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from autogaze_jax import AutoGaze
from autogaze_jax.kernels import cpu
from autogaze_jax.core.layers import cached_attention
from tests.conftest import FIXTURES

pytestmark = pytest.mark.skipif(not cpu.supports(jnp.zeros((1, 1, 1, 32)), jnp.zeros((1, 1, 1, 32, 32))),
                                reason="the CPU kernel cannot be built here (see the logged warning)")


def _inputs(rng, b, n, nq, h, d, s, density, layers=3):
  arr = lambda *shape: jnp.asarray(rng.normal(size=shape), jnp.float32)
  return (arr(b, nq, h, d), arr(b, n, h, d), arr(b, n, h, d), arr(layers, b, h, d, s), arr(layers, b, h, s, d),
          rng.random((b, s)) < density)


def _seen(valid, q_start, nq):
  """(B, nq) whether query row i (slot q_start + i) sees any valid key j <= its slot."""
  return np.stack([[valid[b, :q_start + i + 1].any() for i in range(nq)] for b in range(valid.shape[0])])


def _both(args, layer=1):
  """(kernel, XLA) results of `cached_attention` on the same inputs."""
  out = {}
  for impl in ("kernel", "xla"):
    os.environ["AUTOGAZE_CPU_KERNELS"] = "1" if impl == "kernel" else "0"
    try:
      f = jax.jit(lambda q, k, v, ck, cv, st, va: cached_attention(q, k, v, ck, cv, layer, st, va, 256))
      out[impl] = [np.asarray(x) for x in f(*args)]
    finally:
      os.environ.pop("AUTOGAZE_CPU_KERNELS")
  return out["kernel"], out["xla"]


@pytest.mark.parametrize("b,n,nq,h,d,s,start,density", [
    (1, 206, 206, 6, 32, 1024, 700, 0.9),  # a frame's prefill over earlier frames
    (2, 10, 10, 6, 32, 512, 300, 0.7),     # a decode step
    (2, 10, 1, 6, 32, 512, 300, 0.7),      # the last layer: only the read-out token queries
    (3, 5, 5, 2, 64, 256, 0, 0.5),         # first tokens: early rows may see nothing
    (1, 3, 2, 4, 16, 256, 253, 1.0),       # keys up to the very end of the cache
    (2, 37, 37, 1, 128, 512, 100, 0.3),
])
def test_kernel_equals_xla_attention(b, n, nq, h, d, s, start, density):
  rng = np.random.default_rng(n + s)
  q, k, v, ck, cv, valid = _inputs(rng, b, n, nq, h, d, s, density)
  (out, ck1, cv1), (ref, ck0, cv0) = _both((q, k, v, ck, cv, jnp.int32(start), jnp.asarray(valid)))
  np.testing.assert_array_equal(ck1, ck0)   # the same cache writes, nothing else touched
  np.testing.assert_array_equal(cv1, cv0)
  seen = _seen(valid, start + n - nq, nq)
  assert seen.any()
  np.testing.assert_allclose(out[seen], ref[seen], rtol=2e-5, atol=2e-6)
  np.testing.assert_array_equal(out[~seen], 0.0)   # rows without a visible key: zeros, not NaN


def test_kernel_is_the_cpu_path_and_ignores_stale_keys():
  """`cached_attention` dispatches to the kernel here; keys past start + n (stale or NaN) never leak."""
  rng = np.random.default_rng(0)
  q, k, v, ck, cv, valid = _inputs(rng, 2, 10, 10, 6, 32, 256, 1.0)
  ck, cv = ck.at[..., 120:].set(jnp.nan), cv.at[:, :, :, 120:].set(jnp.nan)
  f = jax.jit(lambda *a: cached_attention(*a, 0, jnp.int32(100), jnp.asarray(valid), 256))
  assert "autogaze_cached_attention" in f.lower(q, k, v, ck, cv).as_text()
  out = np.asarray(f(q, k, v, ck, cv)[0])
  clean = (q, k, v, jnp.nan_to_num(ck), jnp.nan_to_num(cv), jnp.int32(100), jnp.asarray(valid))
  np.testing.assert_allclose(out, _both(clean, layer=0)[1][0], rtol=2e-5, atol=2e-6)


def test_kernel_sharded_equals_single_device():
  """Batch-sharded inputs are attended per device (no gather of the cache) with the same numbers."""
  rng = np.random.default_rng(1)
  q, k, v, ck, cv, valid = _inputs(rng, 8, 10, 10, 6, 32, 512, 0.8)
  f = jax.jit(lambda q, k, v, ck, cv, va: cached_attention(q, k, v, ck, cv, 2, jnp.int32(300), va, 256))
  single = [np.asarray(x) for x in f(q, k, v, ck, cv, jnp.asarray(valid))]
  mesh = jax.make_mesh((8,), ("data",))
  put = lambda x, *spec: jax.device_put(x, NamedSharding(mesh, P(*spec)))
  args = (put(q, "data"), put(k, "data"), put(v, "data"), put(ck, None, "data"), put(cv, None, "data"),
          put(jnp.asarray(valid), "data"))
  out = jax.block_until_ready(f(*args))
  assert out[0].sharding.spec[0] == "data" and out[1].sharding.spec[1] == "data"
  assert "all-gather" not in f.lower(*args).compile().as_text()
  for a, b in zip(out, single):
    np.testing.assert_array_equal(np.asarray(a), b)


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
  monkeypatch.setattr(cpu, "SOURCES", (tmp_path / "broken.cc",))
  (tmp_path / "broken.cc").write_text("this is not C++\n")
  with pytest.raises(RuntimeError, match="failed"):
    cpu.build(tmp_path / "other")
  assert not list((tmp_path / "other").glob("*.so"))   # no half-written library left behind
