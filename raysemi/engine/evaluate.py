"""Evaluation of a model in memory, as the training loop evaluates: its logits on a batch of images (whole image
or sliding window) and the confusion matrix over a stream of batches of images and masks."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from raysemi.config import EvalConfig
from raysemi.engine.metrics import ConfusionMatrix


@torch.no_grad()
def predict_logits(model: nn.Module, images: torch.Tensor, cfg: EvalConfig) -> torch.Tensor:
    """``(N, 3, H, W)`` normalised images → ``(N, C, H, W)`` logits, whole-image or sliding-window.

    With test-time augmentation (``cfg.tta``: horizontal flip, scales) the result is the log of the softmax
    probabilities averaged over every flip × scale, each resized back to ``H × W``: its softmax is that mean.
    """
    if not cfg.tta.hflip and list(cfg.tta.scales) == [1.0]:
        return _model_logits(model, images, cfg)
    height, width = images.shape[-2:]
    total = None
    for scale in cfg.tta.scales:
        size = (max(1, round(height * scale)), max(1, round(width * scale)))
        scaled = images if size == (height, width) else F.interpolate(images, size, mode="bilinear",
                                                                       align_corners=False)
        for flip in (False, True) if cfg.tta.hflip else (False,):
            logits = _model_logits(model, scaled.flip(-1) if flip else scaled, cfg)
            logits = logits.flip(-1) if flip else logits
            if size != (height, width):
                logits = F.interpolate(logits, (height, width), mode="bilinear", align_corners=False)
            probabilities = logits.float().softmax(1)
            total = probabilities if total is None else total + probabilities
    views = len(cfg.tta.scales) * (2 if cfg.tta.hflip else 1)
    return (total / views).clamp_min(1e-12).log()


def _model_logits(model: nn.Module, images: torch.Tensor, cfg: EvalConfig) -> torch.Tensor:
    if cfg.mode == "whole":
        return model(images)
    return sliding_window_logits(model, images, cfg.crop_size, cfg.stride)


def sliding_window_logits(
    model: nn.Module, images: torch.Tensor, crop: tuple[int, int], stride: tuple[int, int]
) -> torch.Tensor:
    """Average the logits of overlapping ``crop`` windows placed every ``stride`` pixels.

    A crop larger than the image shrinks to the image; the last window is aligned to the bottom/right edge
    so every pixel is covered.
    """
    height, width = images.shape[-2:]
    crop_h, crop_w = min(crop[0], height), min(crop[1], width)
    tops = _window_starts(height, crop_h, stride[0])
    lefts = _window_starts(width, crop_w, stride[1])
    total, counts = None, images.new_zeros(1, 1, height, width)
    for top in tops:
        for left in lefts:
            logits = model(images[..., top : top + crop_h, left : left + crop_w])
            if total is None:
                total = images.new_zeros(images.shape[0], logits.shape[1], height, width)
            total[..., top : top + crop_h, left : left + crop_w] += logits
            counts[..., top : top + crop_h, left : left + crop_w] += 1
    return total / counts


def _window_starts(size: int, crop: int, stride: int) -> list[int]:
    starts = list(range(0, max(size - crop, 0) + 1, stride))
    if starts[-1] + crop < size:
        starts.append(size - crop)
    return starts


def with_box_channels(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A val batch with a ``boxes`` raster ``(N, C+1, H, W)`` (for a box-conditioned eval model) carries it as
    extra image channels: ``image`` becomes ``(N, 3 + C + 1, H, W)``, so sliding windows crop both alike."""
    if "boxes" in batch:
        batch["image"] = torch.cat([batch["image"], batch.pop("boxes").to(batch["image"].dtype)], dim=1)
    return batch


def evaluate(
    model: nn.Module,
    batches: Iterable[dict[str, torch.Tensor]],
    num_classes: int,
    cfg: EvalConfig,
    ignore_index: int = 255,
) -> ConfusionMatrix:
    """Accumulate a confusion matrix over ``batches`` of ``{"image": (N,3,H,W) float, "mask": (N,H,W)}``."""
    was_training = model.training
    model.eval()
    confusion = None
    for batch in batches:
        images = batch["image"]
        if confusion is None:
            confusion = ConfusionMatrix(num_classes, ignore_index, device=images.device)
        logits = predict_logits(model, images, cfg)
        if logits.shape[-2:] != images.shape[-2:]:
            logits = F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)
        confusion.update(logits.argmax(1), batch["mask"])
    model.train(was_training)
    return confusion or ConfusionMatrix(num_classes, ignore_index)


def palette_table(colours) -> np.ndarray:
    """``(256, 3)`` uint8 lookup: class id → colour; ignore (255) and unknown ids black."""
    table = np.zeros((256, 3), np.uint8)
    table[: len(colours)] = np.asarray(colours, np.uint8)
    return table


def prediction_panels(images: torch.Tensor, masks: torch.Tensor, predicted: torch.Tensor, palette) -> list[np.ndarray]:
    """``(N, 3, H, W)`` uint8 images, ``(N, H, W)`` masks and predictions → N ``(H, 3W, 3)`` uint8 panels:
    image | ground truth | prediction, in the dataset ``palette``."""
    table = palette_table(palette)
    return [
        np.concatenate([image.permute(1, 2, 0).cpu().numpy(), table[mask.cpu().numpy()], table[pred.cpu().numpy()]],
                       axis=1)
        for image, mask, pred in zip(images, masks.long(), predicted, strict=True)
    ]


def class_groups(cfg, method) -> dict[str, list[int]] | None:
    """The class groups whose mIoU is reported beside the overall one: ``eval.groups``, else the method's own
    (SimFormer's base and novel classes)."""
    return cfg.eval.groups or method.class_groups
