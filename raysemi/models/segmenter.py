"""The segmenter every method builds on: backbone → head → 1×1 classifier."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from raysemi.config import ModelConfig
from raysemi.models.backbones import Backbone, build_backbone
from raysemi.models.heads import HEADS


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
    return Segmenter(backbone, head, num_classes)


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel wrapper (or the module itself)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
