"""Pixel–pixel similarity transfer (SimFormer, Chen, Niu et al., NeurIPS 2022): a similarity head learns "same
class?" on pairs of base-class pixels across two images, then teaches the novel-class scores of pixels outside
base regions to agree with it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def pixel_pair_similarity_targets(labels_a: torch.Tensor, labels_b: torch.Tensor) -> torch.Tensor:
    """``(J,)`` and ``(J',)`` class ids of points in two images → ``(J, J')`` float: 1 where the pair shares its
    class, else 0."""
    return (labels_a[:, None] == labels_b[None, :]).float()


def balanced_pair_bce(
    pair_logits: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor | None = None
) -> torch.Tensor:
    """Class-balanced BCE over pairs: ``½·mean BCE over positive pairs + ½·mean BCE over negative ones`` (a side
    with no pair drops out and the other takes the whole weight), so the many different-class pairs do not
    drown the few same-class ones.

    Args:
        pair_logits: ``(J, J')`` logits of "same class".
        targets: ``(J, J')`` 0/1 (:func:`pixel_pair_similarity_targets`).
        valid: ``(J, J')`` bool, pairs that count; None: all.

    Returns:
        Scalar; 0 (graph intact) with no valid pair.
    """
    bce = F.binary_cross_entropy_with_logits(pair_logits.float(), targets.float(), reduction="none")
    valid = torch.ones_like(targets, dtype=torch.bool) if valid is None else valid
    sides = [bce[valid & (targets > 0.5)], bce[valid & (targets <= 0.5)]]
    means = [side.mean() for side in sides if side.numel()]
    if not means:
        return pair_logits.sum() * 0.0
    return torch.stack(means).mean()


def novel_similarity(scores_a: torch.Tensor, scores_b: torch.Tensor) -> torch.Tensor:
    """The student's similarity of point pairs: ``ReLU(cos(s_i, s_j))`` of ``(J, K_n)`` and ``(J', K_n)`` novel-class
    score vectors → ``(J, J')`` in [0, 1]."""
    return F.relu(F.normalize(scores_a.float(), dim=1) @ F.normalize(scores_b.float(), dim=1).T)


def similarity_distillation_loss(
    student: torch.Tensor, teacher_probs: torch.Tensor, valid: torch.Tensor | None = None, eps: float = 1e-6
) -> torch.Tensor:
    """BCE pulling the student's pair similarity toward the teacher head's probability (a soft target without
    gradient), mean over valid pairs.

    Args:
        student: ``(J, J')`` in [0, 1] (:func:`novel_similarity`), clamped to ``[eps, 1 − eps]``.
        teacher_probs: ``(J, J')`` in [0, 1]; detached here.
        valid: ``(J, J')`` bool; None: all.

    Returns:
        Scalar; 0 (graph intact) with no valid pair.
    """
    loss = F.binary_cross_entropy(student.clamp(eps, 1 - eps), teacher_probs.detach().float(), reduction="none")
    if valid is not None:
        if not valid.any():
            return student.sum() * 0.0
        loss = loss[valid]
    return loss.mean()
