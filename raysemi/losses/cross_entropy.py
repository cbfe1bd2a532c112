"""Pixel-wise cross-entropy with an ignore label, and its online hard example mining (OHEM) variant."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def pixel_cross_entropy(logits: torch.Tensor, target: torch.Tensor, ignore_index: int = 255) -> torch.Tensor:
    """Mean CE over non-ignored pixels.

    Args:
        logits: ``(N, C, H, W)``.
        target: ``(N, H, W)`` int64 class ids, ``ignore_index`` excluded.

    Returns:
        Scalar; 0 (with gradient graph intact) when every pixel is ignored.
    """
    valid = target != ignore_index
    if not valid.any():
        return logits.sum() * 0.0
    return F.cross_entropy(logits, target, ignore_index=ignore_index)


def ohem_cross_entropy(
    logits: torch.Tensor,
    target: torch.Tensor,
    threshold: float = 0.7,
    min_kept: int = 100_000,
    ignore_index: int = 255,
) -> torch.Tensor:
    """CE over the hard pixels only (TorchSemiSeg's ``ProbOhemCrossEntropy2d``).

    A pixel is hard when the softmax probability of its true class is at most ``threshold``. When fewer than
    ``min_kept`` pixels are that hard, the threshold rises to the ``min_kept``-th smallest probability so that
    at least ``min_kept`` pixels count. With at most ``min_kept`` valid pixels every valid pixel counts.

    Args:
        logits: ``(N, C, H, W)``; target: ``(N, H, W)`` int64.

    Returns:
        Scalar mean CE over the kept pixels.
    """
    valid = target != ignore_index
    num_valid = int(valid.sum())
    if num_valid <= min_kept:
        return pixel_cross_entropy(logits, target, ignore_index)
    with torch.no_grad():
        safe_target = target.masked_fill(~valid, 0)
        prob = logits.softmax(dim=1).gather(1, safe_target.unsqueeze(1)).squeeze(1)
        prob = prob.masked_fill(~valid, float("inf"))
        kth = prob.flatten().kthvalue(min_kept).values
        cutoff = torch.maximum(kth, torch.tensor(threshold, device=prob.device, dtype=prob.dtype))
        hard = valid & (prob <= cutoff)
    return pixel_cross_entropy(logits, target.masked_fill(~hard, ignore_index), ignore_index)
