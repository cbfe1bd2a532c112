"""The segmenter every method builds on: backbone → head → 1×1 classifier.

Every method's segmenter head and classifier start from one init, :func:`kaiming_init` (kaiming-normal,
fan-in, ReLU gain; zero biases; unit BatchNorm), as TorchSemiSeg initialises its CPS networks and its
supervised baseline alike: the same init for every method, so that a comparison compares the methods alone.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from raysemi.models.backbones import Backbone, build_backbone
from raysemi.models.heads import HEADS
from raysemi.sections import ModelConfig


class Segmenter(nn.Module):
    """``forward(images)`` → ``{"logits": (N, C, H, W) at input size, "features": (N, D, h, w) decoder features}``.

    Parameters under ``backbone.`` are the pretrained part (they get ``optim.backbone_lr_mult``).
    """

    def __init__(self, backbone: Backbone, head: nn.Module, num_classes: int):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.classifier = nn.Conv2d(head.out_channels, num_classes, kernel_size=1)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.decode(*self.backbone(images), images.shape[-2:])

    def decode(self, low: torch.Tensor, high: torch.Tensor, size) -> dict[str, torch.Tensor]:
        """Backbone features → ``{"logits"`` at ``size``, ``"features"}`` (the part after the encoder)."""
        features = self.head(low, high)
        logits = F.interpolate(self.classifier(features), size=size, mode="bilinear", align_corners=False)
        return {"logits": logits, "features": features}


class LogitsOnly(nn.Module):
    """Wraps a segmenter for eval/predict/export: ``(N, 3, H, W)`` images → ``(N, C, H, W)`` logits."""

    def __init__(self, segmenter: nn.Module):
        super().__init__()
        self.segmenter = segmenter

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.segmenter(images)["logits"]


def build_segmenter(cfg: ModelConfig, num_classes: int) -> Segmenter:
    backbone = build_backbone(cfg.backbone, cfg.output_stride, cfg.pretrained, cfg.weights)
    head = HEADS[cfg.head](backbone.low_channels, backbone.high_channels, cfg.head_channels, cfg.output_stride)
    segmenter = Segmenter(backbone, head, num_classes)
    kaiming_init([segmenter.head, segmenter.classifier])
    return segmenter


def kaiming_init(modules: list[nn.Module], generator: torch.Generator | None = None) -> None:
    """Kaiming-normal conv weights (fan-in, ReLU: std √(2 / (c_in/groups · k²))), zero biases, unit BatchNorm,
    drawn from ``generator`` (None: torch's global generator)."""
    for root in modules:
        for module in root.modules():
            if isinstance(module, nn.Conv2d):
                fan_in = module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
                with torch.no_grad():
                    module.weight.normal_(0.0, (2.0 / fan_in) ** 0.5, generator=generator)
                    if module.bias is not None:
                        module.bias.zero_()
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)


@contextmanager
def without_dropout(model: nn.Module) -> Iterator[None]:
    """Dropout and drop-connect off inside the block (for teacher passes); BatchNorm keeps its mode."""
    dropouts = [m for m in model.modules() if isinstance(m, nn.modules.dropout._DropoutNd) and m.training]
    connects = [m for m in model.modules() if getattr(m, "drop_connect_enabled", False)]
    for module in dropouts:
        module.eval()
    for module in connects:
        module.drop_connect_enabled = False
    try:
        yield
    finally:
        for module in dropouts:
            module.train()
        for module in connects:
            module.drop_connect_enabled = True


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel wrapper (or the module itself)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
