"""CAC's non-linear projector: decoder features → L2-normalised embeddings for the contrastive loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Projector(nn.Module):
    """``(N, D, h, w)`` features → ``(N, out_dim, h, w)`` embeddings, unit length per pixel.

    1×1 conv D→D, ReLU, 1×1 conv D→out_dim, then L2 normalisation over channels (the CAC paper's Φ with
    D = 256, out_dim = 128).
    """

    def __init__(self, in_channels: int, out_dim: int = 128):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(in_channels, in_channels, kernel_size=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(in_channels, out_dim, kernel_size=1),
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.layers(features), dim=1)


def resample_to_stride(features: torch.Tensor, image_size: tuple[int, int], stride: int) -> torch.Tensor:
    """``(N, D, h, w)`` features of an image of ``image_size`` → ``(N, D, H/stride, W/stride)``.

    Average pooling when the features are finer (DeepLabv3+'s stride 4 → 8), bilinear upsampling when they are
    coarser (a PSP head at output stride 16).
    """
    target = (image_size[0] // stride, image_size[1] // stride)
    if features.shape[-2:] == target:
        return features
    if features.shape[-2] > target[0]:
        return F.adaptive_avg_pool2d(features, target)
    return F.interpolate(features, size=target, mode="bilinear", align_corners=False)
