"""Pieces every algorithm shares: the train state, the optimizer from config, norm metrics.

The whole train state is one pytree: `TrainState(step, params, opt_state)`; the graphdef of
the single `nnx.split` is static and lives outside it. Learning-rate schedules follow the official
trainer: `linear` (lr0 -> min_lr over S steps, no warmup), `linear_w_warmup`
(W = S // 10 steps of warmup from 0, then linear to 0: lr(0) = 0), `constant`, plus `cosine`.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from flax import struct

OPTIMIZERS = ("adam", "sgd", "adamw")
SCHEDULES = ("linear", "linear_w_warmup", "constant", "cosine")


class ConfigError(ValueError):
  """A config value that cannot work; the message names the key and the value."""


@struct.dataclass
class TrainState:
  step: jax.Array
  params: object
  opt_state: object


def validate_optimizer(opt_cfg) -> None:
  """Raise ConfigError naming the key unless every optimizer/schedule value means what it says (a
  negative lr would train uphill, b1 >= 1 never forgets, eps <= 0 divides by zero...)."""
  o = opt_cfg

  def need(ok: bool, key: str, want: str):
    if not ok:
      raise ConfigError(f"config.optimizer.{key} = {o.get(key)!r}: expected {want}")
  need(o.name in OPTIMIZERS, "name", f"one of {OPTIMIZERS}")
  need(o.schedule in SCHEDULES, "schedule", f"one of {SCHEDULES}")
  finite = lambda x: isinstance(x, (int, float)) and x == x and abs(x) != float("inf")  # noqa: E731
  need(finite(o.lr) and o.lr > 0, "lr", "a finite number > 0")
  need(finite(o.get("min_lr", 0.0)) and 0 <= o.get("min_lr", 0.0) <= o.lr, "min_lr", f"in [0, lr={o.lr}]")
  need(finite(o.get("warmup_frac", 0.1)) and 0 <= o.get("warmup_frac", 0.1) < 1, "warmup_frac", "in [0, 1)")
  for key in ("b1", "b2"):
    if key in o:
      need(finite(o[key]) and 0 <= o[key] < 1, key, "in [0, 1)")
  if "eps" in o:
    need(finite(o.eps) and o.eps > 0, "eps", "a finite number > 0")
  for key in ("weight_decay", "grad_clip"):
    if key in o:
      need(finite(o[key]) and o[key] >= 0, key, "a finite number >= 0 (grad_clip 0 = no clipping)")
  if "grad_accum_steps" in o:
    need(isinstance(o.grad_accum_steps, int) and o.grad_accum_steps >= 1, "grad_accum_steps", "an integer >= 1")


def make_schedule(name: str, lr: float, total_steps: int, min_lr: float = 0.0, warmup_frac: float = 0.1):
  s = max(int(total_steps), 1)
  if name == "linear":
    return lambda c: lr * (1.0 + (min_lr / lr - 1.0) * jnp.minimum(c, s) / s)
  if name == "linear_w_warmup":
    w = int(s * warmup_frac)
    def sched(c):
      c = jnp.asarray(c, jnp.float32)
      warm = lr * c / max(w, 1)
      decay = lr * jnp.maximum(0.0, (s - c) / max(s - w, 1))
      return jnp.where(c < w, warm, decay)
    return sched
  if name == "constant":
    return lambda c: jnp.asarray(lr, jnp.float32)
  if name == "cosine":
    return optax.warmup_cosine_decay_schedule(0.0, lr, max(int(s * warmup_frac), 1), s, min_lr)
  raise ValueError(f"optimizer.schedule {name!r} is not one of {SCHEDULES}")


def make_optimizer(opt_cfg, total_steps: int):
  """optax chain from a config block: name, lr, min_lr, schedule, b1, b2, eps, weight_decay,
  grad_clip (0 = none, as both official recipes), grad_accum_steps. Returns (tx, schedule)."""
  sched = make_schedule(opt_cfg.schedule, opt_cfg.lr, total_steps, opt_cfg.get("min_lr", 0.0),
                        opt_cfg.get("warmup_frac", 0.1))
  if opt_cfg.name == "adam":
    core = optax.adam(sched, b1=opt_cfg.b1, b2=opt_cfg.b2, eps=opt_cfg.eps)
  elif opt_cfg.name == "adamw":
    core = optax.adamw(sched, b1=opt_cfg.b1, b2=opt_cfg.b2, eps=opt_cfg.eps, weight_decay=opt_cfg.weight_decay)
  elif opt_cfg.name == "sgd":
    core = optax.sgd(sched)
  else:
    raise ValueError(f"optimizer.name {opt_cfg.name!r} is not one of {OPTIMIZERS}")
  parts = [optax.clip_by_global_norm(opt_cfg.grad_clip)] if opt_cfg.get("grad_clip", 0) else []
  tx = optax.chain(*parts, core)
  if opt_cfg.get("grad_accum_steps", 1) > 1:
    tx = optax.MultiSteps(tx, every_k_schedule=opt_cfg.grad_accum_steps)
  return tx, sched


def norm_metrics(grads, params, updates) -> dict:
  return {"grad_norm": optax.global_norm(grads), "param_norm": optax.global_norm(params),
          "update_norm": optax.global_norm(updates)}


def apply_update(state: TrainState, tx, grads, schedule=None) -> tuple[TrainState, dict]:
  """One optimizer update, as every algorithm's step ends: (next state, {grad/param/update norms, lr})."""
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = norm_metrics(grads, state.params, updates)
  if schedule is not None:
    metrics["lr"] = jnp.asarray(schedule(state.step), jnp.float32)
  return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics
