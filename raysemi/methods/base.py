"""The method contract (see DESIGN.md) and the pieces every method shares.

A method builds its models, declares the data streams it consumes and maps one batch of each stream to a dict
of scalars whose ``"loss"`` the engine back-propagates. It never calls ``backward()``, an optimizer, AMP,
``.cuda()`` or a logger, and never imports ray or wandb: a method trains in a plain Python loop too.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Protocol

import torch
from torch import nn

from raysemi.config import Config, LossConfig
from raysemi.data.streams import StreamSpec
from raysemi.losses import ohem_cross_entropy, pixel_cross_entropy

Batch = dict[str, dict[str, torch.Tensor]]  # stream name -> {"image": (N,3,H,W), "mask": (N,H,W), ...}


class Method(Protocol):
    """See DESIGN.md. Optional: ``eval_needs_boxes = True`` makes val batches carry box rasters (derived from
    the val masks) as extra image channels, for an eval model conditioned on boxes."""

    name: str

    def build_models(self, num_classes: int) -> dict[str, nn.Module]: ...

    def streams(self) -> dict[str, StreamSpec]: ...

    def training_step(self, models: dict[str, nn.Module], batch: Batch, step: int) -> dict[str, torch.Tensor]: ...

    def eval_model(self, models: dict[str, nn.Module]) -> nn.Module: ...


def labeled_criterion(cfg: LossConfig) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``(logits (N,C,H,W), mask (N,H,W)) -> scalar``: CE, or OHEM CE when ``loss.ohem`` is set."""
    if cfg.ohem:
        return partial(
            ohem_cross_entropy, threshold=cfg.ohem_threshold, min_kept=cfg.ohem_min_kept, ignore_index=cfg.ignore_index
        )
    return partial(pixel_cross_entropy, ignore_index=cfg.ignore_index)


def build_method(cfg: Config) -> Method:
    from raysemi.methods.cac import ContextAwareConsistency
    from raysemi.methods.cps import CrossPseudoSupervision
    from raysemi.methods.self_correction import build_self_correction
    from raysemi.methods.simformer import SimFormer
    from raysemi.methods.supervised import Supervised

    registry: dict[str, Callable[[Config], Method]] = {
        method.name: method for method in (Supervised, CrossPseudoSupervision, ContextAwareConsistency, SimFormer)
    }
    registry["self_correction"] = build_self_correction  # one method object per stage
    return registry[cfg.method](cfg)
