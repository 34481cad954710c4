"""A restricted reader of zip-format `torch.save` state dicts, without torch (numpy only).

A torch checkpoint is a zip archive `<root>/data.pkl` + `<root>/data/<key>` (one raw storage per
key) + `<root>/byteorder`. Unpickling `data.pkl` with the stock unpickler would import and call any
global the file names (`os.system`, `builtins.eval`, ...). Here `find_class` resolves only the few
globals a plain tensor state dict needs: `collections.OrderedDict`, `torch._utils._rebuild_tensor_v2`,
`torch._utils._rebuild_parameter` and the typed storage classes (`torch.FloatStorage`, ...); each
maps to a numpy stand-in. Any other global raises `UnsafeCheckpointError` naming it, before anything
is called. Storages come from `persistent_load` as flat numpy arrays (dtype from the storage class,
byte order from the archive) and tensors are strided copies of them.

`read_torch_state_dict(path)` -> {name: np.ndarray}. bfloat16 storages are returned as float32
(exact: the bf16 bits are the high half of the float32 bits), as numpy has no bfloat16.
"""
from __future__ import annotations

import collections
import io
import os
import pickle
import zipfile

import numpy as np

from autogaze_jax.interop.common import CheckpointError


class UnsafeCheckpointError(CheckpointError):
  """The pickle of a torch checkpoint names a global that a plain tensor state dict never needs."""


# storage class name -> numpy dtype (little-endian form; the archive's byteorder decides the real one)
STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "BFloat16Storage": "bfloat16", "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16,
    "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}


class _StorageType:
  """Stand-in for `torch.<X>Storage`: only its element type matters."""

  def __init__(self, name: str):
    self.name = name
    self.dtype = STORAGE_DTYPES[name]

  def __repr__(self):
    return f"torch.{self.name}"


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                       metadata=None):
  """`torch._utils._rebuild_tensor_v2` on a flat numpy storage: a strided view, copied."""
  if not isinstance(storage, np.ndarray):
    raise CheckpointError(f"tensor storage is {type(storage).__name__}, not a storage record")
  size, stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)
  offset = int(storage_offset)
  if len(size) != len(stride) or offset < 0 or any(s < 0 for s in size) or any(s < 0 for s in stride):
    raise CheckpointError(f"malformed tensor: offset {offset}, size {size}, stride {stride}")
  if 0 in size:
    return np.zeros(size, storage.dtype)
  last = offset + sum((n - 1) * s for n, s in zip(size, stride))
  if last >= storage.size:
    raise CheckpointError(f"tensor (offset {offset}, size {size}, stride {stride}) reads element {last} of a "
                          f"storage of {storage.size}")
  item = storage.dtype.itemsize
  view = np.lib.stride_tricks.as_strided(storage[offset:], size, tuple(s * item for s in stride), writeable=False)
  return np.array(view, copy=True)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
  """`torch._utils._rebuild_parameter`: an nn.Parameter is just its tensor here."""
  return data


# (module, name) -> stand-in. Nothing outside this table is ever resolved.
_ALLOWED = {("collections", "OrderedDict"): collections.OrderedDict,
            ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
            ("torch._utils", "_rebuild_parameter"): _rebuild_parameter}
_ALLOWED.update({("torch", name): _StorageType(name) for name in STORAGE_DTYPES})


class _Unpickler(pickle.Unpickler):
  def __init__(self, file, load_storage):
    super().__init__(file)
    self._load_storage = load_storage

  def find_class(self, module, name):
    try:
      return _ALLOWED[(module, name)]
    except KeyError:
      raise UnsafeCheckpointError(
          f"checkpoint pickle references the global {module}.{name}, which a plain tensor state dict never "
          f"needs; refusing to load it (allowed: {sorted(f'{m}.{n}' for m, n in _ALLOWED)})") from None

  def persistent_load(self, pid):
    if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage" and isinstance(pid[1], _StorageType)):
      raise UnsafeCheckpointError(f"checkpoint pickle has an unknown persistent id {pid!r:.200}")
    _, stype, key, _location, numel = pid
    return self._load_storage(stype, str(key), int(numel))


def _root(names: list[str], path: str) -> str:
  """The archive's top folder (torch names it after the file it first saved to, so never assume it)."""
  pkls = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
  if len(pkls) != 1:
    raise CheckpointError(f"{path} is a zip file but not a torch checkpoint: expected one <root>/data.pkl, "
                          f"found {pkls or 'none'}")
  return pkls[0][:-len("data.pkl")]


def read_torch_state_dict(path: str) -> dict[str, np.ndarray]:
  """A zip-format torch checkpoint holding a flat {name: tensor} dict -> {name: np.ndarray}.

  Raises `UnsafeCheckpointError` for any global outside the allow-list, `CheckpointError` for a file
  that is not a zip torch checkpoint (the legacy pre-1.6 format included), a missing storage record,
  a malformed tensor, or a pickle that is not a flat dict of tensors."""
  if not os.path.isfile(path):
    raise CheckpointError(f"missing torch checkpoint {path}")
  if not zipfile.is_zipfile(path):
    raise CheckpointError(f"{path} is not a zip-format torch checkpoint (torch.save of torch >= 1.6; the legacy "
                          f"format and other files are not read)")
  with zipfile.ZipFile(path) as zf:
    names = zf.namelist()
    root = _root(names, path)
    order = "little"
    if root + "byteorder" in names:
      order = zf.read(root + "byteorder").decode("ascii", "replace").strip()
    if order not in ("little", "big"):
      raise CheckpointError(f"{path}: unknown byteorder {order!r}")
    cache: dict[str, np.ndarray] = {}

    def load_storage(stype: _StorageType, key: str, numel: int) -> np.ndarray:
      if key not in cache:
        rec = root + "data/" + key
        if rec not in names:
          raise CheckpointError(f"{path}: storage record {rec} is missing")
        raw = zf.read(rec)
        bf16 = stype.dtype == "bfloat16"
        dt = np.dtype(np.uint16 if bf16 else stype.dtype).newbyteorder("<" if order == "little" else ">")
        if len(raw) != numel * dt.itemsize:
          raise CheckpointError(f"{path}: storage {rec} has {len(raw)} bytes, expected {numel} x {dt.itemsize} "
                                f"({stype})")
        arr = np.frombuffer(raw, dt)
        if bf16:
          arr = (arr.astype(np.uint32) << 16).view(np.float32)
        cache[key] = arr.astype(arr.dtype.newbyteorder("="), copy=False)
      arr = cache[key]
      want = np.float32 if stype.dtype == "bfloat16" else np.dtype(stype.dtype)
      if arr.dtype != want:
        raise CheckpointError(f"{path}: storage {key} is read as {want} and as {arr.dtype}")
      return arr

    try:
      obj = _Unpickler(io.BytesIO(zf.read(root + "data.pkl")), load_storage).load()
    except CheckpointError:
      raise
    except Exception as e:  # a damaged pickle can fail in many ways; say which file
      raise CheckpointError(f"{path}: cannot unpickle {root}data.pkl: {type(e).__name__}: {e}") from None
  if not isinstance(obj, dict):
    raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a state dict")
  bad = [k for k, v in obj.items() if not (isinstance(k, str) and isinstance(v, np.ndarray))]
  if bad:
    raise CheckpointError(f"{path} is not a flat state dict of tensors: entries {[repr(k) for k in bad[:5]]} "
                          f"({len(bad)} of {len(obj)}) are {sorted({type(obj[k]).__name__ for k in bad})}")
  return dict(obj)
