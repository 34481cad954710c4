"""What every checkpoint format here shares: file names, the named error, safetensors reading,
atomic writes (a kill or a full disk never leaves a half-written file under the final name), the
torch <-> ours layout converters and the one engine that walks a format's name table.

A name table is a list of rows `(their tensor name, our param path, (to_ours, to_theirs))`; each
format builds its own from its config and the engine does the rest in both directions.
"""
from __future__ import annotations

import json
import os
from typing import Callable

import numpy as np

CONFIG_NAME, WEIGHTS_NAME = "config.json", "model.safetensors"
SAFETENSORS_METADATA = {"format": "pt"}  # the only value (besides none) the official loaders accept as-is


class CheckpointError(ValueError):
  """A checkpoint that cannot be read as an AutoGaze checkpoint; the message names the problem."""


def read_safetensors(path: str) -> tuple[dict[str, np.ndarray], dict]:
  """All tensors (numpy) and the metadata of a safetensors file, with clear errors."""
  from safetensors import SafetensorError, safe_open
  if not os.path.isfile(path):
    raise CheckpointError(f"missing weights file {path}")
  try:
    with safe_open(path, "np") as f:
      meta = f.metadata() or {}
      return {k: f.get_tensor(k) for k in f.keys()}, meta
  except (SafetensorError, OSError, ValueError) as e:
    size = os.path.getsize(path)
    raise CheckpointError(f"cannot read {path} ({size} bytes) as safetensors (truncated or corrupt?): {e}") from None


def read_json_config(path: str, parse, what: str = "checkpoint"):
  """`parse(dict)` of a JSON config file, with CheckpointError naming the file on any problem."""
  if not os.path.isfile(path):
    raise CheckpointError(f"{what} {os.path.dirname(path) or '.'!r} has no {os.path.basename(path)}")
  try:
    with open(path) as f:
      d = json.load(f)
  except json.JSONDecodeError as e:
    raise CheckpointError(f"{path} is not valid JSON: {e}") from None
  try:
    return parse(d)
  except (ValueError, TypeError) as e:
    raise CheckpointError(f"{path}: {e}") from None


def _atomic(path: str, write):
  tmp = path + ".tmp"
  try:
    write(tmp)
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def write_json(path: str, obj) -> None:
  """Pretty, key-sorted JSON with a trailing newline, written atomically."""
  def w(tmp):
    with open(tmp, "w") as f:
      json.dump(obj, f, indent=2, sort_keys=True, allow_nan=False)  # NaN is not JSON
      f.write("\n")
  _atomic(path, w)


def write_safetensors(path: str, tensors: dict[str, np.ndarray]) -> None:
  """Tensors (numpy) to a safetensors file with the official metadata, written atomically."""
  from safetensors.numpy import save_file
  _atomic(path, lambda tmp: save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, tmp,
                                      metadata=dict(SAFETENSORS_METADATA)))


# ---------------------------------------------------------------- layouts
# (to_ours, to_theirs) pairs, named for the torch layout; ours is the Flax one (dense kernels (in, out),
# conv kernels spatial dims first, channels last).
Layout = tuple[Callable[[np.ndarray], np.ndarray], Callable[[np.ndarray], np.ndarray]]
Row = tuple[str, tuple, Layout]

IDENT: Layout = (lambda a: a, lambda a: a)
LINEAR: Layout = (lambda a: a.T, lambda a: a.T)                                        # (out,in) <-> (in,out)
CONV2D_OIHW: Layout = (lambda a: a.transpose(2, 3, 1, 0), lambda a: a.transpose(3, 2, 0, 1))  # <-> HWIO
CONV3D_OITHW: Layout = (lambda a: a.transpose(2, 3, 4, 1, 0), lambda a: a.transpose(4, 3, 0, 1, 2))  # <-> THWIO
# A 1x1x1 conv is a dense layer on each voxel, so ours keeps only the (in, out) kernel.
CONV3D_OI111: Layout = (lambda a: a.reshape(a.shape[0], a.shape[1]).T,
                        lambda a: a.T.reshape(a.shape[1], a.shape[0], 1, 1, 1))


def conv2d_oihw_unfolded(channels: int, size: int) -> Layout:
  """(O, C, k, k) <-> a dense kernel (C*k*k, O) over unfolded patches, rows in (c, ky, kx) order.
  The flat side does not say how C*k*k splits, hence the factory."""
  return (lambda a: a.reshape(a.shape[0], -1).T, lambda a: a.T.reshape(a.shape[1], channels, size, size))


def weight_bias_rows(theirs: str, ours: tuple, layout: Layout = LINEAR) -> list[Row]:
  """`{theirs}.weight` -> ours/kernel in `layout`, `{theirs}.bias` -> ours/bias."""
  return [(f"{theirs}.weight", ours + ("kernel",), layout), (f"{theirs}.bias", ours + ("bias",), IDENT)]


def layernorm_rows(theirs: str, ours: tuple) -> list[Row]:
  """`{theirs}.weight` -> ours/scale, `{theirs}.bias` -> ours/bias."""
  return [(f"{theirs}.weight", ours + ("scale",), IDENT), (f"{theirs}.bias", ours + ("bias",), IDENT)]


# ---------------------------------------------------------------- engine
def _get(tree, path: tuple):
  for k in path:
    tree = tree[k]
  return tree


def torch_shapes(table: list[Row], abstract_pure: dict) -> dict[tuple, tuple[int, ...]]:
  """{our path: torch shape} for a name table over an abstract (ShapeDtypeStruct) pure-dict state."""
  return {path: tuple(to_theirs(np.empty(_get(abstract_pure, path).shape, np.float32)).shape)
          for _, path, (_, to_theirs) in table}


def tensors_to_params(table: list[Row], tensors: dict, shapes: dict[tuple, tuple[int, ...]], *, what: str,
                      prefix: str = "", any_float: bool = False,
                      hint: Callable[[list[str]], str] | None = None) -> dict:
  """Their tensors (numpy, keyed by table name) -> nested pure dict of our params, float32.

  Every table name must be present and nothing else (`hint(missing)` may add advice to that error);
  each tensor must have `shapes[our path]`, be float32 (or, with `any_float`, any float type,
  upcast) and hold finite values. Errors name tensors as `prefix + name`, the way the file spells them."""
  expected = {n for n, _, _ in table}
  missing = sorted(expected - set(tensors))
  unknown = sorted(set(tensors) - expected)
  if missing or unknown:
    raise CheckpointError(f"{what} tensors do not match the config: missing {[prefix + m for m in missing]}, "
                          f"unexpected {[prefix + u for u in unknown]}{hint(missing) if hint else ''}")
  out: dict = {}
  for name, path, (to_ours, _) in table:
    arr = np.asarray(tensors[name])
    if tuple(arr.shape) != shapes[path]:
      raise CheckpointError(f"tensor {prefix}{name} has shape {tuple(arr.shape)}, the config expects {shapes[path]}")
    if not any_float and arr.dtype != np.float32:
      raise CheckpointError(f"tensor {prefix}{name} has dtype {arr.dtype}, expected float32")
    # numpy does not count ml_dtypes' bfloat16 as floating, yet bf16 releases are common.
    if any_float and not np.issubdtype(arr.dtype, np.floating) and arr.dtype.name != "bfloat16":
      raise CheckpointError(f"tensor {prefix}{name} has dtype {arr.dtype}, expected a float type")
    arr = arr.astype(np.float32, copy=False)
    if not np.isfinite(arr).all():   # NaN/Inf weights would gaze and score silently wrong
      bad = int(arr.size - np.isfinite(arr).sum())
      raise CheckpointError(f"tensor {prefix}{name} holds {bad} non-finite values (NaN/Inf) of {arr.size}: the "
                            "checkpoint is corrupt")
    node = out
    for k in path[:-1]:
      node = node.setdefault(k, {})
    node[path[-1]] = np.ascontiguousarray(to_ours(arr))
  return out


def params_to_tensors(table: list[Row], params, prefix: str = "") -> dict[str, np.ndarray]:
  """Our params (nested pure dict or nnx.State) -> {prefix + their name: tensor} in torch layouts,
  float32 and contiguous, in table order."""
  if not isinstance(params, dict):
    params = params.to_pure_dict()
  return {prefix + name: np.ascontiguousarray(to_theirs(np.asarray(_get(params, path), np.float32)))
          for name, path, (_, to_theirs) in table}
