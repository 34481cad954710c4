"""Build, load and call the fused CPU kernels through XLA FFI: the rollout's cached attention
(cached_attention.cc), the vision encoder's stem and causal trunk conv (vision.cc) and the
training-length masked attention, forward and backward (flash_attention.cc).

The shared library is compiled once per (source, compiler flags, jaxlib headers, host CPU) with the
system C++ compiler (`$CXX`, else g++/c++) into `$AUTOGAZE_KERNEL_CACHE` (default
~/.cache/autogaze_jax/kernels), written to a temporary name and renamed, so processes that start
together never load a half-written file. Where no compiler works, the JAX implementation is used
and one warning says why; `AUTOGAZE_CPU_KERNELS=0` turns the kernel off (e.g. to compare numbers).
`AUTOGAZE_CPU_THREADS` caps the kernel's threads (default: the CPUs this process may use).
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import pathlib
import shutil
import subprocess
import tempfile

import jax
import jax.experimental.custom_partitioning
import jax.numpy as jnp
import numpy as np

HERE = pathlib.Path(__file__).parent
SOURCES = (HERE / "cached_attention.cc", HERE / "vision.cc", HERE / "flash_attention.cc")
HEADERS = (HERE / "simd.h",)
TARGET = "autogaze_cached_attention"
STEM_TARGET, CONV_TARGET = "autogaze_stem", "autogaze_causal_conv"
FLASH_FWD_TARGET, FLASH_BWD_TARGET = "autogaze_flash_forward", "autogaze_flash_backward"
FLAGS = ("-O3", "-march=native", "-std=c++17", "-shared", "-fPIC", "-pthread", "-w")
HEAD_DIMS = (16, 32, 64, 128)


def enabled() -> bool:
  return os.environ.get("AUTOGAZE_CPU_KERNELS", "1") not in ("0", "false", "False", "")


def _cpu_signature() -> str:
  """The host CPU's model + feature flags: a -march=native build must not move to another CPU."""
  try:
    lines = pathlib.Path("/proc/cpuinfo").read_text().splitlines()
    return "\n".join(sorted({l for l in lines if l.startswith(("flags", "model name", "Features", "CPU part"))}))
  except OSError:
    import platform
    return platform.machine() + platform.processor()


def _compiler() -> str | None:
  found = (shutil.which(name) for name in (os.environ.get("CXX"), "g++", "c++", "clang++") if name)
  return next((path for path in found if path), None)


def build(cache_dir: str | os.PathLike | None = None) -> pathlib.Path:
  """Compile the kernel if no matching build is cached; returns the .so path (raises on failure)."""
  cxx = _compiler()
  if cxx is None:
    raise RuntimeError("no C++ compiler found (set CXX)")
  include = jax.ffi.include_dir()
  key = hashlib.sha256()
  for part in (*(f.read_bytes() for f in (*SOURCES, *HEADERS)), " ".join(FLAGS).encode(), cxx.encode(),
               include.encode(), jax.__version__.encode(), _cpu_signature().encode()):
    key.update(part)
  cache = pathlib.Path(cache_dir or os.environ.get("AUTOGAZE_KERNEL_CACHE")
                       or pathlib.Path.home() / ".cache" / "autogaze_jax" / "kernels")
  cache.mkdir(parents=True, exist_ok=True)
  out = cache / f"autogaze_kernels-{key.hexdigest()[:16]}.so"
  if out.exists():
    return out
  fd, tmp = tempfile.mkstemp(suffix=".so", dir=cache)
  os.close(fd)
  try:
    proc = subprocess.run([cxx, *FLAGS, f"-I{include}", *map(str, SOURCES), "-o", tmp], capture_output=True,
                          text=True)
    if proc.returncode:
      raise RuntimeError(f"{cxx} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    os.replace(tmp, out)
  finally:
    if os.path.exists(tmp):
      os.unlink(tmp)
  return out


@functools.cache
def _registered() -> bool:
  """Build + register once per process; False (with one warning) when the kernels cannot be built."""
  try:
    lib = ctypes.cdll.LoadLibrary(str(build()))
    for name, fn in ((TARGET, lib.AutogazeCachedAttention), (STEM_TARGET, lib.AutogazeStem),
                     (CONV_TARGET, lib.AutogazeCausalConv), (FLASH_FWD_TARGET, lib.AutogazeFlashForward),
                     (FLASH_BWD_TARGET, lib.AutogazeFlashBackward)):
      jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(fn), platform="cpu")
    return True
  except Exception as e:  # no compiler, no headers, unsupported host: the JAX path still works
    logging.warning("fused CPU kernels unavailable, using the JAX implementation: %s", e)
    return False


def supports(q: jax.Array, ck: jax.Array) -> bool:
  """Whether `cached_attention` can run these arrays (float32, a supported head dim) here."""
  return (enabled() and q.dtype == jnp.float32 and ck.dtype == jnp.float32 and q.shape[-1] in HEAD_DIMS
          and ck.shape[-1] % 32 == 0 and _registered())


def supports_vision(x: jax.Array, width: int) -> bool:
  """Whether the vision kernels can run here: float32 features `width` wide, a multiple of 32."""
  return enabled() and x.dtype == jnp.float32 and width % 32 == 0 and _registered()


def supports_flash(q: jax.Array) -> bool:
  """Whether `flash_forward` / `flash_backward` can run q (float32, a supported head dim) here."""
  return enabled() and q.dtype == jnp.float32 and q.shape[-1] in HEAD_DIMS and _registered()


def _batch_tiled(ref, ref_ndim: int, ndim: int, axis: int | None):
  """A sharding of an ndim array split on `axis` the way `ref` (the first operand's sharding) splits its
  axis 0 (same device groups), replicated on every other axis; replicated when axis is None.

  Built on the HLO sharding, not on mesh axes: under a multi-axis mesh the partitioner may hand the
  call operands tiled in ways no PartitionSpec of that mesh names (e.g. heads split in 2 over a 4-way
  fsdp axis), which it could not even decode for us."""
  from jax._src import sharding_impls
  from jax._src.lib import xla_client as xc
  hs = ref._to_xla_hlo_sharding(ref_ndim)
  devices = ref._device_assignment
  if axis is None or not hs.is_tiled() or hs.tile_assignment_dimensions()[0] == 1:
    return sharding_impls.GSPMDSharding(devices, xc.HloSharding.replicate())
  dims = list(hs.tile_assignment_dimensions())
  groups = np.asarray(hs.tile_assignment_devices()).reshape(dims).reshape(dims[0], -1)
  replicas = groups.shape[1]   # devices holding each batch tile (a trailing replicated tile dim if > 1)
  op = xc.OpSharding()
  op.type = xc.OpSharding.Type.OTHER
  op.tile_assignment_dimensions = [1] * axis + [dims[0]] + [1] * (ndim - axis - 1) + [replicas] * (replicas > 1)
  op.tile_assignment_devices = groups.reshape(-1).tolist()
  op.replicate_on_last_tile_dim = replicas > 1
  return sharding_impls.GSPMDSharding(devices, xc.HloSharding.from_proto(op))


def _batch_partitioned(fn, in_axes, out_axes, rule):
  """custom_partitioning of fn over independent samples: arg i split on its axis in_axes[i] (None:
  replicated: weights, the start slot) the way the first arg's axis 0 is split, outputs on out_axes.
  Under a mesh XLA would otherwise gather whole inputs (e.g. the KV cache) onto every device before a
  custom call; this tells the partitioner each device can run its own samples."""

  def shardings(mesh, arg_shapes, result_shapes):
    ref, ref_ndim = arg_shapes[0].sharding, len(arg_shapes[0].shape)
    results = result_shapes if isinstance(result_shapes, (tuple, list)) else (result_shapes,)
    outs = tuple(_batch_tiled(ref, ref_ndim, len(r.shape), a) for r, a in zip(results, out_axes))
    ins = tuple(_batch_tiled(ref, ref_ndim, len(x.shape), a) for x, a in zip(arg_shapes, in_axes))
    return outs if len(outs) > 1 else outs[0], ins

  part = jax.experimental.custom_partitioning.custom_partitioning(fn)
  # every factor but the batch must be replicated: otherwise the propagation may split e.g. the heads
  # the way FSDP-sharded weights are split (in order of first appearance: Shardy numbers the factors
  # that way and wants them sorted)
  others = tuple(f for f in dict.fromkeys(rule.replace("->", " ").replace(",", " ").split()) if f != "b")
  part.def_partition(partition=lambda mesh, args, result: (mesh, fn, *shardings(mesh, args, result)),
                     infer_sharding_from_operands=lambda mesh, args, result: shardings(mesh, args, result)[0],
                     sharding_rule=rule, need_replication_factors=others, decode_shardings=False)
  return part


# ---- the rollout's cached attention (cached_attention.cc) ----

@functools.cache
def _attention(layer: int):
  def call(q, k, v, ck, cv, start, kv_valid):
    shapes = (jax.ShapeDtypeStruct(q.shape, q.dtype), jax.ShapeDtypeStruct(ck.shape, ck.dtype),
              jax.ShapeDtypeStruct(cv.shape, cv.dtype))
    ffi = jax.ffi.ffi_call(TARGET, shapes, vmap_method="sequential", input_output_aliases={3: 1, 4: 2})
    return ffi(q, k, v, ck, cv, kv_valid.astype(jnp.bool_), start, layer=np.int64(layer))
  return _batch_partitioned(
      call, (0, 0, 0, 1, 1, None, 0), (0, 1, 1),
      "b n h d, b m h d, b m h d, l b h d s, l b h s d, , b s -> b n h d, l b h d s, l b h s d")


def cached_attention(q, k, v, ck, cv, layer: int, start, kv_valid):
  """The kernel's `layers.cached_attention`: same arguments and results (CPU only; the caches are
  updated in place; a query row that sees no key returns zeros). Batch-sharded inputs stay sharded."""
  return _attention(layer)(q, k, v, ck, cv, jnp.asarray(start, jnp.int32), kv_valid)


# ---- the vision encoder (vision.cc) ----

def with_xla_grad(kernel, xla):
  """kernel(*args) on CPU, xla(*args) on other platforms; under differentiation xla's ops run, forward
  and backward (the kernels have no VJP), so training code may call kernel-backed functions and keeps
  XLA's numbers and cost."""
  @jax.custom_vjp
  def f(*args):
    return jax.lax.platform_dependent(*args, cpu=kernel, default=xla)

  f.defvjp(lambda *args: jax.vjp(xla, *args), lambda vjp, g: vjp(g))
  return f


@functools.cache
def _stem(eps: float):
  def call(pixels, w, bias, scale, shift):
    b, t, _, size, _ = pixels.shape
    g = size // round((w.shape[0] // 3) ** 0.5)
    out = jax.ShapeDtypeStruct((b, t, g, g, w.shape[1]), jnp.float32)
    return jax.ffi.ffi_call(STEM_TARGET, out, vmap_method="sequential")(pixels, w, bias, scale, shift,
                                                                         eps=np.float32(eps))
  return _batch_partitioned(call, (0, None, None, None, None), (0,), "b t c h w, k d, d, d, d -> b t y x d")


def stem(pixels, w, bias, scale, shift, eps: float):
  """The vision stem: (B, T, 3, S, S) float32 pixels -> LayerNorm(patches @ w + bias) (B, T, g, g, D), w
  (3 k k, D) with rows in (channel, ky, kx) order (CPU only)."""
  return _stem(float(eps))(pixels, w, bias, scale, shift)


def _conv_call(x, w, bias):
  b, tp, g, _, _ = x.shape
  out = jax.ShapeDtypeStruct((b, tp - w.shape[0] + 1, g, g, w.shape[-1]), jnp.float32)
  return jax.ffi.ffi_call(CONV_TARGET, out, vmap_method="sequential")(x, w, bias)


_conv = _batch_partitioned(_conv_call, (0, None, None), (0,), "b s y x c, a e f c o, o -> b t y x o")


def causal_conv(x, w, bias):
  """relu(conv(x, w) + bias) over time-padded features x (B, T + kt - 1, g, g, C) with w (kt, ks, ks, C, O),
  spatial zero padding (ks - 1) / 2, no temporal padding -> (B, T, g, g, O) (CPU only)."""
  return _conv(x, w, bias)


# ---- training-length masked attention (flash_attention.cc) ----

def _merge_vmap(fn, n_shared: tuple[int, ...]):
  """fn (a custom-partitioned kernel call: no batching rule of its own) made vmappable: a vmapped axis
  is folded into the batch axis 0 of every per-sample operand (broadcast where unbatched) and split
  off the outputs again; when an operand the whole batch shares (the ids, positions n_shared) is
  vmapped too, the mapped calls run one after another (lax.map)."""
  wrapped = jax.custom_batching.custom_vmap(fn)

  @wrapped.def_vmap
  def rule(axis_size, in_batched, *args):
    if any(in_batched[i] for i in n_shared):
      outs = jax.lax.map(lambda a: wrapped(*a), tuple(
          x if b else jnp.broadcast_to(x, (axis_size, *x.shape)) for x, b in zip(args, in_batched)))
    else:
      full = [x if b or i in n_shared else jnp.broadcast_to(x, (axis_size, *x.shape))
              for i, (x, b) in enumerate(zip(args, in_batched))]
      flat = [x if i in n_shared else x.reshape(-1, *x.shape[2:]) for i, x in enumerate(full)]
      outs = wrapped(*flat)
      outs = jax.tree.map(lambda y: y.reshape(axis_size, -1, *y.shape[1:]), outs)
    return outs, jax.tree.map(lambda _: True, outs)

  return wrapped


def _flash_forward_call(q, k, v, q_id, k_id, valid, edge):
  b, length, h, _ = q.shape
  shapes = (jax.ShapeDtypeStruct(q.shape, jnp.float32), jax.ShapeDtypeStruct((b, h, length), jnp.float32))
  return jax.ffi.ffi_call(FLASH_FWD_TARGET, shapes, vmap_method="sequential")(q, k, v, q_id, k_id, valid, edge)


def _flash_backward_call(q, k, v, q_id, k_id, valid, edge, out, lse, dout):
  shapes = (jax.ShapeDtypeStruct(q.shape, jnp.float32),) * 3
  return jax.ffi.ffi_call(FLASH_BWD_TARGET, shapes, vmap_method="sequential")(q, k, v, q_id, k_id, valid, edge,
                                                                              out, lse, dout)


_FLASH_IN = "b l h d, b l h d, b l h d, l, l, b l, b l"
_SHARED_IDS = (3, 4)   # q_id, k_id: one per call, shared by the batch
_flash_fwd = _merge_vmap(_batch_partitioned(_flash_forward_call, (0, 0, 0, None, None, 0, 0), (0, 0),
                                            f"{_FLASH_IN} -> b l h d, b h l"), _SHARED_IDS)
_flash_bwd = _merge_vmap(_batch_partitioned(_flash_backward_call, (0, 0, 0, None, None, 0, 0, 0, 0, 0), (0, 0, 0),
                                            f"{_FLASH_IN}, b l h d, b h l, b l h d -> b l h d, b l h d, b l h d"),
                         _SHARED_IDS)


def flash_forward(q, k, v, q_id, k_id, valid, edge):
  """Masked attention of q, k, v (B, L, H, D) float32 (unscaled): query i sees key j iff
  k_id[j] <= q_id[i] and valid[b, j], or edge[b, i] and i == j (ids (L,) int32, masks (B, L) bool).
  Returns (out (B, L, H, D), lse (B, H, L) of the scaled scores; -inf and zeros for a row that sees
  no key) (CPU only). Batch-sharded inputs stay sharded."""
  return _flash_fwd(q, k, v, q_id.astype(jnp.int32), k_id.astype(jnp.int32), valid.astype(jnp.bool_),
                    edge.astype(jnp.bool_))


def flash_backward(q, k, v, q_id, k_id, valid, edge, out, lse, dout):
  """(dq, dk, dv) of `flash_forward` for the output cotangent dout, from its out and lse (CPU only)."""
  return _flash_bwd(q, k, v, q_id.astype(jnp.int32), k_id.astype(jnp.int32), valid.astype(jnp.bool_),
                    edge.astype(jnp.bool_), out, lse, dout)
