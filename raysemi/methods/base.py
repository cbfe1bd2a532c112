"""The method contract (see DESIGN.md) and the pieces every method shares.

A method builds its models, declares the data streams it consumes and maps one batch of each stream to a dict
of scalars whose ``"loss"`` the engine back-propagates. It never calls ``backward()``, an optimizer, AMP,
``.cuda()`` or a logger, and never imports ray or wandb: a method trains in a plain Python loop too.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Literal, Protocol

import torch
from torch import nn

from raysemi.config import Config, LossConfig
from raysemi.data.overlapping_crops import OverlappingCrops
from raysemi.data.pipeline import WeakShotView
from raysemi.losses import ohem_cross_entropy, pixel_cross_entropy

Batch = dict[str, dict[str, torch.Tensor]]  # stream name -> {"image": (N,3,H,W), "mask": (N,H,W), ...}


@dataclass(frozen=True)
class StreamSpec:
    """A training stream: which samples it draws from, its global batch size per step, and its view.

    ``source="labeled"`` yields ``image`` and ``mask``; ``source="unlabeled"`` yields ``image`` only (its
    samples carry no mask path, so their masks are never read), plus ``image_tags`` when ``data.unlabeled_tags``
    is set, or ``boxes`` (a box raster) when ``data.unlabeled_boxes`` is. With ``crops`` set, each image arrives
    as two overlapping crops instead (CAC; see :class:`raysemi.data.pipeline.DecodeCropPairs` for the keys).
    ``boxes=True`` on a labeled stream adds the raster of boxes derived from each image's mask.
    ``source="labeled_half"`` draws from the first half of the labeled split only. With ``weak_shot`` set,
    each image arrives with its reference image, novel pixels hidden and tags added (SimFormer; see
    :class:`raysemi.data.pipeline.DecodeWeakShotPairs`; ``batch_size`` counts the images, not the partners).
    """

    source: Literal["labeled", "labeled_half", "unlabeled"]
    batch_size: int
    crops: OverlappingCrops | None = None
    boxes: bool = False
    weak_shot: WeakShotView | None = None


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
