"""`core.layers.dense`'s custom kernel gradient ((g^T x)^T, written to keep XLA:CPU from transposing the
activations) equals autodiff of the plain matmul, for any number of leading axes and in bfloat16."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from autogaze_jax.core.layers import dense


@pytest.mark.parametrize("shape,dtype", [((7,), jnp.float32), ((5, 7), jnp.float32), ((2, 3, 4, 7), jnp.float32),
                                         ((3, 4, 7), jnp.bfloat16)])
def test_dense_gradients_equal_autodiff(shape, dtype):
  r = np.random.default_rng(len(shape))
  x = jnp.asarray(r.normal(size=shape), dtype)
  kernel, bias = jnp.asarray(r.normal(size=(7, 6)), jnp.float32), jnp.asarray(r.normal(size=(6,)), jnp.float32)
  w = jnp.asarray(r.normal(size=(*shape[:-1], 6)), jnp.float32)
  ours = lambda x, k, b: jnp.sum(dense(x, k, b).astype(jnp.float32) * w)  # noqa: E731
  ref = lambda x, k, b: jnp.sum((jnp.dot(x, k.astype(x.dtype)) + b.astype(x.dtype)).astype(jnp.float32) * w)  # noqa: E731
  np.testing.assert_allclose(ours(x, kernel, bias), ref(x, kernel, bias), rtol=1e-6)
  got = jax.jit(jax.grad(ours, argnums=(0, 1, 2)))(x, kernel, bias)
  want = jax.grad(ref, argnums=(0, 1, 2))(x, kernel, bias)
  tol = 1e-5 if dtype == jnp.float32 else 2e-2
  for a, b in zip(got, want):
    assert a.dtype == b.dtype and a.shape == b.shape
    np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32),
                               rtol=tol, atol=tol * float(jnp.max(jnp.abs(b.astype(jnp.float32)))))
