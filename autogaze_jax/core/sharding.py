"""Device mesh, regex parameter-sharding rules and batch sharding (shared by every trainer).

API
  make_mesh(data=-1, fsdp=1, devices=None) -> Mesh
      Axes ("data", "fsdp"); a size of -1 takes the remaining devices (at most one -1).
  DEFAULT_RULES: tuple[(regex, tactic)]
      Matched against the param path joined by "/" (e.g. "vit/layer/3/query/kernel"); first match wins.
      Tactics: "fsdp" = shard the largest dim divisible by the `fsdp` axis size over it (replicated when
      none divides); "replicate"; or an explicit `PartitionSpec`. Default: VideoMAE params
      (`vit/`, `decoder/`, optionally under a `videomae/` or `frozen/` prefix) FSDP, everything else replicated.
  param_specs(params, mesh, rules=DEFAULT_RULES) -> pytree of PartitionSpec (same structure)
  param_shardings(params, mesh, rules=DEFAULT_RULES) -> pytree of NamedSharding
      `params` may hold arrays or ShapeDtypeStructs (from `jax.eval_shape` / nnx abstract state).
  shard_params(params, mesh, rules=DEFAULT_RULES) -> params placed with `jax.device_put`.
  batch_sharding(mesh, ndim, axes=("data",)) -> NamedSharding splitting axis 0 over `axes` (pass
      ("data", "fsdp") to also split activations over the FSDP axis, as maxtext does).
  shard_batch(batch, mesh, axes=("data",)) -> host-local rows (per process) -> global arrays with the
      leading axis sharded by `batch_sharding`; 0-d arrays and non-dividing axes are replicated.
"""
from __future__ import annotations

import re
from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

AXES = ("data", "fsdp")

DEFAULT_RULES: tuple[tuple[str, Any], ...] = (
    (r"^((videomae|frozen)/)?(vit|decoder)/", "fsdp"),
    (r".*", "replicate"),
)


def make_mesh(data: int = -1, fsdp: int = 1, devices: Sequence | None = None) -> Mesh:
  """Mesh with axes ("data", "fsdp"); -1 = the remaining devices."""
  devices = list(devices if devices is not None else jax.devices())
  sizes = [data, fsdp]
  if sizes.count(-1) > 1:
    raise ValueError(f"mesh sizes data={data}, fsdp={fsdp}: at most one may be -1")
  known = int(np.prod([s for s in sizes if s != -1]))
  if known <= 0 or len(devices) % known:
    raise ValueError(f"mesh sizes data={data}, fsdp={fsdp} do not divide {len(devices)} devices")
  sizes = [len(devices) // known if s == -1 else s for s in sizes]
  if int(np.prod(sizes)) != len(devices):
    raise ValueError(f"mesh data={sizes[0]} x fsdp={sizes[1]} != {len(devices)} devices")
  return Mesh(np.asarray(devices).reshape(sizes), AXES)


def path_str(path) -> str:
  """Key path -> "a/b/0/c" (nnx.State adds a trailing "/value": rules should not anchor on it)."""
  parts = []
  for k in path:
    for attr in ("key", "idx", "name"):
      if hasattr(k, attr):
        parts.append(str(getattr(k, attr)))
        break
    else:
      parts.append(str(k))
  return "/".join(parts)


def _fsdp_spec(shape, n: int) -> P:
  if n == 1 or not shape:
    return P()
  order = sorted(range(len(shape)), key=lambda i: (-shape[i], i))
  for i in order:
    if shape[i] % n == 0:
      spec = [None] * len(shape)
      spec[i] = "fsdp"
      return P(*spec)
  return P()


def spec_for(path: str, shape, mesh: Mesh, rules=DEFAULT_RULES) -> P:
  """PartitionSpec of one param from the first matching rule."""
  for pattern, tactic in rules:
    if re.search(pattern, path):
      if isinstance(tactic, P):
        return tactic
      if tactic == "fsdp":
        return _fsdp_spec(tuple(shape), mesh.shape["fsdp"])
      if tactic == "replicate":
        return P()
      raise ValueError(f"unknown sharding tactic {tactic!r} for rule {pattern!r} (use 'fsdp', 'replicate' "
                       "or a PartitionSpec)")
  raise ValueError(f"no sharding rule matches param {path!r}; end the rules with ('.*', 'replicate')")


def param_specs(params, mesh: Mesh, rules=DEFAULT_RULES):
  return jax.tree_util.tree_map_with_path(lambda p, x: spec_for(path_str(p), x.shape, mesh, rules), params)


def param_shardings(params, mesh: Mesh, rules=DEFAULT_RULES):
  return jax.tree.map(lambda s: NamedSharding(mesh, s), param_specs(params, mesh, rules),
                      is_leaf=lambda x: isinstance(x, P))


def shard_params(params, mesh: Mesh, rules=DEFAULT_RULES):
  return jax.device_put(params, param_shardings(params, mesh, rules))


def batch_sharding(mesh: Mesh, ndim: int, axes=("data",)) -> NamedSharding:
  return NamedSharding(mesh, P(tuple(axes), *([None] * (ndim - 1))))


def shard_batch(batch, mesh: Mesh, axes=("data",)):
  """Host-local batch -> global jax.Arrays with the leading axis split over `axes`: the one batch placer.

  Each process passes its own rows (`jax.make_array_from_process_local_data`: the global batch is the
  concatenation over processes), so the same call serves one CPU and a pod. 0-d arrays and arrays whose
  global leading axis does not divide are replicated; strings stay numpy on the host; jax.Arrays that
  are already global are re-placed with `jax.device_put`.
  """
  n = int(np.prod([mesh.shape[a] for a in axes]))
  procs = jax.process_count()

  def put(x):
    if isinstance(x, jax.Array):
      return jax.device_put(x, batch_sharding(mesh, x.ndim, axes) if x.ndim and x.shape[0] % n == 0
                            else NamedSharding(mesh, P()))
    x = np.asarray(x)
    if x.dtype.kind in "OUS":
      return x
    if x.ndim == 0 or (x.shape[0] * procs) % n:
      return jax.device_put(x, NamedSharding(mesh, P()))
    return jax.make_array_from_process_local_data(batch_sharding(mesh, x.ndim, axes), x)
  return jax.tree.map(put, batch)
