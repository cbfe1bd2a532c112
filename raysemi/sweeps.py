"""Sweep files: which config keys a tuning run searches, over which distributions, judged by which metric.

A sweep file (YAML)::

    metric: val_miou          # a metric every trial reports; val_miou needs train.eval_every
    mode: max
    samples: 16               # trials Optuna proposes (times the grid, if any)
    steps: 300                # each trial's budget, ASHA's max_t (default: the config's train.steps)
    time_budget_s: null       # stop the search after this many seconds (--resume continues it)
    concurrency: null         # trials at once; null: as many as the cluster's CPUs/GPUs allow
    scheduler: asha           # asha (early stopping on `metric`) or fifo (every trial runs to the end)
    grace_steps: 100          # asha: no trial is stopped before this step
    reduction_factor: 3       # asha: keep the best 1/3 at each rung
    retries: 1                # a failing trial is retried this many times, then recorded; the sweep goes on
    space:
      optim.lr: {loguniform: [1.0e-4, 1.0e-2]}
      cps.weight: {uniform: [0.5, 3.0]}
      cps.prop_range: {choice: [[0.25, 0.5], [0.1, 0.3]]}
      data.label_fraction: {grid: [0.0625, 0.125]}

Keys are dotted config keys; ``space`` may be left out to use the method's default space
(:func:`default_space`, from the method class's ``search_space``). This module never imports ray:
:mod:`raysemi.ray.tune` turns a :class:`SweepSpec` into Tune objects.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from raysemi.config import Config, set_dotted, validate_config
from raysemi.errors import ConfigError
from raysemi.methods.registry import method_class

KINDS = ("loguniform", "uniform", "randint", "choice", "grid")


class Distribution(BaseModel):
    """One key's distribution: exactly one of ``loguniform: [low, high]``, ``uniform: [low, high]``,
    ``randint: [low, high)``, ``choice: [values]`` or ``grid: [values]`` (every value, crossed with the rest)."""

    model_config = ConfigDict(extra="forbid")

    loguniform: tuple[float, float] | None = None
    uniform: tuple[float, float] | None = None
    randint: tuple[int, int] | None = None
    choice: list[Any] | None = None
    grid: list[Any] | None = None

    @property
    def kind(self) -> str:
        return next(kind for kind in KINDS if getattr(self, kind) is not None)

    @property
    def argument(self) -> Any:
        return getattr(self, self.kind)

    def examples(self) -> list[Any]:
        """Values to validate the key with: the bounds of a range, every listed value."""
        argument = self.argument
        if self.kind == "randint":
            return [argument[0], argument[1] - 1]
        return list(argument)


class SweepSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    metric: str = "val_miou"
    mode: Literal["max", "min"] = "max"
    samples: int = Field(8, ge=1)
    steps: int | None = Field(None, ge=1)  # each trial's budget (train.steps, ASHA's max_t); None: the config's
    time_budget_s: float | None = Field(None, gt=0)  # the whole search stops after this long (resume continues)
    concurrency: int | None = Field(None, ge=1)
    scheduler: Literal["asha", "fifo"] = "asha"
    grace_steps: int = Field(100, ge=1)
    reduction_factor: int = Field(3, ge=2)
    retries: int = Field(1, ge=0)  # a failing trial is run again this many times, then recorded as failed
    space: dict[str, Distribution] = {}

    @field_validator("space", mode="before")
    @classmethod
    def _one_kind_each(cls, space: Any) -> Any:
        for key, value in (space or {}).items():
            if not isinstance(value, dict) or len(value) != 1 or next(iter(value)) not in KINDS:
                raise ValueError(f"space.{key} must be one of {{{': ..., '.join(KINDS)}: ...}} "
                                 f"with one kind, got {value!r}")
            kind, argument = next(iter(value.items()))
            if kind in ("loguniform", "uniform", "randint") and not _ordered_pair(argument, kind):
                raise ValueError(f"space.{key}: {kind} takes [low, high] with low < high"
                                 f"{' and low > 0' if kind == 'loguniform' else ''}, got {argument!r}")
            if kind in ("choice", "grid") and not (isinstance(argument, list) and argument):
                raise ValueError(f"space.{key}: {kind} takes a non-empty list of values, got {argument!r}")
        return space


def _ordered_pair(argument: Any, kind: str) -> bool:
    if not (isinstance(argument, list | tuple) and len(argument) == 2):
        return False
    low, high = argument
    if not all(isinstance(v, int | float) for v in argument) or low >= high:
        return False
    return low > 0 if kind == "loguniform" else True


# The keys every default search space has; each method adds its own (its class's `search_space`) and, where the
# split comes from data.label_fraction, the label fraction as a grid (see `fraction_grid`).
SHARED_SPACE = {
    "optim.lr": {"loguniform": [1.0e-3, 0.3]},
    "optim.weight_decay": {"loguniform": [1.0e-5, 1.0e-3]},
}


# The label fractions a default search runs at: one Optuna search per fraction, since the best settings move
# with the number of labels (searching the fraction itself would only find that more labels score higher).
DEFAULT_FRACTIONS = [0.0625, 0.125, 0.25]


def default_space(base: Config) -> dict[str, Distribution]:
    """The method's default space for ``base``: :data:`SHARED_SPACE`, the method's own ``search_space`` and,
    where the split comes from ``data.label_fraction``, a grid over :data:`DEFAULT_FRACTIONS`.

    Raises:
        ConfigError: the method declares no default space.
    """
    own = method_class(base.method).search_space
    if own is None:
        raise ConfigError(f"method {base.method} declares no default search space; give the sweep file a `space:` "
                          "(e.g. `space: {optim.lr: {loguniform: [1.0e-3, 0.3]}}`)")
    space = {**SHARED_SPACE, **own, **fraction_grid(base)}
    return {key: Distribution.model_validate(value) for key, value in space.items()}


def fraction_grid(base: Config) -> dict[str, dict]:
    """``{"data.label_fraction": {"grid": DEFAULT_FRACTIONS}}``, or nothing where the fraction would not take
    effect or would not fit: a split, tag or box file, or ``data.label_count``, fixes the split, and a method
    whose ``tunes_label_fraction`` is False (``simformer``) trains on every image."""
    data = base.data
    fixed = data.labeled_split or data.unlabeled_tags or data.unlabeled_boxes or data.label_count
    if fixed or not method_class(base.method).tunes_label_fraction:
        return {}
    return {"data.label_fraction": {"grid": DEFAULT_FRACTIONS}}


def load_sweep(path: str | Path, base: Config) -> SweepSpec:
    """Read and check a sweep file against the config it tunes: every key must be a config key that accepts
    every listed value (or range bound); no space means the method's default space.

    Raises:
        ConfigError: one line naming the file and the key or value at fault.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: sweep file not found")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
        spec = SweepSpec.model_validate(raw)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {getattr(exc, 'problem', exc)}") from None
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(p) for p in error["loc"]) or "sweep"
        raise ConfigError(f"{path}: {where}: {error['msg'].removeprefix('Value error, ')}") from None
    if spec.steps:
        base = apply_values(base, {"train.steps": spec.steps})
    if not spec.space:
        spec.space = default_space(base)
    check_space(spec.space, base, source=str(path))
    check_schedule(spec, base, source=str(path))
    return spec


def check_schedule(spec: SweepSpec, base: Config, source: str) -> None:
    """``val_miou`` exists only once a trial has evaluated, and ASHA compares trials at its rungs (the grace
    step times powers of the reduction factor): evaluations must fall on them."""
    every = base.train.eval_every
    if spec.metric == "val_miou" and spec.scheduler == "asha" and (not every or spec.grace_steps % every):
        raise ConfigError(f"{source}: grace_steps={spec.grace_steps} with metric val_miou needs train.eval_every "
                          f"set to a divisor of it (now {every}), so every ASHA rung has a fresh mIoU")


def check_space(space: dict[str, Distribution], base: Config, source: str) -> None:
    """Every key of ``space`` set to each of its example values still gives a valid config."""
    raw = base.model_dump(mode="json")
    for key, distribution in space.items():
        for value in distribution.examples():
            trial = copy.deepcopy(raw)
            set_dotted(trial, key, value)
            validate_config(trial, source=f"{source}: space.{key}={value!r}")


def apply_values(base: Config, values: dict[str, Any]) -> Config:
    """``base`` with each dotted key of ``values`` set (one trial's config)."""
    raw = base.model_dump(mode="json")
    for key, value in values.items():
        set_dotted(raw, key, value)
    return validate_config(raw, source="trial")
