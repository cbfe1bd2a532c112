"""The ancillary model of self-correcting networks: a segmenter that also sees the boxes of the image.

A box encoder turns the ``(C + 1)``-channel box raster into one heatmap per feature scale (3×3 conv to the
feature width, then sigmoid) and multiplies it element-wise into the encoder's features at two scales: the
high-level output that feeds ASPP (or the PSP pyramid) and the low-level skip, before the decoder. Injecting
at the backbone's outputs works for either head. The convs start at weight 0 and bias 0: every heatmap is 0.5
everywhere, a uniform scale that the BatchNorm after each injection point absorbs, so a pretrained backbone's
features reach the decoder as they would without boxes (the slides' "careful injection ... to use pretrained
models") while the sigmoid sits where its slope is largest (1/4) and the encoder learns fast where to damp or
keep features. (A bias of +4, heatmaps ≈ 0.98, also passes features through but its slope of 0.018 left the
encoder nearly untrained after 300 steps: the ancillary's val mIoU with boxes was no better than without.)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from raysemi.models.backbones import conv_bn_relu
from raysemi.models.segmenter import Segmenter, build_segmenter
from raysemi.sections import ModelConfig

INITIAL_HEAT_BIAS = 0.0


class BoxEncoder(nn.Module):
    """``(N, C + 1, H, W)`` raster → heatmaps ``(N, width_s, h_s, w_s)`` in ``(0, 1)``, one per scale."""

    def __init__(self, raster_channels: int, widths: tuple[int, ...]):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(raster_channels, w, kernel_size=3, padding=1) for w in widths)
        for conv in self.convs:
            nn.init.zeros_(conv.weight)
            nn.init.constant_(conv.bias, INITIAL_HEAT_BIAS)

    def forward(self, raster: torch.Tensor, sizes: list[tuple[int, int]]) -> list[torch.Tensor]:
        pairs = zip(self.convs, sizes, strict=True)
        return [torch.sigmoid(conv(F.adaptive_avg_pool2d(raster, size))) for conv, size in pairs]


class AncillarySegmenter(nn.Module):
    """p_anc(y | x, b): ``forward(images (N,3,H,W), boxes (N,C+1,H,W))`` → ``{"logits", "features"}``.

    With ``box_constraint`` the logits are :func:`box_constrained_log_probs`: a class gets (almost) no
    probability where none of its boxes lies, classes in ``free_classes`` excepted.
    """

    def __init__(
        self, segmenter: Segmenter, num_classes: int, box_constraint: bool = False, free_classes: tuple[int, ...] = ()
    ):
        super().__init__()
        if any(not 0 <= c < num_classes for c in free_classes):
            raise ValueError(f"self_correction.free_classes={list(free_classes)}: class ids must be in "
                             f"0..{num_classes - 1}")
        self.segmenter = segmenter
        self.box_constraint = box_constraint
        self.free_classes = tuple(free_classes)
        backbone = segmenter.backbone
        self.box_encoder = BoxEncoder(num_classes + 1, (backbone.low_channels, backbone.high_channels))

    def forward(self, images: torch.Tensor, boxes: torch.Tensor) -> dict[str, torch.Tensor]:
        low, high = self.segmenter.backbone(images)
        heat_low, heat_high = self.box_encoder(boxes.to(low.dtype), [low.shape[-2:], high.shape[-2:]])
        out = self.segmenter.decode(low * heat_low, high * heat_high, images.shape[-2:])
        if self.box_constraint:
            out["logits"] = box_constrained_log_probs(out["logits"], boxes, self.free_classes)
        return out


def box_constrained_log_probs(
    logits: torch.Tensor, boxes: torch.Tensor, free_classes: tuple[int, ...] = (), floor: float = -20.0
) -> torch.Tensor:
    """Log-probabilities over the classes each pixel's boxes allow.

    A pixel of class c lies inside a box of class c, so outside all of them c is ruled out (what box-supervised
    methods from BoxSup on use). The softmax runs over the allowed classes; ruled-out ones get ``floor``
    (e^-20 ≈ 2e-9), finite so that the result can feed a corrector or a linear combination. A pixel that allows
    nothing (padding) allows everything.

    Args:
        logits: ``(N, C, H, W)``.
        boxes: ``(N, C + 1, H, W)`` raster (channel c: inside a box of class c; channel C: outside every box).
        free_classes: classes allowed everywhere (e.g. a background class that has no boxes).

    Returns:
        ``(N, C, H, W)`` log-probabilities in ``[floor, 0]`` (usable as logits).
    """
    allowed = boxes[:, :-1] > 0.5
    if free_classes:
        allowed[:, list(free_classes)] = True
    allowed = allowed | ~allowed.any(1, keepdim=True)
    log_probs = torch.log_softmax(logits.float().masked_fill(~allowed, float("-inf")), dim=1)
    return log_probs.clamp(min=floor)


class ConvCorrector(nn.Module):
    """Convolutional self-correction: primary and ancillary logits ``(N, C, H, W)`` each → q's logits.

    Two 3×3 convs (``hidden`` channels, ReLU) on their concatenation, with BatchNorm on the 2C inputs and
    after the first conv (our addition): the ancillary's box-constrained log-probabilities reach −20, and
    without normalisation the corrector diverged at a segmentation head's learning rate (CE ≈ 40,000 within 50
    SGD steps at lr 0.2 on CamVid, then a constant output that poisoned the primary's targets; with the input
    BatchNorm alone, NaN at step 27).
    """

    def __init__(self, num_classes: int, hidden: int = 128):
        super().__init__()
        self.layers = nn.Sequential(
            nn.BatchNorm2d(2 * num_classes),
            conv_bn_relu(2 * num_classes, hidden),
            nn.Conv2d(hidden, num_classes, kernel_size=3, padding=1),
        )

    def forward(self, primary_logits: torch.Tensor, ancillary_logits: torch.Tensor) -> torch.Tensor:
        return self.layers(torch.cat([primary_logits, ancillary_logits], dim=1))


def build_ancillary(
    cfg: ModelConfig, num_classes: int, box_constraint: bool = False, free_classes: tuple[int, ...] = ()
) -> AncillarySegmenter:
    return AncillarySegmenter(build_segmenter(cfg, num_classes), num_classes, box_constraint, tuple(free_classes))
