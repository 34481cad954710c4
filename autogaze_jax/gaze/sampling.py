"""The official sampling configs of a gaze model: gazing ratio, per-frame ratio, task-loss requirement.

An official `config.json` carries three dicts and two flags that decide the budget and the stop rule
whenever a caller gives neither `gazing_ratio` nor `task_loss_requirement` (and during training):

  gazing_ratio_config            sample_strategy_during_training/_inference: fixed | uniform | exponential
                                 fixed.gazing_ratio, uniform.gazing_ratio_min/max,
                                 exponential.gazing_ratio_min/max/lambda
  gazing_ratio_each_frame_config sample_strategy_during_training/_inference: uniform | dirichlet | self
                                 dirichlet.alpha (a float, or "a,b,..." with one value per frame)
  task_loss_requirement_config   sample_strategy_during_training/_inference: fixed | uniform
                                 fixed.task_loss_requirement, uniform.task_loss_requirement_min/max
  has_task_loss_requirement_during_training / _inference

`SamplingConfig` is their typed, frozen (hashable) form; `from_official_dict` / `update_official_dict`
read and write exactly those keys (docs/sampling.md). The draws take a jax PRNG key, so a fixed seed
gives the same draws on every run; jax is imported only when something is drawn, so reading a config
never pays for it.

Semantics (official `AutoGaze.get_gazing_ratio`, `get_gazing_ratio_each_frame`,
`get_task_loss_requirement`):
  ratio      fixed r | U(min, max) | Exp(lambda) conditioned on [min, max] (the official rejection loop;
             drawn here by the inverse CDF of the truncated law, the same distribution)
  per frame  uniform: r for every frame | dirichlet: Dirichlet(alpha) * r * T clamped to [0, 1] |
             self: a pre-generation pass with a forced requirement; its real tokens per frame
  budget     max(1, int(r_t * tokens_per_frame))
  requirement  only if has_task_loss_requirement_during_<mode> (or forced, for `self`):
             fixed q | U(min, max), one value for the whole batch
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

RATIO_STRATEGIES = ("fixed", "uniform", "exponential")
FRAME_STRATEGIES = ("uniform", "dirichlet", "self")
REQUIREMENT_STRATEGIES = ("fixed", "uniform")


class SamplingError(ValueError):
  """A sampling config value the official model would not accept; `key` is its config.json path
  (the same path under `config.model.` in a training config)."""

  def __init__(self, key: str, value, want: str):
    self.key = key
    super().__init__(f"{key} = {value!r} is invalid: expected {want}")


class SelfStrategyNeedsModel(NotImplementedError):
  """The `self` per-frame strategy needs a pre-generation pass of the model: callers that own a model
  (gaze.generate, the GRPO step) run it; a bare draw cannot."""


def _check(ok: bool, key: str, value, want: str):
  if not ok:
    raise SamplingError(key, value, want)


def _ratio_ok(x) -> bool:
  return isinstance(x, (int, float)) and math.isfinite(x) and 0.0 <= x <= 1.0


@dataclasses.dataclass(frozen=True)
class RatioSampling:
  """`gazing_ratio_config`; defaults = the official constructor's."""
  during_training: str = "fixed"
  during_inference: str = "fixed"
  fixed: float = 0.5
  uniform_min: float = 0.0
  uniform_max: float = 1.0
  exponential_min: float = 0.0
  exponential_max: float = 1.0
  exponential_lambda: float = 10.0

  def __post_init__(self):
    k = "gazing_ratio_config."
    for mode in ("training", "inference"):
      s = getattr(self, f"during_{mode}")
      _check(s in RATIO_STRATEGIES, f"{k}sample_strategy_during_{mode}", s, f"one of {RATIO_STRATEGIES}")
    _check(_ratio_ok(self.fixed) and self.fixed > 0, f"{k}fixed.gazing_ratio", self.fixed, "a ratio in (0, 1]")
    for name, lo, hi in (("uniform", self.uniform_min, self.uniform_max),
                         ("exponential", self.exponential_min, self.exponential_max)):
      _check(_ratio_ok(lo), f"{k}{name}.gazing_ratio_min", lo, "a ratio in [0, 1]")
      _check(_ratio_ok(hi) and hi >= lo and hi > 0, f"{k}{name}.gazing_ratio_max", hi,
             f"a ratio in (0, 1] and >= gazing_ratio_min {lo}")
    _check(math.isfinite(self.exponential_lambda) and self.exponential_lambda > 0, f"{k}exponential.lambda",
           self.exponential_lambda, "a positive rate")

  def strategy(self, training: bool) -> str:
    return self.during_training if training else self.during_inference

  def max_ratio(self, training: bool) -> float:
    """The largest ratio a draw can give (sets the static rollout capacity)."""
    return {"fixed": self.fixed, "uniform": self.uniform_max,
            "exponential": self.exponential_max}[self.strategy(training)]


@dataclasses.dataclass(frozen=True)
class FrameSampling:
  """`gazing_ratio_each_frame_config`. dirichlet_alpha: a float (the same alpha for every frame) or the
  official "a,b,..." string (one value per frame), kept as written so config.json round-trips."""
  during_training: str = "uniform"
  during_inference: str = "uniform"
  dirichlet_alpha: float | str = 0.5

  def __post_init__(self):
    k = "gazing_ratio_each_frame_config."
    for mode in ("training", "inference"):
      s = getattr(self, f"during_{mode}")
      _check(s in FRAME_STRATEGIES, f"{k}sample_strategy_during_{mode}", s, f"one of {FRAME_STRATEGIES}")
    a = self.dirichlet_alpha
    try:
      vals = [float(x) for x in a.split(",")] if isinstance(a, str) else [float(a)]
    except ValueError:
      vals = []
    _check(bool(vals) and all(math.isfinite(v) and v > 0 for v in vals), f"{k}dirichlet.alpha", a,
           "a positive float or a string 'a,b,...' of positive floats")

  def strategy(self, training: bool) -> str:
    return self.during_training if training else self.during_inference

  def alpha(self, frames: int) -> tuple[float, ...]:
    """Per-frame concentrations; a string must list exactly `frames` values (as the official asserts)."""
    a = self.dirichlet_alpha
    if not isinstance(a, str):
      return (float(a),) * frames
    vals = tuple(float(x) for x in a.split(","))
    _check(len(vals) == frames, "gazing_ratio_each_frame_config.dirichlet.alpha", a,
           f"{frames} comma-separated values (one per frame of the clip)")
    return vals


@dataclasses.dataclass(frozen=True)
class RequirementSampling:
  """`task_loss_requirement_config` with the two `has_task_loss_requirement_during_*` flags."""
  has_during_training: bool = False
  has_during_inference: bool = False
  during_training: str = "fixed"
  during_inference: str = "fixed"
  fixed: float = 0.7
  uniform_min: float = 0.6
  uniform_max: float = 0.9

  def __post_init__(self):
    k = "task_loss_requirement_config."
    for mode in ("training", "inference"):
      s = getattr(self, f"during_{mode}")
      _check(s in REQUIREMENT_STRATEGIES, f"{k}sample_strategy_during_{mode}", s, f"one of {REQUIREMENT_STRATEGIES}")
      f = getattr(self, f"has_during_{mode}")
      _check(isinstance(f, bool), f"has_task_loss_requirement_during_{mode}", f, "a bool")
    _check(math.isfinite(self.fixed), f"{k}fixed.task_loss_requirement", self.fixed, "a finite number")
    _check(math.isfinite(self.uniform_min), f"{k}uniform.task_loss_requirement_min", self.uniform_min,
           "a finite number")
    _check(math.isfinite(self.uniform_max) and self.uniform_max >= self.uniform_min,
           f"{k}uniform.task_loss_requirement_max", self.uniform_max,
           f"a finite number >= task_loss_requirement_min {self.uniform_min}")

  def strategy(self, training: bool) -> str:
    return self.during_training if training else self.during_inference

  def active(self, training: bool) -> bool:
    return self.has_during_training if training else self.has_during_inference


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
  ratio: RatioSampling = RatioSampling()
  frame: FrameSampling = FrameSampling()
  requirement: RequirementSampling = RequirementSampling()

  # ---- official config.json <-> SamplingConfig ----
  @classmethod
  def from_official_dict(cls, d: dict[str, Any]) -> "SamplingConfig":
    """Read the official keys; a missing dict or entry takes the official constructor's default."""
    def sub(name):
      v = d.get(name)
      return v if isinstance(v, dict) else {}
    def val(dct, path, default):
      for p in path[:-1]:
        dct = dct.get(p) if isinstance(dct.get(p), dict) else {}
      v = dct.get(path[-1], default)
      return default if v is None else v
    r, f, q = sub("gazing_ratio_config"), sub("gazing_ratio_each_frame_config"), sub("task_loss_requirement_config")
    R, F, Q = RatioSampling, FrameSampling, RequirementSampling
    num = lambda x, key: _number(x, key)  # noqa: E731
    alpha = val(f, ("dirichlet", "alpha"), F.dirichlet_alpha)
    return cls(
        ratio=R(during_training=val(r, ("sample_strategy_during_training",), R.during_training),
                during_inference=val(r, ("sample_strategy_during_inference",), R.during_inference),
                fixed=num(val(r, ("fixed", "gazing_ratio"), R.fixed), "gazing_ratio_config.fixed.gazing_ratio"),
                uniform_min=num(val(r, ("uniform", "gazing_ratio_min"), R.uniform_min), "gazing_ratio_config.uniform.gazing_ratio_min"),
                uniform_max=num(val(r, ("uniform", "gazing_ratio_max"), R.uniform_max), "gazing_ratio_config.uniform.gazing_ratio_max"),
                exponential_min=num(val(r, ("exponential", "gazing_ratio_min"), R.exponential_min),
                                    "gazing_ratio_config.exponential.gazing_ratio_min"),
                exponential_max=num(val(r, ("exponential", "gazing_ratio_max"), R.exponential_max),
                                    "gazing_ratio_config.exponential.gazing_ratio_max"),
                exponential_lambda=num(val(r, ("exponential", "lambda"), R.exponential_lambda),
                                       "gazing_ratio_config.exponential.lambda")),
        frame=F(during_training=val(f, ("sample_strategy_during_training",), F.during_training),
                during_inference=val(f, ("sample_strategy_during_inference",), F.during_inference),
                dirichlet_alpha=alpha if isinstance(alpha, str) else num(alpha, "gazing_ratio_each_frame_config.dirichlet.alpha")),
        # null is the official falsy "no requirement"
        requirement=Q(has_during_training=d.get("has_task_loss_requirement_during_training") or False,
                      has_during_inference=d.get("has_task_loss_requirement_during_inference") or False,
                      during_training=val(q, ("sample_strategy_during_training",), Q.during_training),
                      during_inference=val(q, ("sample_strategy_during_inference",), Q.during_inference),
                      fixed=num(val(q, ("fixed", "task_loss_requirement"), Q.fixed),
                                "task_loss_requirement_config.fixed.task_loss_requirement"),
                      uniform_min=num(val(q, ("uniform", "task_loss_requirement_min"), Q.uniform_min),
                                      "task_loss_requirement_config.uniform.task_loss_requirement_min"),
                      uniform_max=num(val(q, ("uniform", "task_loss_requirement_max"), Q.uniform_max),
                                      "task_loss_requirement_config.uniform.task_loss_requirement_max")))

  def update_official_dict(self, d: dict[str, Any]) -> dict[str, Any]:
    """Write our values into an official config dict in place (entries already equal are left as
    written, so a loaded file re-exports verbatim; absent dicts are created with the official layout)."""
    r, f, q = self.ratio, self.frame, self.requirement
    _put(d, ("gazing_ratio_config", "sample_strategy_during_training"), r.during_training)
    _put(d, ("gazing_ratio_config", "sample_strategy_during_inference"), r.during_inference)
    _put(d, ("gazing_ratio_config", "fixed", "gazing_ratio"), r.fixed)
    _put(d, ("gazing_ratio_config", "uniform", "gazing_ratio_min"), r.uniform_min)
    _put(d, ("gazing_ratio_config", "uniform", "gazing_ratio_max"), r.uniform_max)
    _put(d, ("gazing_ratio_config", "exponential", "gazing_ratio_min"), r.exponential_min)
    _put(d, ("gazing_ratio_config", "exponential", "gazing_ratio_max"), r.exponential_max)
    _put(d, ("gazing_ratio_config", "exponential", "lambda"), r.exponential_lambda)
    _put(d, ("gazing_ratio_each_frame_config", "sample_strategy_during_training"), f.during_training)
    _put(d, ("gazing_ratio_each_frame_config", "sample_strategy_during_inference"), f.during_inference)
    _put(d, ("gazing_ratio_each_frame_config", "dirichlet", "alpha"), f.dirichlet_alpha)
    for k in ("uniform", "self"):  # the official layout has these (empty) entries
      d["gazing_ratio_each_frame_config"].setdefault(k, None)
    _put(d, ("has_task_loss_requirement_during_training",), q.has_during_training)
    _put(d, ("has_task_loss_requirement_during_inference",), q.has_during_inference)
    _put(d, ("task_loss_requirement_config", "sample_strategy_during_training"), q.during_training)
    _put(d, ("task_loss_requirement_config", "sample_strategy_during_inference"), q.during_inference)
    _put(d, ("task_loss_requirement_config", "fixed", "task_loss_requirement"), q.fixed)
    _put(d, ("task_loss_requirement_config", "uniform", "task_loss_requirement_min"), q.uniform_min)
    _put(d, ("task_loss_requirement_config", "uniform", "task_loss_requirement_max"), q.uniform_max)
    return d


def _number(x, key: str) -> float:
  if isinstance(x, bool) or not isinstance(x, (int, float)):
    try:
      return float(x)
    except (TypeError, ValueError):
      raise SamplingError(key, x, "a number") from None
  return float(x)


def _put(d: dict, path: tuple[str, ...], value):
  for p in path[:-1]:
    if not isinstance(d.get(p), dict):
      d[p] = {}
    d = d[p]
  old = d.get(path[-1], _MISSING)
  # 0 and 0.0 are the same value: keep the file's spelling; a bool is never a number here.
  if old is _MISSING or old != value or isinstance(old, bool) != isinstance(value, bool):
    d[path[-1]] = value


_MISSING = object()


# ---- draws (jax PRNG) ----
def draw_ratio(key, rs: RatioSampling, training: bool):
  """One gazing ratio for the whole batch (a float32 scalar)."""
  import jax
  import jax.numpy as jnp
  s = rs.strategy(training)
  if s == "fixed":
    return jnp.float32(rs.fixed)
  if s == "uniform":
    return jax.random.uniform(key, (), jnp.float32, rs.uniform_min, rs.uniform_max)
  # Exp(lambda) conditioned on [min, max]: inverse CDF of the truncated law.
  lam, lo, hi = rs.exponential_lambda, rs.exponential_min, rs.exponential_max
  u = jax.random.uniform(key, (), jnp.float32)
  mass = -math.expm1(-lam * (hi - lo))       # P(lo <= X <= hi) / exp(-lam * lo)
  return jnp.clip(lo - jnp.log1p(-u * mass) / lam, lo, hi).astype(jnp.float32)


def draw_frame_ratios(key, fs: FrameSampling, ratio, frames: int, training: bool):
  """Per-frame ratios (frames,) from the clip's ratio; `self` needs the model (SelfStrategyNeedsModel)."""
  import jax
  import jax.numpy as jnp
  s = fs.strategy(training)
  if s == "uniform":
    return jnp.full((frames,), ratio, jnp.float32)
  if s == "dirichlet":
    w = jax.random.dirichlet(key, jnp.asarray(fs.alpha(frames), jnp.float32))
    return jnp.clip(w * ratio * frames, 0.0, 1.0).astype(jnp.float32)
  raise SelfStrategyNeedsModel(
      "gazing_ratio_each_frame_config strategy 'self' needs a pre-generation pass of the model "
      "(gaze.generate and the GRPO step run it); it cannot be drawn without one")


def draw_requirement(key, qs: RequirementSampling, training: bool, force: bool = False):
  """The task-loss requirement (a float32 scalar), or None when the config has none in this mode and
  the draw is not forced (the `self` pre-pass forces one)."""
  import jax
  import jax.numpy as jnp
  if not (force or qs.active(training)):
    return None
  if qs.strategy(training) == "fixed":
    return jnp.float32(qs.fixed)
  return jax.random.uniform(key, (), jnp.float32, qs.uniform_min, qs.uniform_max)


def budgets(ratios, tokens_per_frame: int):
  """max(1, int(r * tokens_per_frame)) in float32, as the official `.to(torch.long).clamp(min=1)`."""
  import jax.numpy as jnp
  r = jnp.asarray(ratios, jnp.float32)
  return jnp.maximum(1, (r * jnp.float32(tokens_per_frame)).astype(jnp.int32))
