"""Binary mask losses of mask-classification segmenters (MaskFormer's, reused by SimFormer): sigmoid focal and
dice, as losses over matched masks and as pairwise costs for Hungarian matching.

Masks are flattened to pixels: ``mask_logits`` and ``targets`` are ``(M, P)`` (M masks, P pixels; any trailing
shape is flattened). ``valid`` marks the pixels that count (e.g. not padding); excluded pixels contribute
nothing to any sum.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def sigmoid_focal_loss(
    mask_logits: torch.Tensor,
    targets: torch.Tensor,
    valid: torch.Tensor | None = None,
    alpha: float = 0.25,
    gamma: float = 2.0,
) -> torch.Tensor:
    """Mean over masks of the per-pixel focal loss averaged over each mask's valid pixels (Lin et al. 2017).

    Per pixel, with p = σ(x) and p_t = p where t = 1 else 1 − p:
    ``α_t · (1 − p_t)^γ · BCE(x, t)``, α_t = α where t = 1 else 1 − α (α < 0 turns the weighting off).

    Args:
        mask_logits: ``(M, P...)`` logits.
        targets: ``(M, P...)`` 0/1 floats.
        valid: ``(M, P...)`` or ``(P...)`` bool; None: every pixel.

    Returns:
        Scalar; 0 (graph intact) when M = 0.
    """
    logits, targets, weight = _flatten(mask_logits, targets, valid)
    if len(logits) == 0:
        return mask_logits.sum() * 0.0
    prob = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = prob * targets + (1 - prob) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = loss * (alpha * targets + (1 - alpha) * (1 - targets))
    return ((loss * weight).sum(1) / weight.sum(1).clamp(min=1)).mean()


def dice_loss(mask_logits: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over masks of ``1 − (2·Σ p·t + 1) / (Σ p + Σ t + 1)``, p = σ(x), sums over valid pixels.

    Args:
        mask_logits: ``(M, P...)`` logits.
        targets: ``(M, P...)`` 0/1 floats.
        valid: ``(M, P...)`` or ``(P...)`` bool; None: every pixel.

    Returns:
        Scalar in [0, 1); 0 (graph intact) when M = 0.
    """
    logits, targets, weight = _flatten(mask_logits, targets, valid)
    if len(logits) == 0:
        return mask_logits.sum() * 0.0
    prob = logits.sigmoid() * weight
    targets = targets * weight
    numerator = 2 * (prob * targets).sum(1) + 1
    denominator = prob.sum(1) + targets.sum(1) + 1
    return (1 - numerator / denominator).mean()


def pairwise_focal_cost(
    mask_logits: torch.Tensor, targets: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0
) -> torch.Tensor:
    """``(Q, P)`` logits × ``(T, P)`` 0/1 targets → ``(Q, T)``: entry (q, t) is :func:`sigmoid_focal_loss` of mask q
    against target t (mean over pixels), for every pair at once."""
    logits, targets = mask_logits.flatten(1).float(), targets.flatten(1).float()
    prob = logits.sigmoid()
    pos = (1 - prob) ** gamma * F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits), reduction="none")
    neg = prob**gamma * F.binary_cross_entropy_with_logits(logits, torch.zeros_like(logits), reduction="none")
    if alpha >= 0:
        pos, neg = alpha * pos, (1 - alpha) * neg
    return (pos @ targets.T + neg @ (1 - targets).T) / logits.shape[1]


def pairwise_dice_cost(mask_logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``(Q, P)`` logits × ``(T, P)`` 0/1 targets → ``(Q, T)`` :func:`dice_loss` of every (mask, target) pair."""
    prob, targets = mask_logits.flatten(1).float().sigmoid(), targets.flatten(1).float()
    numerator = 2 * prob @ targets.T + 1
    denominator = prob.sum(1)[:, None] + targets.sum(1)[None, :] + 1
    return 1 - numerator / denominator


def _flatten(mask_logits: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor | None):
    logits, targets = mask_logits.flatten(1).float(), targets.flatten(1).float()
    if valid is None:
        return logits, targets, torch.ones_like(logits)
    weight = valid.reshape(-1, logits.shape[1]).float()
    return logits, targets, weight.expand_as(logits)
