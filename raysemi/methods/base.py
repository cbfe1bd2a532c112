"""The method contract (docs/architecture.md) and the pieces every method shares.

The list of methods is :mod:`raysemi.methods.registry`; this module names none of them.

A method builds its models, declares the data streams it consumes and maps one batch of each stream to a dict
of scalars whose ``"loss"`` the engine back-propagates. It never calls ``backward()``, an optimizer, AMP,
``.cuda()`` or a logger, and never imports ray or wandb: a method trains in a plain Python loop too.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, ClassVar

import torch
from torch import nn

from raysemi.data.dataset import DatasetSource
from raysemi.data.streams import StreamSpec
from raysemi.losses import ohem_cross_entropy, pixel_cross_entropy
from raysemi.sections import CommonConfig, LossConfig, Section, set_dotted, validate_model

Batch = dict[str, dict[str, torch.Tensor]]  # stream name -> {"image": (N,3,H,W), "mask": (N,H,W), ...}


@dataclass(frozen=True)
class PseudoLabels:
    """Input a stage makes from the previous one before it runs: the previous stage's eval model labels the
    ``group`` classes (one of its class groups, e.g. SimFormer's ``novel``) on the pixels its training masks
    leave unknown, written once as a ``generic`` dataset at this stage's ``data.root``
    (:func:`raysemi.engine.pseudo_labels.write_pseudo_label_dataset`); the stage is then evaluated with the
    previous stage's class groups (``eval.groups``)."""

    group: str


@dataclass(frozen=True)
class Stage:
    """One run of a method's chain: its ``name`` (a folder under the user's ``run.dir``, the key of
    ``stages.json``), its whole ``config``, the summary keys ``stages.json`` lists for it (``record``, after its
    ``run_dir``), and what it needs made from the previous stage first (``pseudo_labels``)."""

    name: str
    config: CommonConfig
    record: tuple[str, ...] = ("miou",)
    pseudo_labels: PseudoLabels | None = None


class Method(ABC):
    """The method contract (docs/architecture.md). A method subclasses this, sets its class members, implements the four
    abstract methods, and is registered in :mod:`raysemi.methods.registry`.

    Class members, declared once per method (read without building the method):

    - ``name``: its ``method:`` value in a config.
    - ``config_model``: its pydantic section (``<name>: {...}`` in a config, ``cfg.<name>`` in code), or None.
    - ``search_space``: the default search space of ``raysemi tune`` (dotted key → one distribution, see
      :mod:`raysemi.sweeps`), added to the shared optimizer keys; None: a sweep file must give ``space``.
    - ``tunes_label_fraction``: whether a default search runs one search per label fraction (False where the
      fraction does not take effect, e.g. a method that trains on every image).
    - ``eval_needs_boxes``: val batches carry box rasters (derived from the val masks) as extra image channels,
      for an eval model conditioned on boxes.

    Hooks with defaults: :meth:`create`, :meth:`check_config`, :meth:`stages`, :meth:`report_label` (class
    level) and :meth:`check_data`, ``class_groups`` (per method object).
    """

    name: ClassVar[str]
    config_model: ClassVar[type[Section] | None] = None
    search_space: ClassVar[dict[str, dict[str, Any]] | None] = None
    tunes_label_fraction: ClassVar[bool] = True
    eval_needs_boxes: ClassVar[bool] = False
    class_groups: dict[str, list[int]] | None = None  # mIoU also per group of class ids (set by build_models)

    def __init__(self, cfg: CommonConfig):
        self.cfg = cfg

    @classmethod
    def create(cls, cfg: CommonConfig) -> Method:
        """The method object for ``cfg`` (a multi-stage method may return the class of the config's stage)."""
        return cls(cfg)

    @classmethod
    def check_config(cls, cfg: CommonConfig) -> None:
        """Checks across sections when ``cfg.method`` is this method; raise ``ValueError`` with one line naming
        the keys at fault (it becomes the config's ``ConfigError``)."""
        return None  # the default: nothing across sections to check

    @classmethod
    def stages(cls, cfg: CommonConfig) -> list[Stage]:
        """The runs ``cfg`` makes, in order. One stage (the default) is a plain run in ``run.dir``; more are
        chained, each in ``<run.dir>/<stage name>``, and the chain's result is the last stage's summary."""
        return [Stage(cls.name, cfg)]

    @classmethod
    def report_label(cls, options: dict[str, Any]) -> str:
        """The method's name in ``raysemi report`` tables, from a run's ``<name>`` section as written."""
        return cls.name

    @abstractmethod
    def build_models(self, num_classes: int) -> dict[str, nn.Module]: ...

    @abstractmethod
    def streams(self) -> dict[str, StreamSpec]: ...

    @abstractmethod
    def training_step(self, models: dict[str, nn.Module], batch: Batch, step: int) -> dict[str, torch.Tensor]: ...

    @abstractmethod
    def eval_model(self, models: dict[str, nn.Module]) -> nn.Module: ...

    def check_data(self, source: DatasetSource) -> None:
        """The method's own data needs, checked before a run directory exists; raise ``DataError``."""
        return None  # the default: the dataset checks every run makes are enough


def derived_config(cfg: CommonConfig, changes: dict[str, Any], source: str) -> CommonConfig:
    """``cfg`` with each dotted key of ``changes`` set, validated as a config of its own (a stage's).

    Raises:
        ConfigError: one line naming ``source`` and the key at fault.
    """
    raw = cfg.model_dump(mode="json")
    for key, value in changes.items():
        set_dotted(raw, key, value)
    return validate_model(type(cfg), raw, source)


def labeled_criterion(cfg: LossConfig) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``(logits (N,C,H,W), mask (N,H,W)) -> scalar``: CE, or OHEM CE when ``loss.ohem`` is set."""
    if cfg.ohem:
        return partial(
            ohem_cross_entropy, threshold=cfg.ohem_threshold, min_kept=cfg.ohem_min_kept, ignore_index=cfg.ignore_index
        )
    return partial(pixel_cross_entropy, ignore_index=cfg.ignore_index)
