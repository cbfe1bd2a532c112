"""Decoder heads: (low, high) backbone features → decoder features. The classifier lives in the segmenter."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from raysemi.models.backbones import conv_bn_relu


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: a 1×1 branch, three dilated 3×3 branches and image pooling."""

    def __init__(self, cin: int, cout: int, rates: tuple[int, int, int]):
        super().__init__()
        self.branches = nn.ModuleList(
            [conv_bn_relu(cin, cout, kernel=1)] + [conv_bn_relu(cin, cout, dilation=r) for r in rates]
        )
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), conv_bn_relu(cin, cout, kernel=1))
        self.project = nn.Sequential(conv_bn_relu(5 * cout, cout, kernel=1), nn.Dropout(0.1))

    def forward(self, x):
        pooled = F.interpolate(self.pool(x), size=x.shape[-2:], mode="bilinear", align_corners=False)
        return self.project(torch.cat([b(x) for b in self.branches] + [pooled], dim=1))


class DeepLabV3PlusHead(nn.Module):
    """DeepLabv3+ decoder: ASPP on high-level features, fused with projected stride-4 features.

    Output: ``(N, channels, H/4, W/4)`` decoder features.
    """

    def __init__(self, low_channels: int, high_channels: int, channels: int, output_stride: int):
        super().__init__()
        rates = (12, 24, 36) if output_stride == 8 else (6, 12, 18)
        if output_stride == 32:
            rates = (3, 6, 9)
        self.aspp = ASPP(high_channels, channels, rates)
        self.low_project = conv_bn_relu(low_channels, 48, kernel=1)
        self.fuse = nn.Sequential(conv_bn_relu(channels + 48, channels), conv_bn_relu(channels, channels))
        self.out_channels = channels

    def forward(self, low, high):
        context = F.interpolate(self.aspp(high), size=low.shape[-2:], mode="bilinear", align_corners=False)
        return self.fuse(torch.cat([context, self.low_project(low)], dim=1))


class PSPHead(nn.Module):
    """PSPNet pyramid pooling (bins 1, 2, 3, 6) on high-level features.

    Output: ``(N, channels, H/os, W/os)`` decoder features.
    """

    def __init__(self, low_channels: int, high_channels: int, channels: int, output_stride: int, bins=(1, 2, 3, 6)):
        super().__init__()
        branch = max(high_channels // len(bins), 8)
        self.stages = nn.ModuleList(
            [nn.Sequential(nn.AdaptiveAvgPool2d(b), conv_bn_relu(high_channels, branch, kernel=1)) for b in bins]
        )
        self.bottleneck = nn.Sequential(conv_bn_relu(high_channels + branch * len(bins), channels), nn.Dropout(0.1))
        self.out_channels = channels

    def forward(self, low, high):
        size = high.shape[-2:]
        pooled = [F.interpolate(s(high), size=size, mode="bilinear", align_corners=False) for s in self.stages]
        return self.bottleneck(torch.cat([high] + pooled, dim=1))


HEADS = {"deeplabv3plus": DeepLabV3PlusHead, "pspnet": PSPHead}
