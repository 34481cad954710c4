"""What every checkpoint format here shares: file names, the named error, safetensors reading,
atomic writes (a kill or a full disk never leaves a half-written file under the final name), the
torch <-> ours layout converters and the one engine that walks a format's name table.

A name table is a list of rows `(their tensor name, our param path, (to_ours, to_theirs))`; each
format builds its own from its config and the engine does the rest in both directions.
"""
from __future__ import annotations

import json
import os
import re
from typing import Callable, Sequence

import numpy as np

from autogaze_jax.core.atomic_files import atomic_write

CONFIG_NAME, WEIGHTS_NAME = "config.json", "model.safetensors"
SAFETENSORS_METADATA = {"format": "pt"}  # the only value (besides none) the official loaders accept as-is


class CheckpointError(ValueError):
  """A checkpoint that cannot be read as an AutoGaze checkpoint; the message names the problem."""


# ---------------------------------------------------------------- hub ids
# A hub repo id: "namespace/name" (letters, digits, "-", "_", "."), optionally "@revision" (a branch, tag or
# commit). "@" cannot occur in a repo id, so the split is unambiguous.
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
_TRUE = ("1", "true", "yes", "on")


def split_hub_id(name: str) -> tuple[str, str | None]:
  """'org/name@rev' -> ('org/name', 'rev'); 'org/name' -> ('org/name', None)."""
  repo, sep, rev = name.partition("@")
  return repo, (rev if sep else None)


def looks_like_hub_id(name: str) -> bool:
  """True for 'org/name' or 'org/name@rev' (and not for absolute, ./ or multi-part paths)."""
  return bool(name) and bool(_HUB_ID.match(split_hub_id(name)[0]))


def hub_cache_dir() -> str | None:
  """The hub cache huggingface_hub would use, read from the environment now (HF_HUB_CACHE, else
  HF_HOME/hub; None = the library default): its constants are frozen at import, but a user or a test
  may set these later in the process."""
  if os.environ.get("HF_HUB_CACHE"):
    return os.environ["HF_HUB_CACHE"]
  if os.environ.get("HF_HOME"):
    return os.path.join(os.environ["HF_HOME"], "hub")
  return None


def resolve_checkpoint_dir(name_or_path: str, revision: str | None = None,
                           allow_patterns: Sequence[str] | None = None, what: str = "checkpoint") -> str:
  """A local path, or a hub id ('org/name', 'org/name@revision' or `revision=`) -> a local path.

  An existing local file or directory always wins and is returned as given. Otherwise a hub id is
  fetched with `huggingface_hub.snapshot_download` into its cache (HF_HOME / HF_HUB_CACHE), only the
  files matching `allow_patterns`; with HF_HUB_OFFLINE=1 only the cache is read. Anything else (a
  missing path, an unknown id, an id not cached while offline) is a CheckpointError naming it and
  saying how to get it."""
  name = os.fspath(name_or_path) if name_or_path is not None else ""
  if not name:
    raise CheckpointError(f"{what}: no path or hub id given")
  if os.path.exists(name):
    if revision is not None:
      raise CheckpointError(f"{what} {name!r} is a local path; revision={revision!r} applies only to hub ids")
    return name
  if not looks_like_hub_id(name):
    raise CheckpointError(f"{what} {name!r} does not exist (neither a local path nor a hub id 'org/name[@revision]')")
  repo, rev = split_hub_id(name)
  if rev is not None and revision is not None and rev != revision:
    raise CheckpointError(f"{what} {name!r}: revision given twice ({rev!r} in the id, revision={revision!r})")
  rev = rev or revision
  if rev == "":
    raise CheckpointError(f"{what} {name!r}: empty revision after '@'")
  from huggingface_hub import snapshot_download
  from huggingface_hub.errors import (HFValidationError, HfHubHTTPError, LocalEntryNotFoundError,
                                      RepositoryNotFoundError, RevisionNotFoundError)
  offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE
  cache = hub_cache_dir()
  label = repo + (f"@{rev}" if rev else "")
  try:
    return snapshot_download(repo, revision=rev, cache_dir=cache, local_files_only=offline,
                             allow_patterns=list(allow_patterns) if allow_patterns else None)
  except LocalEntryNotFoundError:
    where = cache or "the default hub cache (~/.cache/huggingface/hub)"
    why = "HF_HUB_OFFLINE is set" if offline else "the hub could not be reached"
    raise CheckpointError(
        f"{what} {label!r} is not a local path and not in the hub cache {where} ({why}). Fix: run once with a "
        f"network and HF_HUB_OFFLINE unset to download it, or `hf download {repo}"
        f"{f' --revision {rev}' if rev else ''} --local-dir DIR` where you have one and pass DIR") from None
  except RevisionNotFoundError:
    raise CheckpointError(f"{what} {label!r}: the hub repo {repo!r} has no revision {rev!r}") from None
  except RepositoryNotFoundError:
    raise CheckpointError(f"{what} {label!r}: no such hub repo (or it is private/gated: log in with `hf auth "
                          "login`), and no local path of that name") from None
  except HFValidationError as e:
    raise CheckpointError(f"{what} {label!r} is not a valid hub id: {e}") from None
  except (HfHubHTTPError, OSError) as e:
    raise CheckpointError(f"{what} {label!r}: download failed ({type(e).__name__}: {e})") from None


def resolve_checkpoint_file(name_or_path: str, filename: str, revision: str | None = None,
                            what: str = "checkpoint file") -> str:
  """A local file, a local dir holding `filename`, or a hub id whose repo holds `filename` -> a local
  file path (only that file is fetched)."""
  path = resolve_checkpoint_dir(name_or_path, revision, allow_patterns=[filename], what=what)
  if os.path.isdir(path):
    path = os.path.join(path, filename)
    if not os.path.isfile(path):
      raise CheckpointError(f"{what} {name_or_path!r} has no {filename}")
  return path


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


def write_safetensors(path: str, tensors: dict[str, np.ndarray]) -> None:
  """Tensors (numpy) to a safetensors file with the official metadata, written atomically."""
  from safetensors.numpy import save_file
  atomic_write(path, lambda tmp: save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, tmp,
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
