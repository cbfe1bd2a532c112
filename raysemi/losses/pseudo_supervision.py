"""Cross pseudo supervision (Chen et al., CVPR 2021): each network learns from the other's hard labels."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from raysemi.losses.unimatch import TeacherLabels, confident_pseudo_label_loss


def cross_pseudo_supervision(
    logits_1: torch.Tensor,
    logits_2: torch.Tensor,
    ignore_index: int = 255,
    teacher_1: torch.Tensor | None = None,
    teacher_2: torch.Tensor | None = None,
    valid: torch.Tensor | None = None,
    threshold: float | None = None,
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
        threshold: when set, a pseudo-label whose teacher's softmax confidence is below it contributes 0, and
            each CE is the sum over the confident pixels divided by the number of valid pixels (UniMatch's
            normalisation: the term weakens as confidence falls, rather than resting on a few pixels).

    Returns:
        Scalar loss.
    """
    teacher_1 = logits_1 if teacher_1 is None else teacher_1
    teacher_2 = logits_2 if teacher_2 is None else teacher_2
    if threshold is None:
        with torch.no_grad():
            pseudo_1 = _masked(teacher_1.argmax(dim=1), valid, ignore_index)
            pseudo_2 = _masked(teacher_2.argmax(dim=1), valid, ignore_index)
        return F.cross_entropy(logits_1, pseudo_2, ignore_index=ignore_index) + F.cross_entropy(
            logits_2, pseudo_1, ignore_index=ignore_index
        )
    return _confident_ce(logits_1, teacher_2, valid, threshold) + _confident_ce(logits_2, teacher_1, valid, threshold)


def _masked(labels: torch.Tensor, valid: torch.Tensor | None, ignore_index: int) -> torch.Tensor:
    return labels if valid is None else labels.masked_fill(~valid, ignore_index)


def _confident_ce(logits: torch.Tensor, teacher: torch.Tensor, valid: torch.Tensor | None,
                  threshold: float) -> torch.Tensor:
    """CE of ``logits`` ``(N, C, H, W)`` against ``teacher``'s argmax where its confidence ≥ ``threshold``,
    summed and divided by the valid pixel count: UniMatch's :func:`confident_pseudo_label_loss`."""
    counted = torch.ones_like(teacher[:, 0], dtype=torch.bool) if valid is None else valid
    return confident_pseudo_label_loss(logits, TeacherLabels.from_logits(teacher, counted), threshold)
