"""sharding.py: mesh sizes, regex rules (first match wins), FSDP dim choice, batch placement."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from autogaze_jax.core.sharding import (DEFAULT_RULES, make_mesh, param_shardings, param_specs, shard_batch,
                                   shard_params, spec_for)


def test_make_mesh_sizes():
  m = make_mesh(data=-1, fsdp=4)
  assert dict(m.shape) == {"data": 2, "fsdp": 4}
  assert dict(make_mesh(data=8, fsdp=-1).shape) == {"data": 8, "fsdp": 1}
  with pytest.raises(ValueError, match="at most one"):
    make_mesh(data=-1, fsdp=-1)
  with pytest.raises(ValueError, match="do not divide"):
    make_mesh(data=3, fsdp=-1)
  with pytest.raises(ValueError, match="!= 8 devices"):
    make_mesh(data=2, fsdp=2)


def test_rules_first_match_and_fsdp_dim():
  m = make_mesh(data=2, fsdp=4)
  assert spec_for("vit/layer/0/intermediate/kernel/value", (32, 64), m) == P(None, "fsdp")   # largest dim
  assert spec_for("decoder/decoder_pred/kernel", (32, 768), m) == P(None, "fsdp")
  assert spec_for("vit/embeddings/time_embed", (256, 32), m) == P("fsdp", None)
  assert spec_for("vit/layernorm/bias", (30,), m) == P()                    # nothing divisible -> replicated
  assert spec_for("frozen/vit/layer/0/query/kernel", (8, 8), m) == P("fsdp", None)  # tie -> first dim
  assert spec_for("gaze_decoder/lm_head/kernel", (192, 2660), m) == P()       # not VideoMAE -> replicated
  rules = ((r"lm_head", P(None, "fsdp")),) + DEFAULT_RULES
  assert spec_for("gaze_decoder/lm_head/kernel", (192, 2660), m, rules) == P(None, "fsdp")
  with pytest.raises(ValueError, match="no sharding rule"):
    spec_for("x", (2,), m, rules=((r"^vit", "fsdp"),))
  with pytest.raises(ValueError, match="unknown sharding tactic"):
    spec_for("x", (2,), m, rules=((r".*", "tp"),))


def test_shard_params_and_batch():
  m = make_mesh(data=2, fsdp=4)
  params = {"vit": {"w": jnp.arange(64.0).reshape(8, 8)}, "other": {"w": jnp.ones((8, 8))}}
  specs = param_specs(params, m)
  assert specs["vit"]["w"] == P("fsdp", None) and specs["other"]["w"] == P()
  ps = jax.block_until_ready(shard_params(params, m))
  assert ps["vit"]["w"].sharding == param_shardings(params, m)["vit"]["w"]
  assert ps["vit"]["w"].addressable_shards[0].data.shape == (2, 8)
  np.testing.assert_array_equal(np.asarray(ps["vit"]["w"]), np.asarray(params["vit"]["w"]))
  b = shard_batch({"x": np.zeros((4, 3)), "s": np.float32(1.0), "odd": np.zeros((3, 2))}, m)
  assert b["x"].addressable_shards[0].data.shape == (2, 3)
  assert b["s"].sharding.spec == P() and b["odd"].sharding.spec == P()
  b8 = shard_batch({"x": np.zeros((8, 3))}, m, axes=("data", "fsdp"))
  assert b8["x"].addressable_shards[0].data.shape == (1, 3)


def test_optimizer_moments_follow_their_param_sharding_by_path():
  """Adam moments get their param's sharding by tree path (same-shaped params sharded differently stay distinct)."""
  import optax
  from jax.sharding import NamedSharding, PartitionSpec as P
  from autogaze_jax.core import sharding as shd
  from autogaze_jax.train.loop import _match_param_shardings
  mesh = shd.make_mesh(data=1, fsdp=8)
  params = {"vit": {"w": jnp.ones((16, 8))}, "gaze": {"w": jnp.ones((16, 8))}, "b": jnp.ones((3,))}
  p_shard = shd.param_shardings(params, mesh)
  tx = optax.multi_transform({"a": optax.adam(1e-3), "z": optax.set_to_zero()},
                             {"vit": {"w": "a"}, "gaze": {"w": "a"}, "b": "z"})
  opt = tx.init(params)
  rep = NamedSharding(mesh, P())
  got = _match_param_shardings(opt, jax.tree.map(lambda _: rep, opt), params, p_shard)
  mu = got.inner_states["a"].inner_state[0].mu
  assert mu["vit"]["w"].spec == P("fsdp", None) and mu["gaze"]["w"].spec == P()
  assert got.inner_states["a"].inner_state[0].count.spec == P()
