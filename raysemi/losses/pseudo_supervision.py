"""Cross pseudo supervision (Chen et al., CVPR 2021): each network learns from the other's hard labels."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def cross_pseudo_supervision(
    logits_1: torch.Tensor,
    logits_2: torch.Tensor,
    ignore_index: int = 255,
    teacher_1: torch.Tensor | None = None,
    teacher_2: torch.Tensor | None = None,
    valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """``CE(logits_1, argmax logits_2) + CE(logits_2, argmax logits_1)``, each CE the mean over pixels.

    The pseudo-labels are computed without gradient: the gradient of the first term reaches ``logits_1`` only,
    that of the second ``logits_2`` only.

    Args:
        logits_1, logits_2: ``(N, C, H, W)`` logits of the two networks on the same images.
        ignore_index: label given to pixels outside ``valid``.
        teacher_1, teacher_2: ``(N, C, H, W)`` logits whose argmax supervises the *other* network, when they
            are not ``logits_1`` / ``logits_2`` themselves (CutMix: each network's predictions on the two
            source images, mixed with the same box mask).
        valid: optional ``(N, H, W)`` bool, False where no pixel should count.

    Returns:
        Scalar loss.
    """
    with torch.no_grad():
        pseudo_1 = (logits_1 if teacher_1 is None else teacher_1).argmax(dim=1)
        pseudo_2 = (logits_2 if teacher_2 is None else teacher_2).argmax(dim=1)
        if valid is not None:
            pseudo_1 = pseudo_1.masked_fill(~valid, ignore_index)
            pseudo_2 = pseudo_2.masked_fill(~valid, ignore_index)
    return F.cross_entropy(logits_1, pseudo_2, ignore_index=ignore_index) + F.cross_entropy(
        logits_2, pseudo_1, ignore_index=ignore_index
    )
