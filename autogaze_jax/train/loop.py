"""Algorithm-agnostic training loop: validate -> mesh -> init/restore -> compile -> loop.

One `run(config, workdir, data)` serves every algorithm of `train/registry.py` through the `Algorithm`
protocol (`train/algorithm.py`); the caller builds the input iterator (`launch/train.py`):
  * the whole train state is one pytree (`TrainState`), placed by the regex sharding rules (gaze model
    replicated, VideoMAE FSDP), the batch sharded over the mesh's `data` axis (`core.sharding.shard_batch`);
    frames travel as uint8 and become float task space on the device;
  * the step is AOT-compiled before step 1 (compile time and memory logged), donates the old state,
    and derives its RNG from (seed, step), so a resumed run continues bit for bit;
  * orbax `CheckpointManager`: the state and the grain iterator state are saved every `ckpt_every`
    steps, at the end, and on SIGTERM (preemption); a restart in the same workdir resumes exactly
    (restore targets carry the current mesh's shardings, so another device count works too);
  * metrics to TensorBoard + metrics.jsonl and a console progress line with ETA; NaN/Inf in a loss or
    norm stops the run naming the step and metric (the last good checkpoint stays);
  * a checkpoint that cannot be written (disk full, no permission) stops the run with one
    `CheckpointSaveError` naming the path, the free space and the last complete checkpoint, which a
    rerun resumes from (orbax's own tracebacks of the failure are not logged a second time).
"""
from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import signal
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from autogaze_jax.core import sharding as shd
from autogaze_jax.evaluation.writers import MetricWriter, Progress, check_finite
from autogaze_jax.gaze.preprocess import normalize_on_device
from autogaze_jax.interop.common import CheckpointError
from autogaze_jax.train import registry
from autogaze_jax.train.state import ConfigError, TrainState, validate_optimizer


def validate(config) -> None:
  """Fail before any compile on values that cannot work."""
  if config.algorithm not in registry.ALGORITHMS:
    raise ConfigError(f"config.algorithm = {config.algorithm!r}: choose from {sorted(registry.ALGORITHMS)}")
  n_dev = _devices(config).__len__()
  sizes = [config.mesh.data, config.mesh.fsdp]
  if sizes.count(-1) > 1 or any(s == 0 or s < -1 for s in sizes):
    raise ConfigError(f"config.mesh = data {sizes[0]}, fsdp {sizes[1]}: sizes must be positive or -1 (at most one -1)")
  fixed = int(np.prod([s for s in sizes if s != -1]))
  if n_dev % fixed:
    raise ConfigError(f"config.mesh sizes {sizes} do not divide the {n_dev} devices")
  data = config.mesh.data if config.mesh.data != -1 else n_dev // fixed
  gb = config.data.global_batch_size
  if gb <= 0 or gb % data:  # the batch is split over the data axis (replicated over fsdp)
    raise ConfigError(f"config.data.global_batch_size = {gb} is not divisible by the data axis size {data}")
  if gb % jax.process_count():
    raise ConfigError(f"config.data.global_batch_size = {gb} is not divisible by {jax.process_count()} processes")
  if config.train.num_steps <= 0:
    raise ConfigError(f"config.train.num_steps = {config.train.num_steps} must be positive")
  if config.model.size not in ("default", "tiny"):
    raise ConfigError(f"config.model.size = {config.model.size!r}: choose default or tiny")
  if config.model.dtype not in ("float32", "bfloat16"):
    raise ConfigError(f"config.model.dtype = {config.model.dtype!r}: choose float32 or bfloat16")
  if config.train.picture_every < 0 or not 0 < config.train.picture_ratio <= 1:
    raise ConfigError(f"config.train.picture_every = {config.train.picture_every} must be >= 0 and "
                      f"config.train.picture_ratio = {config.train.picture_ratio} in (0, 1]")
  if config.train.get("val_every", 0) < 0 or config.train.get("val_clips", 1) < 1:
    raise ConfigError(f"config.train.val_every = {config.train.get('val_every')} must be >= 0 (0 = off) and "
                      f"config.train.val_clips = {config.train.get('val_clips')} >= 1")
  if not 0 < config.train.get("val_max_ratio", 1.0) <= 1:
    raise ConfigError(f"config.train.val_max_ratio = {config.train.get('val_max_ratio')} must be in (0, 1]")
  if config.data.source not in ("synthetic", "folder", "arrayrecord"):
    raise ConfigError(f"config.data.source = {config.data.source!r}: choose synthetic, folder or arrayrecord")
  if config.data.source != "synthetic" and not config.data.path:
    raise ConfigError(f"config.data.source = {config.data.source!r} needs config.data.path")
  validate_optimizer(config.optimizer)
  registry.ALGORITHMS[config.algorithm].validate(config)


def _devices(config):
  n = config.mesh.get("num_devices", 0)
  if n and jax.process_count() > 1:
    raise ConfigError("config.mesh.num_devices works only in single-process runs")
  if n < 0 or n > jax.device_count():
    raise ConfigError(f"config.mesh.num_devices = {n}: there are {jax.device_count()} devices")
  return jax.devices()[:n] if n else jax.devices()


def host_local(tree):
  """Global arrays -> numpy on this host: replicated arrays from a local copy, sharded ones gathered
  across processes (needed once arrays span devices of several processes)."""
  from jax.experimental import multihost_utils

  def get(x):
    if not isinstance(x, jax.Array) or x.is_fully_addressable:
      return np.asarray(jax.device_get(x))
    if x.is_fully_replicated:
      return np.asarray(x.addressable_data(0))
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return jax.tree.map(get, tree)


def _match_param_shardings(opt_state, default, params, p_shard):
  """Give every optimizer leaf that mirrors a param (Adam moments, ...) that param's sharding.

  optax states hold copies of the param tree, so a moment's tree path ends with its param's path
  (e.g. ".../0/mu/vit/layer/3/query/kernel/value"); the longest param path that is such a suffix wins.
  Leaves mirroring no param (counters, schedules) keep `default`.
  """
  by_path = {}
  jax.tree_util.tree_map_with_path(lambda pth, x, sh: by_path.setdefault(shd.path_str(pth), (x.shape, sh)),
                                   params, p_shard)

  def pick(pth, x, d):
    path = shd.path_str(pth)
    for cut in range(len(path)):          # shortest prefix cut first = longest matching suffix
      if cut == 0 or path[cut - 1] == "/":
        hit = by_path.get(path[cut:])
        if hit is not None and hit[0] == x.shape:
          return hit[1]
    return d
  return jax.tree_util.tree_map_with_path(pick, opt_state, default)


# Keys a resumed run may change: the horizon (the schedule follows num_steps), logging, checkpoint
# and picture intervals, worker count, and the mesh (the restore reshards onto the new one).
SAFE_ON_RESUME = ("train.num_steps", "train.log_every", "train.ckpt_every", "train.keep_checkpoints",
                  "train.picture_every", "train.picture_ratio", "data.num_workers", "mesh.",
                  "train.val_every", "train.val_clips", "train.val_threshold", "train.val_max_ratio")


class WorkdirInUse(ConfigError):
  """Another training run holds this workdir."""


def _lock_workdir(workdir: str):
  import fcntl
  f = open(os.path.join(workdir, ".train.lock"), "a+")
  try:
    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except OSError:
    f.seek(0)
    holder = f.read().strip() or "another process"
    f.close()
    raise WorkdirInUse(f"{workdir} is in use by a running training ({holder}); wait for it or choose another "
                       "--workdir") from None
  f.seek(0)
  f.truncate()
  f.write(f"pid {os.getpid()}")
  f.flush()
  return f


def _flat(d, prefix=""):
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flat(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


def resume_config_changes(workdir: str, config, allow: bool) -> dict:
  """{key: [old, new]} of the keys outside SAFE_ON_RESUME that differ from the checkpointed run's
  config.json (empty for a fresh workdir); raises ConfigError on any unless `allow`."""
  path, ckpts = os.path.join(workdir, "config.json"), os.path.join(workdir, "checkpoints")
  if not (os.path.exists(path) and os.path.isdir(ckpts) and any(n.isdigit() for n in os.listdir(ckpts))):
    return {}
  with open(path) as f:
    old = _flat(json.load(f))
  new = _flat(json.loads(config.to_json_best_effort()))
  changed = {k: [old.get(k), new.get(k)] for k in sorted(old.keys() | new.keys())
             if old.get(k) != new.get(k) and not any(k == s or (s.endswith(".") and k.startswith(s))
                                                     for s in SAFE_ON_RESUME)}
  if changed and not allow:
    listed = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changed.items())
    raise ConfigError(f"{workdir} holds checkpoints of a run with another config ({listed}); resume with the same "
                      f"config (only {', '.join(SAFE_ON_RESUME)} may change), use a new --workdir, or pass "
                      "--allow_config_change to resume anyway (recorded in config_changes.jsonl)")
  return changed


def _install_sigterm():
  flag = {"stop": False, "signal": False}

  def handler(signum, frame):
    logging.warning("received signal %d: saving a checkpoint and stopping after this step", signum)
    flag["stop"] = flag["signal"] = True
  try:
    signal.signal(signal.SIGTERM, handler)
  except ValueError:  # not the main thread (e.g. inside some test runners)
    pass
  return flag


def _manager(workdir: str, config):
  import orbax.checkpoint as ocp
  opts = ocp.CheckpointManagerOptions(max_to_keep=config.train.keep_checkpoints, create=True,
                                      enable_async_checkpointing=True)
  return ocp.CheckpointManager(os.path.abspath(os.path.join(workdir, "checkpoints")), options=opts,
                               item_names=("state", "data"))


class WorkdirWriteError(CheckpointError):
  """The run could not write into its workdir (disk full, quota, permissions); the message names
  the path, the free space left there and the last complete checkpoint (the one a rerun resumes from)."""


class CheckpointSaveError(WorkdirWriteError):
  """A checkpoint could not be written (see WorkdirWriteError)."""


def _complete_steps(ckpt_dir: str) -> list[int]:
  # orbax writes into "<step>.orbax-checkpoint-tmp*" and renames to "<step>" once every item is committed
  try:
    return sorted(int(n) for n in os.listdir(ckpt_dir) if n.isdigit())
  except OSError:
    return []


def _chain(e: BaseException):
  seen = []
  while e is not None and e not in seen:
    seen.append(e)
    e = e.__cause__ or e.__context__
  return seen


def _disk_full(e: BaseException) -> str | None:
  """"no space left on device" / "disk quota exceeded" when `e` or its cause is that, else None."""
  for x in _chain(e):
    if isinstance(x, OSError) and x.errno in (errno.ENOSPC, errno.EDQUOT):
      return os.strerror(x.errno).lower()
    # tensorstore (orbax's array writer) reports ENOSPC as a ValueError "... [os_error_code='28']"
    if "No space left on device" in str(x) or f"os_error_code='{errno.ENOSPC}'" in str(x):
      return "no space left on device"
  return None


def _write_error(e: BaseException, ckpt_dir: str, *, step: int | None = None,
                 path: str | None = None) -> WorkdirWriteError:
  """The named error of a failed write: a checkpoint `step`, or another file `path` of the run."""
  where = path or os.path.join(ckpt_dir, str(step))
  probe = where
  while probe and not os.path.exists(probe):
    probe = os.path.dirname(probe)
  try:
    free = f"{shutil.disk_usage(probe).free / 2**20:.1f} MiB free there"
  except OSError:
    free = "free space unknown"
  why = _disk_full(e)
  if why is None:
    cause = _chain(e)[-1]
    why = f"{type(cause).__name__}: {(str(cause).splitlines() or [''])[0][:300]}"
  good = [s for s in _complete_steps(ckpt_dir) if s != step]
  last = (f"the last complete checkpoint is step {good[-1]} ({os.path.join(ckpt_dir, str(good[-1]))}): free space "
          "and rerun the same command to resume from it") if good else "no complete checkpoint was written"
  if path is None:
    return CheckpointSaveError(f"saving checkpoint step {step} to {where} failed: {why} ({free}); {last}")
  return WorkdirWriteError(f"writing {where} failed: {why} ({free}); {last}")


class _Checkpoints:
  """The loop's orbax manager with save failures turned into `CheckpointSaveError`.

  Saves are asynchronous: a failure of step N's write surfaces at the next save or wait, so the
  step in flight is remembered to name it."""

  def __init__(self, mngr):
    self.mngr, self.dir, self.pending = mngr, str(mngr.directory), None

  def wait(self):
    try:
      self.mngr.wait_until_finished()
    except Exception as e:  # noqa: BLE001  whatever failed in the background write of `pending`
      raise _write_error(e, self.dir, step=self.pending) from e
    self.pending = None

  def save(self, step: int, state, it):
    import grain
    import orbax.checkpoint as ocp
    jax.block_until_ready(state)
    self.wait()   # the previous write's failure belongs to its own step
    try:
      self.mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                   data=grain.checkpoint.CheckpointSave(it)), force=True)
    except Exception as e:  # noqa: BLE001
      raise _write_error(e, self.dir, step=step) from e
    self.pending = step


class _OrbaxTracebacks(logging.Filter):
  def filter(self, record):
    return not (record.exc_info and record.levelno >= logging.ERROR and
                f"{os.sep}orbax{os.sep}" in (record.pathname or ""))


def _quiet_orbax_failures():
  """Until the returned undo is called, a failed background write is reported once, as the
  CheckpointSaveError it becomes: orbax logs the same traceback 4-5 times (~100 lines each, through
  absl), and tensorstore writes still in flight print "Event loop is closed" when orbax drops its
  event loop."""
  absl_logger, tracebacks, previous = logging.getLogger("absl"), _OrbaxTracebacks(), sys.unraisablehook

  def hook(unraisable):
    if not (isinstance(unraisable.exc_value, RuntimeError) and str(unraisable.exc_value) == "Event loop is closed"):
      previous(unraisable)
  absl_logger.addFilter(tracebacks)
  sys.unraisablehook = hook

  def undo():
    absl_logger.removeFilter(tracebacks)
    sys.unraisablehook = previous
  return undo


def _restore(mngr, step: int, abstract_state, it):
  import grain
  import orbax.checkpoint as ocp
  out = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state),
                                                   data=grain.checkpoint.CheckpointRestore(it)))
  return out["state"]


def run(config, workdir: str, data, *, picture_frames: np.ndarray | None = None,
        stop_after: int | None = None, allow_config_change: bool = False, val_batches=None) -> dict:
  """Train `config.algorithm` in `workdir` (resuming if it holds a checkpoint). Returns final metrics.

  data: iterator of this host's batches (numpy dicts holding the algorithm's `batch_keys`) that
  checkpoints through grain's orbax handler (`get_state`/`set_state`, e.g. `data_pipelines.pipeline.
  DataIterator`); it is saved and restored with the train state.
  picture_frames: (T, H, W, 3) uint8 validation clip for the periodic pictures (None: no pictures).
  val_batches: host batches of the fixed held-out set (the algorithm's `batch_keys`), validated every
  `config.train.val_every` steps (see `_validation`); None or val_every 0: no validation.
  stop_after: leave after this many steps of *this* process (with a checkpoint), as a preemption would;
  the schedule still follows config.train.num_steps, so a later run continues exactly.
  The result's "preempted" is True when SIGTERM stopped the run (the entry point then exits 143).
  One run per workdir at a time (a lock file; a second run gets `WorkdirInUse`). Resuming with a config
  that differs from the workdir's config.json outside `SAFE_ON_RESUME` is a ConfigError listing the
  keys, unless `allow_config_change` (the change is then appended to WORKDIR/config_changes.jsonl).
  """
  validate(config)
  os.makedirs(workdir, exist_ok=True)
  is_main = jax.process_index() == 0
  lock = _lock_workdir(workdir) if is_main else None
  try:
    changes = resume_config_changes(workdir, config, allow_config_change)
    if jax.process_count() > 1:   # every process has read the old config.json before process 0 rewrites it
      from jax.experimental import multihost_utils
      multihost_utils.sync_global_devices("config_check")
    if is_main:
      if changes:
        with open(os.path.join(workdir, "config_changes.jsonl"), "a") as f:
          f.write(json.dumps({"time": time.time(), "changed": changes}) + "\n")
      with open(os.path.join(workdir, "config.json"), "w") as f:
        f.write(config.to_json_best_effort(indent=2, sort_keys=True))
    return _train(config, workdir, data, picture_frames, stop_after, val_batches)
  finally:
    if lock is not None:
      lock.close()       # closing the file releases the flock


def _best_logged(path: str, key: str, mode: str):
  """(step, value) of the best `key` in a metrics.jsonl (a resumed run continues its best), or None."""
  best = None
  if not os.path.exists(path):
    return None
  with open(path) as f:
    for line in f:
      try:
        v = json.loads(line).get(key)
        step = json.loads(line)["step"]
      except (ValueError, KeyError, AttributeError):
        continue
      if isinstance(v, (int, float)) and (best is None or (v < best[1] if mode == "min" else v > best[1])):
        best = (step, float(v))
  return best


def _validation(config, algo, models, val_batches, frozen, mesh, workdir: str, is_main: bool):
  """`validate(params, step) -> {val_<metric>: float, val_best_step}` over the fixed held-out batches, or
  None when off. The algorithm's `make_eval` step runs jitted per batch (its rng fixed per batch, so every
  validation sees the same draws); `val_metrics` turns the batch sums into metrics; the best step of
  `algo.val_best` (read back from metrics.jsonl on resume) is kept in WORKDIR/val_best.json."""
  every = config.train.get("val_every", 0)
  if not every or not val_batches:
    return None
  eval_step = algo.make_eval(config, models)
  if eval_step is None:
    return None
  key, mode = algo.val_best
  seed = config.train.seed

  def evaluate(params, batch, rng, frozen):
    batch = dict(batch)
    batch["video"] = normalize_on_device(batch.pop("frames"))
    return eval_step(params, batch, rng, frozen)
  jitted = jax.jit(evaluate)
  placed = [shd.shard_batch({k: b[k] for k in algo.batch_keys}, mesh) for b in val_batches]
  best = _best_logged(os.path.join(workdir, "tb", "metrics.jsonl"), key, mode)

  def validate(params, step: int) -> dict:
    nonlocal best
    t0 = time.perf_counter()
    sums = None
    for i, b in enumerate(placed):
      out = host_local(jitted(params, b, jax.random.fold_in(jax.random.key(seed + 1), i), frozen))
      sums = out if sums is None else jax.tree.map(np.add, sums, out)
    val = {f"val_{k}": float(v) for k, v in algo.val_metrics(sums, len(placed)).items()}
    v = val.get(key)
    if v is not None and np.isfinite(v) and (best is None or (v < best[1] if mode == "min" else v > best[1])):
      best = (step, v)
      if is_main:
        with open(os.path.join(workdir, "val_best.json"), "w") as f:
          json.dump({"step": step, "metric": key, "mode": mode, "value": v}, f)
    if best is not None:
      val["val_best_step"] = float(best[0])
    logging.info("[validation] step %d on %d batches (%.1fs): %s", step, len(placed), time.perf_counter() - t0,
                 " | ".join(f"{k}={x:.4g}" for k, x in val.items()))
    return val
  return validate


def _train(config, workdir, data, picture_frames, stop_after, val_batches=None) -> dict:
  algo = registry.ALGORITHMS[config.algorithm]
  is_main = jax.process_index() == 0

  # ---- mesh ----
  mesh = shd.make_mesh(config.mesh.data, config.mesh.fsdp, _devices(config))
  logging.info("mesh %s over %d devices (%d processes)", dict(mesh.shape), mesh.size, jax.process_count())

  # ---- models + optimizer ----
  models = algo.init(config)
  graphdef = models.graphdef
  tx, schedule = algo.optimizer(config)

  # ---- shard: params by rules (born sharded through a jitted init of the optimizer state) ----
  p_shard = shd.param_shardings(models.params, mesh)
  params = jax.device_put(models.params, p_shard)
  opt_state = jax.jit(tx.init)(params)
  state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=opt_state)
  # optimizer moments follow their param's sharding (same tree paths); counters are replicated
  rep = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  opt_shard = jax.tree.map(lambda x: rep, opt_state)
  opt_shard = _match_param_shardings(opt_state, opt_shard, params, p_shard)
  state_shard = TrainState(step=rep, params=p_shard, opt_state=opt_shard)
  state = jax.device_put(state, state_shard)
  frozen = None if models.frozen is None else jax.device_put(models.frozen, shd.param_shardings(models.frozen, mesh))

  # ---- checkpoint: resume precedence = checkpoint in workdir > init ----
  mngr = _manager(workdir, config)
  ckpt = _Checkpoints(mngr)
  start = 0
  if mngr.latest_step() is not None:
    start = int(mngr.latest_step())
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
    state = _restore(mngr, start, abstract, data)
    logging.info("resumed from %s at step %d", mngr.directory, start)

  # ---- update step ----
  step_fn = algo.make_step(config, models, tx, schedule)
  seed = config.train.seed

  def update(state, batch, frozen):
    rng = jax.random.fold_in(jax.random.key(seed), state.step)
    batch = dict(batch)
    batch["video"] = normalize_on_device(batch.pop("frames"))
    return step_fn(state, batch, rng, frozen)

  def device_batch():
    host = next(data)
    return shd.shard_batch({k: host[k] for k in algo.batch_keys}, mesh)

  first = device_batch()
  jitted = jax.jit(update, donate_argnums=(0,), out_shardings=(state_shard, None))
  t0 = time.perf_counter()
  compiled = jitted.lower(state, first, frozen).compile()
  logging.info("compiled the %s step in %.1fs", config.algorithm, time.perf_counter() - t0)
  try:
    mem = compiled.memory_analysis()
    if mem is not None:
      logging.info("step memory: temp %.1f MB, arguments %.1f MB", mem.temp_size_in_bytes / 2**20,
                   mem.argument_size_in_bytes / 2**20)
  except Exception:  # memory_analysis is best-effort on some backends
    pass

  writer = MetricWriter(os.path.join(workdir, "tb"), enabled=is_main, resume_step=start)
  progress = Progress(config.train.num_steps, config.train.log_every, config.data.global_batch_size,
                      config.algorithm, start)
  validation = _validation(config, algo, models, val_batches, frozen, mesh, workdir, is_main)
  stop = _install_sigterm()
  metrics, batch = {}, first
  step = start
  draw = picture_frames is not None and config.train.picture_every > 0
  picture_judge = algo.picture_judge(models) if draw else None
  failed = True
  loud_again = _quiet_orbax_failures()
  try:
    while step < config.train.num_steps:
      t_step = time.perf_counter()
      state, m = compiled(state, batch, frozen)
      m = host_local(jax.block_until_ready(m))
      step += 1
      check_finite(step, m, algo.finite_keys)
      m["step_time_s"] = time.perf_counter() - t_step
      metrics = m
      val_now = validation is not None and step % config.train.val_every == 0
      if val_now:   # held-out metrics share the step's row (metrics.jsonl, TensorBoard)
        m = {**m, **validation(state.params, step)}
      if val_now or step % config.train.log_every == 0 or step == config.train.num_steps:
        writer.write_scalars(step, m)
        progress(step, {k: m[k] for k in algo.progress_keys if k in m}, force=True)
      if stop_after is not None and step - start >= stop_after:
        stop["stop"] = True
      if step % config.train.ckpt_every == 0 or stop["stop"] or step == config.train.num_steps:
        ckpt.save(step, state, data)
      if draw and step % config.train.picture_every == 0:
        local = host_local(state.params)   # every process takes part; only process 0 draws
        images = (algo.picture(config, graphdef, local, picture_frames, workdir, step, judge=picture_judge)
                  if is_main else {})
        if images:
          writer.write_images(step, images)
      if stop["stop"]:
        logging.warning("preempted at step %d (checkpoint saved)" if stop["signal"] else
                        "stopped at step %d as asked (checkpoint saved)", step)
        break
      if step < config.train.num_steps:
        batch = device_batch()
    failed = False
  except OSError as e:   # metrics, pictures: on a full disk, the same one named error as a checkpoint
    if not _disk_full(e):
      raise
    raise _write_error(e, ckpt.dir, path=e.filename or workdir) from e
  finally:
    errors = []
    for close, path in ((ckpt.wait, None), (writer.close, os.path.join(workdir, "tb"))):
      try:
        close()
      except (WorkdirWriteError, OSError) as e:
        if isinstance(e, OSError) and _disk_full(e):
          named = _write_error(e, ckpt.dir, path=path)
          named.__cause__ = e
          e = named
        errors.append(e)
    loud_again()
    if errors and not failed:
      raise errors[0]
    # else the error already on its way out wins; a close that failed of the same full disk adds nothing
    for e in errors:
      if not _disk_full(e):
        logging.warning("after that failure, closing failed too: %s", (str(e).splitlines() or [""])[0])
  params = host_local(state.params)  # every process takes part in gathering sharded params
  if is_main and step >= config.train.num_steps:
    algo.export(config, graphdef, params, workdir)
  mngr.close()
  return {"step": step, "preempted": bool(stop["signal"]), **{k: float(v) for k, v in metrics.items()}}
